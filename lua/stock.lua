-- stock.lua: set or adjust on hand of one SKU in several warehouses, all or nothing.
--
-- KEYS[1]  stock hash of the SKU     KEYS[2]  events stream
-- KEYS[3]  warehouses hash           KEYS[4]  warehouse version
-- KEYS[5]  the ready marker
-- ARGV[1]  sku    ARGV[2]  mode: "set" (values are on hand) or "add" (values are deltas)
-- ARGV[3]  reason (ledger)           ARGV[4..] triples: warehouse, integer value, and the units
--          of the SKU on hand in that warehouse in its other buckets (a hot SKU's,
--          gateway/buckets.py; else 0), which the ledger's on hand counts too
--
-- Returns {-2} while the ready marker is missing (Redis lost its data or is being rebuilt),
-- {0, warehouse, reserved, requested_on_hand} when on hand would drop below what is
-- reserved there (nothing changed), else {1, HGETALL of the stock hash, HGETALL of the
-- warehouses hash} (the view counts only active warehouses as available).
-- Each on-hand change is one "inventory.moved" stream entry, which the writers turn into
-- an inventory_movements ledger row; a warehouse seen here for the first time is
-- registered with priority 100 so allocation can use it.

local stock_key, events_key, wh_key, version_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sku, mode, reason = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', KEYS[5]) == 0 then return {-2} end
local changes = {}
for i = 4, #ARGV, 3 do
  local wh, value, beyond = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local cur = redis.call('HMGET', stock_key, wh, 'r:' .. wh)
  local avail, reserved = tonumber(cur[1] or '0'), tonumber(cur[2] or '0')
  local on_hand = avail + reserved
  local target = value
  if mode == 'add' then target = on_hand + value end
  if target < reserved then
    return {0, wh, reserved, target}
  end
  changes[#changes + 1] = {wh, target - reserved, target - on_hand, target + beyond}
end

local registered = false
for _, c in ipairs(changes) do
  local wh, avail, delta, on_hand = c[1], c[2], c[3], c[4]
  redis.call('HSET', stock_key, wh, avail)
  if redis.call('HSETNX', wh_key, wh, '100||1') == 1 then registered = true end
  if delta ~= 0 then
    redis.call('XADD', events_key, '*', 't', 'inventory.moved', 's', sku, 'w', wh,
      'd', string.format('%d', delta), 'h', string.format('%d', on_hand), 'r', reason)
  end
end
if registered then redis.call('INCR', version_key) end
return {1, redis.call('HGETALL', stock_key), redis.call('HGETALL', wh_key)}
