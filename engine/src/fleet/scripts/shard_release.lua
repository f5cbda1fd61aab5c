-- Gives a shard's lease up (a hand-over): only the holder with its token can.
-- KEYS[1] the shard's lease   ARGV[1] host id   ARGV[2] token
-- Returns 1 when released, 0 when it was not held with that token.
local holder = redis.call('HMGET', KEYS[1], 'host', 'token')
if holder[1] == ARGV[1] and holder[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
