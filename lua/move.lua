-- move.lua: one step of moving a hot SKU's units between two of its buckets (gateway/buckets.py).
--
-- KEYS[1]  this bucket's stock hash of the SKU     KEYS[2]  this bucket's record of the transfer
-- KEYS[3]  this bucket's transfers in flight (zset) KEYS[4]  this bucket's "received" marker of it
-- KEYS[5]  the ready marker
-- ARGV[1]  step: "out" takes units out of this bucket and records the transfer; "in" gives
--          them to this bucket once (the marker makes a repeat do nothing); "done" forgets
--          the record here once the other bucket has them
-- ARGV[2]  transfer id      ARGV[3]  warehouse      ARGV[4]  units: wanted (out), moved (in)
-- ARGV[5]  out: the record's text "to|sku|wh|" (the units taken are appended)
--
-- Returns {-2} and does nothing while the ready marker is missing, else {1, n}: out, the
-- units taken (at most the warehouse's available; 0 takes nothing and records nothing); in,
-- 1 when given now and 0 when given before; done, 0.
-- Units in flight are in no bucket's available: reconcile counts them from the records.

local stock_key, record_key, flight_key, received_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local step, id, wh, units = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[5]) == 0 then return {-2} end

if step == 'out' then
  local taken = math.min(tonumber(redis.call('HGET', stock_key, wh) or '0'), units)
  if taken <= 0 then return {1, 0} end
  redis.call('HINCRBY', stock_key, wh, -taken)
  redis.call('SET', record_key, ARGV[5] .. taken)
  local t = redis.call('TIME')
  redis.call('ZADD', flight_key, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
  return {1, taken}
elseif step == 'in' then
  if not redis.call('SET', received_key, '1', 'NX', 'EX', 86400) then return {1, 0} end
  redis.call('HINCRBY', stock_key, wh, units)
  return {1, 1}
end
redis.call('DEL', record_key)
redis.call('ZREM', flight_key, id)
return {1, 0}
