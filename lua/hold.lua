-- hold.lua: a secondary partition's part of an order whose lines span partitions (gateway/spans.py).
-- (gateway/scripts.py puts lua/effect.lua before it: line_effect.)
--
-- KEYS[1]  the hold record of the order here    KEYS[2]  holds not yet known committed (zset)
-- KEYS[3]  the ready marker    KEYS[4]  the warehouse version    KEYS[5]  the events stream
-- KEYS[6..] one stock hash per line of this part, then one holders zset per line
-- ARGV[1]  step: take | commit | settle
-- ARGV[2]  order id     ARGV[3]  the order's payload (equal payloads: the same order)
-- ARGV[4]  the order's primary partition (take); the order's status, or "given_back" for a
--          part whose order the primary does not have (settle)
-- ARGV[5]  JSON [[sku, qty, [wh, ...]], ...]: this part's lines with their preference lists
-- ARGV[6]  the warehouse version the lists were computed from (take)
-- ARGV[7]  seconds the order's record lives (take: the holders' scores); seconds this record
--          lives once released or shipped (settle)    ARGV[8]  the restock channel
-- ARGV[9]  "anew" (take): take a released part of a committed order again, its order's record
--          at the primary being gone
--
-- take: a new part (or one released before, whatever its payload) takes its lines' units, warehouse by warehouse
--   in preference order, all or nothing: {1, alloc, 1, gen}; the part as taken before: {1, alloc, 0, gen};
--   {3} the id with another payload; {4, line, missing} a line cannot be filled (nothing taken);
--   {-1} a stale warehouse version. A part taken is listed in KEYS[2] until committed. gen counts
--   the takes of this part (1, 2, ...): a part given back and taken again is a new generation,
--   which the primary's tombstone of the old one does not refuse (lua/abort.lua). A part
--   of a committed order that was released (the order cancelled, expired or refunded) is
--   not taken again but answers {5, gen}: the primary's record of the order answers a
--   replay, and only a record gone frees the id for a take "anew".
-- commit: the primary has the order: the part leaves KEYS[2], marked committed. {1, 0}
-- settle: the part follows the order's status once: released (stock back) when it is
--   cancelled, or refunded before shipping, or given back; shipped (taken out of on hand, one
--   inventory.moved entry per warehouse) when shipped or completed. {1, 1} changed, {1, 0} not.
--   Any status but "given_back" marks the part committed: its order exists. "given_back"
--   touches only a part taken for this very payload.
-- A part's record lives as long as it holds units, as they do: no TTL while held, however
-- long its order waits to ship (the order's own record may lapse and be made again from
-- PostgreSQL), then ARGV[7] seconds once released or shipped.
-- Every step answers {-2} and does nothing while the ready marker is missing.
-- alloc is "wh=qty,...;..." with one group per line of this part, in line order.

local hold_key, open_key, events_key = KEYS[1], KEYS[2], KEYS[5]
local step, order_id, payload = ARGV[1], ARGV[2], ARGV[3]
local lines = cjson.decode(ARGV[5])
if redis.call('EXISTS', KEYS[3]) == 0 then return {-2} end
local rec = redis.call('HMGET', hold_key, 'p', 'a', 's', 'g', 'k')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if step == 'commit' then
  if rec[1] then redis.call('HSET', hold_key, 'k', '1') end
  redis.call('ZREM', open_key, order_id)
  return {1, 0}
end

if step == 'settle' then
  local status = ARGV[4]
  if rec[1] and status ~= 'given_back' then redis.call('HSET', hold_key, 'k', '1') end
  if rec[3] ~= 'held' or (status == 'given_back' and rec[1] ~= payload) then return {1, 0} end
  local effect
  if status == 'cancelled' or status == 'refunding' or status == 'refunded' or status == 'given_back' then
    effect = 'release'
  elseif status == 'shipped' or status == 'completed' then effect = 'ship'
  else return {1, 0} end
  local j = 0
  for group in string.gmatch(rec[2], '[^;]+') do
    j = j + 1
    line_effect(KEYS[5 + j], lines[j][1], group, effect, events_key, order_id, ARGV[8])
  end
  redis.call('HSET', hold_key, 's', effect == 'release' and 'released' or 'shipped')
  redis.call('EXPIRE', hold_key, tonumber(ARGV[7]))
  redis.call('ZREM', open_key, order_id)
  return {1, 1}
end

-- take (a part given back before is taken again, for whatever payload: the primary decides)
if rec[1] and rec[3] ~= 'released' then
  if rec[1] ~= payload then return {3} end
  return {1, rec[2], 0, tonumber(rec[4] or '0')}
end
if rec[5] == '1' and ARGV[9] ~= 'anew' then return {5, tonumber(rec[4] or '0')} end
if tonumber(redis.call('GET', KEYS[4]) or '0') ~= tonumber(ARGV[6]) then return {-1} end
local plans = {}
for j, line in ipairs(lines) do
  local need, pref, takes = line[2], line[3], {}
  local vals = {}
  if #pref > 0 then vals = redis.call('HMGET', KEYS[5 + j], unpack(pref)) end
  for w = 1, #pref do
    if need == 0 then break end
    local a = tonumber(vals[w] or '0')
    if a > 0 then
      local take = math.min(a, need)
      takes[#takes + 1] = {pref[w], take}
      need = need - take
    end
  end
  if need > 0 then return {4, j - 1, need} end
  plans[j] = takes
end
local groups = {}
for j, takes in ipairs(plans) do
  local parts = {}
  for _, take in ipairs(takes) do
    redis.call('HINCRBY', KEYS[5 + j], take[1], -take[2])
    redis.call('HINCRBY', KEYS[5 + j], 'r:' .. take[1], take[2])
    parts[#parts + 1] = take[1] .. '=' .. take[2]
  end
  groups[j] = table.concat(parts, ',')
end
local alloc = table.concat(groups, ';')
local lives = tonumber(ARGV[7])
local gen = redis.call('HINCRBY', hold_key, 'g', 1)
redis.call('HSET', hold_key, 'p', payload, 'a', alloc, 's', 'held', 'm', ARGV[4], 'k', '0')
redis.call('PERSIST', hold_key)
redis.call('ZADD', open_key, now, order_id)
for j = 1, #lines do
  local holders_key = KEYS[5 + #lines + j]
  redis.call('ZREMRANGEBYSCORE', holders_key, '-inf', now)
  redis.call('ZADD', holders_key, now + lives * 1000, order_id)
end
return {1, alloc, 1, gen}
