-- repair.lua: rewrite drifted warehouses of one SKU's stock hash from PostgreSQL, all or nothing.
--
-- KEYS[1]  stock hash of the SKU
-- ARGV     groups of five per warehouse: warehouse, available and reserved as the reconciler
--          read them (a missing field reads 0), available and reserved to write
--
-- Returns {1} when every warehouse was written, else nothing is written and
--   {0, warehouse}   the hash no longer holds what the reconciler read (an order or a stock
--                    change came in between: its numbers are stale, reconcile again)
--   {2, warehouse}   the new numbers would make available or reserved negative
-- Writes no event: PostgreSQL already holds these numbers, no on-hand change is recorded.

local stock_key = KEYS[1]

for i = 1, #ARGV, 5 do
  local wh = ARGV[i]
  local cur = redis.call('HMGET', stock_key, wh, 'r:' .. wh)
  if tonumber(cur[1] or '0') ~= tonumber(ARGV[i + 1]) or tonumber(cur[2] or '0') ~= tonumber(ARGV[i + 2]) then
    return {0, wh}
  end
  if tonumber(ARGV[i + 3]) < 0 or tonumber(ARGV[i + 4]) < 0 then
    return {2, wh}
  end
end

for i = 1, #ARGV, 5 do
  redis.call('HSET', stock_key, ARGV[i], ARGV[i + 3], 'r:' .. ARGV[i], ARGV[i + 4])
end
return {1}
