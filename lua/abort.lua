-- abort.lua: the question to an order's primary partition, before parts of the order taken
-- elsewhere are given back (a refused attempt's, or those the sweep found never committed:
-- gateway/spans.py).
--
-- KEYS[1]  the order hash in its primary partition
-- ARGV[1]  seconds a tombstone lives
-- ARGV[2]  "tag=gen,...": each partition whose part goes back, with that part's generation
--          (lua/hold.lua take)
-- ARGV[3]  the payload the parts were taken for
--
-- Returns 1 when the primary holds the order with that payload (its parts stay). It
-- returns 0 when the primary holds the id with another payload: those parts are no part of
-- it, and its record is left as it is. Otherwise it returns 0 after leaving a
-- tombstone there: field z, "tag=gen,..." with the highest generation given back per
-- partition. A reserve still on its way that counts on a part of such a generation, or an
-- older one, is refused with 503 instead of accepting an order whose parts go back; a
-- retry takes its parts again, as a newer generation, and is not refused (lua/reserve.lua).
local seen = redis.call('HGET', KEYS[1], 'p')
if seen then return seen == ARGV[3] and 1 or 0 end
local given = {}
for tag, gen in string.gmatch((redis.call('HGET', KEYS[1], 'z') or '') .. ',' .. ARGV[2], '([^,=]+)=(%d+)') do
  given[tag] = math.max(given[tag] or 0, tonumber(gen))
end
local z = {}
for tag, gen in pairs(given) do z[#z + 1] = tag .. '=' .. gen end
redis.call('HSET', KEYS[1], 'z', table.concat(z, ','))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
