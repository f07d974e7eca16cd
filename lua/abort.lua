-- abort.lua: the sweep's question to an order's primary partition about parts it found
-- taken long ago and never committed (gateway/spans.py).
--
-- KEYS[1]  the order hash in its primary partition
-- ARGV[1]  seconds a tombstone lives
--
-- Returns 1 when the primary holds the order (its parts stay), else 0 after leaving a
-- tombstone there: a reserve still on its way for this id is refused with 503 instead of
-- accepting an order whose parts the sweep gives back.
if redis.call('HEXISTS', KEYS[1], 'p') == 1 then return 1 end
redis.call('HSET', KEYS[1], 'z', '1')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
