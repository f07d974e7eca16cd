-- reserve.lua: reserve stock for a coalesced batch of orders, each atomic on its own.
--
-- KEYS[1]  events stream     KEYS[2]  expiry zset     KEYS[3]  warehouse version
-- KEYS[4]  sale version      KEYS[5]  the ready marker     KEYS[6]  the rate limits hash
-- KEYS[7..] per order, in batch order: the order hash, its locator (gateway/keys.py), its
--          user's orders:user bucket, its service key's orders:key bucket
--          (gateway/ratelimits.py), then (only for an order in a sale)
--          the sale hash and the user's counter in that sale, then one stock hash per line,
--          then one holders zset per line (order ids whose record names the SKU, scored by
--          the record's expiry: gateway/soldout.py lets those past a sold-out SKU's flag)
-- ARGV[1]  seconds an order record (the idempotency record) lives
-- ARGV[2]  JSON batch: {"p": [[wh, ...], ...],            preference lists, shared
--                      "o": [[order_id, payload, ttl_ms, [[sku, qty, pref_index, price], ...],
--                             channel, in_sale, max_stock, by_key, loc, spans], ...]}
--          payload is the canonical order JSON: equal payloads mean the same order; price
--          is the line's unit price or -1; in_sale is 1 when the order names a sale;
--          max_stock is 1 when lines draw from the warehouses with most stock first; by_key
--          is 1 when a service key sent it (its bucket counts), 0 for a user's token; loc
--          is this partition's tag when the order's locator is kept here (this is the
--          order id's home partition, of several), else "": a locator naming another
--          partition means the id was taken there, with another payload. spans is absent
--          unless the order's lines span partitions (gateway/spans.py): then the lines and
--          their keys here are this partition's only, and spans is {n = the order's line count,
--          l = [its index of each line here], r = {index: alloc held elsewhere}, x = "tags"
--          of the partitions holding them, g = {tag: generation of the part held there}};
--          the record keeps x and the whole allocation.
-- ARGV[3]  the warehouse version the preference lists were computed from
-- ARGV[4]  the most entries the stream may hold (0: no limit); written entries are deleted,
--          so its length is what PostgreSQL has yet to receive
--
-- Returns {-3} and does nothing while the stream holds ARGV[4] entries or more (PostgreSQL
-- away too long: the backlog stays within Valkey's memory), {-2} and does nothing while the ready marker is missing (Redis lost its data or is
-- being rebuilt: no answer may say "insufficient stock" then), {-1} and does nothing when ARGV[3] is not the current warehouse version (the
-- caller reloads and retries: a stale preference list could miss a warehouse's stock), else
-- {warehouse_version, sale_version, result_1, ..., result_n}, one result per order:
--   {1, alloc, created_ms, until_ms}           accepted (201)
--   {2, alloc, created_ms, until_ms, status}   same order_id and payload seen before (200)
--   {3}                                        same order_id, other payload (409)
--   {4, line_index, missing_qty}               a line cannot be filled; nothing was taken (409)
--   {6, wait_ms}                               a rate limit refuses it (429); nothing taken
--   {7}                                        parts the order counts on elsewhere were given
--                                              up moments ago (lua/abort.lua's tombstone,
--                                              at their generation or a newer one: 503, retry)
--   {5, code, a, b}                            the sale refuses it (409): sale_not_active,
--                                              channel_not_allowed, sku_not_in_sale (a = line),
--                                              limit_exceeded (a = units held, b = limit),
--                                              price_mismatch (a = line, b = the sale's price)
-- A sale hash holds s/e (window, ms), l (units per user), ch (",web,app," or ""), ttl (ms
-- or ""), k:<sku> (member) and $:<sku> (price), and the live count "sold".
-- alloc is "wh=qty,wh=qty;..." with one ";"-separated group per line, in line order.
--
-- A rate limit is checked only for an order that would be new, before its sale and stock:
-- a token is spent even when those refuse it, so a bot asking for sold-out stock runs dry.
-- Every order is checked in full before anything is written, so a short line takes
-- nothing; later orders of the batch see the stock earlier ones took (one script = one
-- atomic step in Redis).

local events_key, expiry_key, version_key, sale_version_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local record_ttl = tonumber(ARGV[1])
local batch = cjson.decode(ARGV[2])
local prefs, orders = batch.p, batch.o

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The sale's verdict on an order: nil when it may proceed, else a {5, ...} reply.
local function sale_check(sale_key, counter_key, lines, channel)
  local r = redis.call('HMGET', sale_key, 's', 'e', 'l', 'ch', 'ttl')
  if not r[1] or now < tonumber(r[1]) or now >= tonumber(r[2]) then return {5, 'sale_not_active', 0, 0} end
  if r[4] ~= '' and not string.find(r[4], ',' .. channel .. ',', 1, true) then
    return {5, 'channel_not_allowed', 0, 0}
  end
  local units = 0
  for j = 1, #lines do
    local line = lines[j]
    local m = redis.call('HMGET', sale_key, 'k:' .. line[1], '$:' .. line[1])
    if not m[1] then return {5, 'sku_not_in_sale', j - 1, 0} end
    if m[2] and tonumber(m[2]) ~= line[4] then return {5, 'price_mismatch', j - 1, tonumber(m[2])} end
    units = units + line[2]
  end
  local held = tonumber(redis.call('HGET', counter_key, 'units') or '0')
  if held + units > tonumber(r[3]) then return {5, 'limit_exceeded', held, tonumber(r[3])} end
  return nil, units, r[5], tonumber(r[2])
end

if redis.call('EXISTS', KEYS[5]) == 0 then return {-2} end
local max_backlog = tonumber(ARGV[4])
if max_backlog > 0 and redis.call('XLEN', events_key) >= max_backlog then return {-3} end
local limits = redis.call('HMGET', KEYS[6], 'orders:user', 'orders:key')
local user_limit, key_limit = limit_of(limits[1]), limit_of(limits[2])

-- nil when the order may go on (its tokens spent), else the {6, wait_ms} refusal
-- Whether a tombstone z ("tag=gen,...", lua/abort.lua) gave up a part the order counts on:
-- one of gens' (tag -> generation) at that generation or an older one.
local function given_up(z, gens)
  for tag, gen in string.gmatch(z, '([^,=]+)=(%d+)') do
    if gens[tag] and gens[tag] <= tonumber(gen) then return true end
  end
  return false
end

local function rate_check(user_bucket, key_bucket, by_key)
  local wait_user, wait_key, user_tokens, key_tokens = 0, 0, nil, nil
  if user_limit then wait_user, user_tokens = bucket_wait(user_bucket, user_limit, now) end
  if by_key and key_limit then wait_key, key_tokens = bucket_wait(key_bucket, key_limit, now) end
  if wait_user > 0 or wait_key > 0 then return {6, math.max(wait_user, wait_key)} end
  if user_tokens then bucket_take(user_bucket, user_limit, user_tokens, now) end
  if key_tokens then bucket_take(key_bucket, key_limit, key_tokens, now) end
  return nil
end
local wh_version = tonumber(redis.call('GET', version_key) or '0')
if wh_version ~= tonumber(ARGV[3]) then return {-1} end
-- The split policy fewest_splits; allocator/policy.py is its reference and says it in words.
-- Returns the plan (per line a list of {warehouse, qty}) or nil and {4, line, missing}.
local function plan_order(lines, first_stock, max_stock)
  local cands, avail = {}, {}
  for j = 1, #lines do
    local pref = prefs[lines[j][3] + 1]
    local vals = {}
    if #pref > 0 then vals = redis.call('HMGET', KEYS[first_stock + j - 1], unpack(pref)) end
    local list, by_wh, total = {}, {}, 0
    for w = 1, #pref do
      local a = tonumber(vals[w] or '0')
      list[w] = {pref[w], a, w}
      by_wh[pref[w]] = a
      total = total + a
    end
    if total < lines[j][2] then return nil, {4, j - 1, lines[j][2] - total} end
    if max_stock then
      table.sort(list, function(x, y)
        if x[2] ~= y[2] then return x[2] > y[2] end
        return x[3] < y[3]
      end)
    end
    cands[j], avail[j] = list, by_wh
  end
  if #lines > 0 then
    for _, c in ipairs(cands[1]) do
      local all = true
      for j = 1, #lines do
        if (avail[j][c[1]] or 0) < lines[j][2] then all = false break end
      end
      if all then
        local plan = {}
        for j = 1, #lines do plan[j] = {{c[1], lines[j][2]}} end
        return plan
      end
    end
  end
  local plan, used = {}, {}
  for j = 1, #lines do
    local need, whole = lines[j][2], nil
    for _, c in ipairs(cands[j]) do
      if c[2] >= need and (whole == nil or (used[c[1]] and not used[whole])) then whole = c[1] end
    end
    if whole then
      plan[j] = {{whole, need}}
    else
      local takes = {}
      for _, c in ipairs(cands[j]) do
        if need == 0 then break end
        if c[2] > 0 then
          local take = math.min(c[2], need)
          takes[#takes + 1] = {c[1], take}
          need = need - take
        end
      end
      plan[j] = takes
    end
    for _, take in ipairs(plan[j]) do used[take[1]] = true end
  end
  return plan
end

local out = {wh_version, tonumber(redis.call('GET', sale_version_key) or '0')}
local k = 7
for i = 1, #orders do
  local o = orders[i]
  local order_id, payload, ttl_ms, lines, channel, in_sale = o[1], o[2], o[3], o[4], o[5], o[6] == 1
  local max_stock, by_key = o[7] == 1, o[8] == 1
  local loc = o[9]
  local order_key, locator_key, user_bucket, key_bucket = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local sale_key, counter_key = KEYS[k + 4], KEYS[k + 5]
  local first_stock = k + 4
  if in_sale then first_stock = k + 6 end
  local first_holders = first_stock + #lines
  k = first_holders + #lines

  local seen = redis.call('HMGET', order_key, 'p', 'a', 'c', 'u', 's', 'z')
  local spans = o[10]
  local refusal, units, sale_ttl, sale_end = nil, 0, nil, nil
  if not seen[1] and seen[6] and spans and given_up(seen[6], spans.g) then refusal = {7} end
  if not seen[1] and not refusal and loc ~= '' then
    local at = redis.call('GET', locator_key)
    if at and at ~= loc then refusal = {3} end
  end
  if not seen[1] and not refusal then refusal = rate_check(user_bucket, key_bucket, by_key) end
  if not seen[1] and not refusal and in_sale then
    refusal, units, sale_ttl, sale_end = sale_check(sale_key, counter_key, lines, channel)
    if sale_ttl and sale_ttl ~= '' then ttl_ms = tonumber(sale_ttl) end
  end
  if seen[1] then
    if seen[1] == payload then
      out[#out + 1] = {2, seen[2], tonumber(seen[3]), tonumber(seen[4]), seen[5]}
    else
      out[#out + 1] = {3}
    end
  elseif refusal then
    out[#out + 1] = refusal
  else
    local plan, short = plan_order(lines, first_stock, max_stock)
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
      if spans then  -- the whole allocation, this partition's groups among those held elsewhere
        local whole = {}
        for idx = 0, spans.n - 1 do whole[idx + 1] = spans.r[tostring(idx)] end
        for j, idx in ipairs(spans.l) do whole[idx + 1] = groups[j] end
        groups = whole
      end
      local alloc = table.concat(groups, ';')
      local until_ms = now + ttl_ms
      local c, u = string.format('%d', now), string.format('%d', until_ms)
      if seen[6] then redis.call('HDEL', order_key, 'z') end  -- a tombstone of parts not counted on
      redis.call('HSET', order_key, 'p', payload, 'a', alloc, 'c', c, 'u', u,
        's', 'pending_payment', 'n', 1)
      if spans then redis.call('HSET', order_key, 'x', spans.x) end
      local lives = math.max(record_ttl, math.ceil(ttl_ms / 1000) + 3600)
      redis.call('EXPIRE', order_key, lives)
      if loc ~= '' then redis.call('SET', locator_key, loc, 'EX', lives) end
      for j = 1, #lines do
        local holders_key = KEYS[first_holders + j - 1]
        redis.call('ZREMRANGEBYSCORE', holders_key, '-inf', now)
        redis.call('ZADD', holders_key, now + lives * 1000, order_id)
      end
      redis.call('ZADD', expiry_key, until_ms, order_id)
      if in_sale then
        redis.call('HINCRBY', counter_key, 'units', units)
        redis.call('PEXPIREAT', counter_key, sale_end + 7 * 86400000)
        redis.call('HINCRBY', sale_key, 'sold', units)
      end
      redis.call('XADD', events_key, '*', 't', 'order.accepted', 'o', order_id, 'n', 1,
        'p', payload, 'a', alloc, 'c', c, 'u', u)
      out[#out + 1] = {1, alloc, now, until_ms}
    end
  end
end
return out
