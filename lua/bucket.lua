-- bucket.lua: token buckets for the rate limits (gateway/ratelimits.py). Not a script of its
-- own: gateway/scripts.py puts it before reserve.lua and transition.lua, which take tokens.
-- It reads no KEYS or ARGV.
--
-- limit_of(spec)                        {rate, burst} from "rate,burst" (tokens a second, most
--                                       saved), or nil for no limit (HMGET's false)
-- bucket_wait(key, limit, now)          ms until the bucket holds a token (0: it holds one now),
--                                       and the tokens it holds now
-- bucket_take(key, limit, tokens, now)  spend one of those tokens; the bucket's hash {t, at}
--                                       lives until it would be full again
-- A bucket never seen holds ``burst`` tokens; a clock step back refills nothing.

local function limit_of(spec)
  if not spec then return nil end
  local rate, burst = string.match(spec, '^([^,]+),(%d+)$')
  return {tonumber(rate), tonumber(burst)}
end

local function bucket_wait(key, limit, now)
  local b = redis.call('HMGET', key, 't', 'at')
  local tokens = limit[2]
  if b[1] then
    tokens = math.min(limit[2], tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * limit[1] / 1000)
  end
  if tokens >= 1 then return 0, tokens end
  return math.ceil((1 - tokens) * 1000 / limit[1]), tokens
end

local function bucket_take(key, limit, tokens, now)
  redis.call('HSET', key, 't', tostring(tokens - 1), 'at', now)
  redis.call('PEXPIRE', key, math.ceil(limit[2] * 1000 / limit[1]) + 1000)
end

