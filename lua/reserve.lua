-- reserve.lua: reserve stock for a coalesced batch of orders, each atomic on its own.
--
-- KEYS[1]  events stream            KEYS[2]  expiry zset         KEYS[3]  warehouse version
-- KEYS[4..] per order, in batch order: the order hash, then one stock hash per line
-- ARGV[1]  seconds an order record (the idempotency record) lives
-- ARGV[2]  JSON batch: {"p": [[wh, ...], ...],            preference lists, shared
--                      "o": [[order_id, payload, ttl_ms, [[sku, qty, pref_index], ...]], ...]}
--          payload is the canonical order JSON: equal payloads mean the same order.
--
-- Returns {warehouse_version, result_1, ..., result_n}, one result per order:
--   {1, alloc, created_ms, until_ms}           accepted (201)
--   {2, alloc, created_ms, until_ms, status}   same order_id and payload seen before (200)
--   {3}                                        same order_id, other payload (409)
--   {4, line_index, missing_qty}               a line cannot be filled; nothing was taken (409)
-- alloc is "wh=qty,wh=qty;..." with one ";"-separated group per line, in line order.
--
-- Every order is checked in full before anything is written, so a short line takes
-- nothing; later orders of the batch see the stock earlier ones took (one script = one
-- atomic step in Redis).

local events_key, expiry_key, version_key = KEYS[1], KEYS[2], KEYS[3]
local record_ttl = tonumber(ARGV[1])
local batch = cjson.decode(ARGV[2])
local prefs, orders = batch.p, batch.o

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {tonumber(redis.call('GET', version_key) or '0')}
local k = 4
for i = 1, #orders do
  local o = orders[i]
  local order_id, payload, ttl_ms, lines = o[1], o[2], o[3], o[4]
  local order_key = KEYS[k]
  local first_stock = k + 1
  k = k + 1 + #lines

  local seen = redis.call('HMGET', order_key, 'p', 'a', 'c', 'u', 's')
  if seen[1] then
    if seen[1] == payload then
      out[#out + 1] = {2, seen[2], tonumber(seen[3]), tonumber(seen[4]), seen[5]}
    else
      out[#out + 1] = {3}
    end
  else
    -- pass 1: plan every line from current availability, in preference order
    local plan, short = {}, nil
    for j = 1, #lines do
      local line = lines[j]
      local need, pref = line[2], prefs[line[3] + 1]
      local avail = {}
      if #pref > 0 then avail = redis.call('HMGET', KEYS[first_stock + j - 1], unpack(pref)) end
      local takes = {}
      for w = 1, #pref do
        if need == 0 then break end
        local a = tonumber(avail[w] or '0')
        if a > 0 then
          local take = math.min(a, need)
          takes[#takes + 1] = {pref[w], take}
          need = need - take
        end
      end
      if need > 0 then
        short = {4, j - 1, need}
        break
      end
      plan[j] = takes
    end

    if short then
      out[#out + 1] = short
    else
      -- pass 2: apply the plan
      local groups = {}
      for j = 1, #lines do
        local stock_key = KEYS[first_stock + j - 1]
        local parts = {}
        for _, take in ipairs(plan[j]) do
          redis.call('HINCRBY', stock_key, take[1], -take[2])
          redis.call('HINCRBY', stock_key, 'r:' .. take[1], take[2])
          parts[#parts + 1] = take[1] .. '=' .. take[2]
        end
        groups[j] = table.concat(parts, ',')
      end
      local alloc = table.concat(groups, ';')
      local until_ms = now + ttl_ms
      local c, u = string.format('%d', now), string.format('%d', until_ms)
      redis.call('HSET', order_key, 'p', payload, 'a', alloc, 'c', c, 'u', u,
        's', 'pending_payment', 'n', 1)
      redis.call('EXPIRE', order_key, math.max(record_ttl, math.ceil(ttl_ms / 1000) + 3600))
      redis.call('ZADD', expiry_key, until_ms, order_id)
      redis.call('XADD', events_key, '*', 't', 'order.accepted', 'o', order_id, 'n', 1,
        'p', payload, 'a', alloc, 'c', c, 'u', u)
      out[#out + 1] = {1, alloc, now, until_ms}
    end
  end
end
return out
