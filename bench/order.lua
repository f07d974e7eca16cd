-- wrk script: every request a new order id for one unit of SKU $SKU (default HOT).
local counter = 0
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))
local sku = os.getenv("SKU") or "HOT"
local key = os.getenv("KEY") or "dev-admin-key"
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}

request = function()
  counter = counter + 1
  local body = string.format(
    '{"order_id":"b-%s-%d","user_id":"u-%d","channel":"web","items":[{"sku":"%s","qty":1}]}',
    prefix, counter, counter % 5000, sku)
  return wrk.format("POST", "/v1/orders", headers, body)
end
