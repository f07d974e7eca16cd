-- soldout.lua: confirm, for orders of SKUs a process remembers as sold out, that the answer
-- "insufficient stock" is still true, reading only. The reserve script is not run and no
-- fsync is waited for; what this refuses, the reserve script would have refused too.
--
-- KEYS[1]  the ready marker     KEYS[2]  warehouse version
-- KEYS[3..] per order, two keys: its order hash, the stock hash of its sold-out line's SKU
-- ARGV[1]  the warehouse version ARGV[2..] were read at    ARGV[2..] the active warehouses
--
-- Returns {-2} while the ready marker is missing (Redis lost its data or is being rebuilt:
-- no answer may say "insufficient stock" then), {-1} when the warehouse version moved on
-- (a warehouse may have been activated: the caller sends the orders to the reserve script),
-- else one flag per order, in order:
--   0  still sold out and the order id is new: refuse it
--   1  the order id has a record (an idempotent replay) or the SKU has units again: reserve
local ready_key, version_key = KEYS[1], KEYS[2]
if redis.call('EXISTS', ready_key) == 0 then return {-2} end
if tonumber(redis.call('GET', version_key) or '0') ~= tonumber(ARGV[1]) then return {-1} end
local warehouses = {}
for i = 2, #ARGV do warehouses[#warehouses + 1] = ARGV[i] end
local out = {}
for k = 3, #KEYS, 2 do
  local flag = redis.call('EXISTS', KEYS[k])
  if flag == 0 and #warehouses > 0 then
    for _, a in ipairs(redis.call('HMGET', KEYS[k + 1], unpack(warehouses))) do
      if tonumber(a or '0') > 0 then flag = 1 break end
    end
  end
  out[#out + 1] = flag
end
return out
