-- transition.lua: one status change of one order, with its stock effect, atomically.
--
-- KEYS[1]  order hash       KEYS[2]  events stream      KEYS[3]  expiry zset
-- KEYS[4]  sale hash        KEYS[5]  the user's per-sale counter (both unused without a sale)
-- KEYS[6]  the ready marker    KEYS[7]  the rate limits hash
-- KEYS[8]  the paying service key's payments:key bucket (gateway/ratelimits.py; used by pay only)
-- KEYS[9]  orders whose parts in other partitions have a status to follow (zset, gateway/spans.py)
-- KEYS[10..] one stock hash per order line, in line order
-- ARGV[1]  action           ARGV[2]  order id
-- ARGV[3]  rules "src>dst>event>stock;..." for this action (gateway/lifecycle.py is the table)
-- ARGV[4]  statuses that mean the action already happened, "a,b"
-- ARGV[5]  event data (JSON)      ARGV[6]  payment id ("" unless pay)
-- ARGV[7]  "1" when the order belongs to a sale     ARGV[8]  seconds the order record lives
-- ARGV[9]  cancel reason (recorded when the order ends up cancelled)
-- ARGV[10] "" or the order's record from PostgreSQL as JSON of strings {p, a, c, u, s, n, pid?, cr?, sh?, rf?, x?},
--          restored when Redis no longer holds it (its record outlived OMS_IDEMPOTENCY_TTL)
-- ARGV[11] the restock channel: a release publishes each SKU there, so every process forgets
--          that it was sold out (gateway/soldout.py)
-- ARGV[12..] the SKU of each order line, in line order (the stock keys are not parsed back); ""
--          for a line held in another partition (the record's x names them): its stock is
--          left to that partition's part, and a changed stock effect lists the order in KEYS[9]
--
-- Returns one of
--   {-2}                     Redis lost its data or is being rebuilt (nothing changed)
--   {0}                      no such order in Redis
--   {1, status, changed}     done: changed 1 with a new event, 0 when it had already happened
--   {2, status}              pay with another payment id on an order already paid
--   {3, status}              illegal from this status (nothing changed)
--   {4}                      pay too late: the order expired here now (stock returned) or earlier
--   {5}                      expire before reserved_until (nothing changed)
--   {6, wait_ms}             pay refused by the payments:key rate limit (nothing changed; a
--                            payment already made is answered as done, whatever the limit)
-- Stock effects: release gives reserved units back to available; ship takes them out of
-- on hand and reserved together and records an inventory.moved ledger entry per warehouse.

local order_key, events_key, expiry_key, sale_key, counter_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local action, order_id, rules, done = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local data, payment_id, in_sale, record_ttl = ARGV[5], ARGV[6], ARGV[7] == '1', tonumber(ARGV[8])
local reason = ARGV[9]

if redis.call('EXISTS', KEYS[6]) == 0 then return {-2} end
local fields = {'s', 'n', 'a', 'u', 'pid', 'cr', 'x'}
local rec = redis.call('HMGET', order_key, unpack(fields))
if not rec[1] and ARGV[10] ~= '' then
  local h = cjson.decode(ARGV[10])
  for _, f in ipairs({'p', 'a', 'c', 'u', 's', 'n', 'pid', 'cr', 'sh', 'rf', 'x'}) do
    if type(h[f]) == 'string' then redis.call('HSET', order_key, f, h[f]) end
  end
  if h.s == 'pending_payment' then redis.call('ZADD', expiry_key, h.u, order_id) end
  rec = redis.call('HMGET', order_key, unpack(fields))
end
local status = rec[1]
if not status then return {0} end
if action == 'pay' and status == 'cancelled' and rec[6] == 'expired' then return {4} end

for s in string.gmatch(done, '[^,]+') do
  if s == status then
    if action == 'pay' and rec[5] ~= payment_id then return {2, status} end
    return {1, status, 0}
  end
end

local rule
for src, dst, event, stock in string.gmatch(rules, '([^>;]+)>([^>;]+)>([^>;]+)>([^>;]+)') do
  if src == status then rule = {dst, event, stock} end
end
if not rule then return {3, status} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if action == 'pay' then
  local limit = limit_of(redis.call('HGET', KEYS[7], 'payments:key'))
  if limit then
    local wait, tokens = bucket_wait(KEYS[8], limit, now)
    if wait > 0 then return {6, wait} end
    bucket_take(KEYS[8], limit, tokens, now)
  end
end
local expired = now >= tonumber(rec[4])
local reply = nil
if action == 'pay' and expired then
  rule = {'cancelled', 'order.cancelled', 'release'}
  data, reason, reply = '{"reason":"expired"}', 'expired', {4}
elseif action == 'expire' and not expired then
  return {5}
end
local target, event, effect = rule[1], rule[2], rule[3]

local units = 0
if effect ~= 'none' then
  local j = 0
  for group in string.gmatch(rec[3], '[^;]+') do
    j = j + 1
    local sku = ARGV[11 + j]
    if sku ~= '' then units = units + line_effect(KEYS[9 + j], sku, group, effect, events_key, order_id, ARGV[11]) end
  end
end
if effect ~= 'none' and rec[7] then redis.call('ZADD', KEYS[9], now, order_id) end
if effect == 'release' and in_sale then
  redis.call('HINCRBY', counter_key, 'units', -units)
  redis.call('HINCRBY', sale_key, 'sold', -units)
end

local seq = tonumber(rec[2]) + 1
redis.call('HSET', order_key, 's', target, 'n', seq)
if target == 'paid' then redis.call('HSET', order_key, 'pid', payment_id) end  -- not a payment that came too late
if target == 'cancelled' then redis.call('HSET', order_key, 'cr', reason) end
-- what the order view shows of the shipment and the refund: the event's data, kept with the record
if event == 'order.shipped' then redis.call('HSET', order_key, 'sh', data) end
if event == 'order.refunding' then redis.call('HSET', order_key, 'rf', data) end
redis.call('EXPIRE', order_key, record_ttl)
if status == 'pending_payment' then redis.call('ZREM', expiry_key, order_id) end
redis.call('XADD', events_key, '*', 't', event, 'o', order_id, 'n', seq, 's', target,
  'd', data, 'c', string.format('%d', now))
return reply or {1, target, 1}
