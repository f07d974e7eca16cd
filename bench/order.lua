-- wrk script: every request a new order id for one unit of SKU $SKU (default HOT); SKU=*N
-- spreads them over SKUs s0 … s<N-1> (bench/load.py's order_body does the same).
-- It counts answers by status and prints "status <code> <n>" lines at the end: done() runs in
-- its own Lua state and reads each thread's table through the handle setup() kept.
local counter = 0
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))
local sku = os.getenv("SKU") or "HOT"
local spread = sku:sub(1, 1) == "*" and tonumber(sku:sub(2))
local key = os.getenv("KEY") or "dev-admin-key"
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
local threads = {}
statuses = {}

request = function()
  counter = counter + 1
  local body = string.format(
    '{"order_id":"b-%s-%d","user_id":"u-%d","channel":"web","items":[{"sku":"%s","qty":1}]}',
    prefix, counter, counter % 5000, spread and ("s" .. (counter % spread)) or sku)
  return wrk.format("POST", "/v1/orders", headers, body)
end

response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

setup = function(thread)
  table.insert(threads, thread)
end

done = function()
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\n", status, n))
    end
  end
end
