-- A granted identify went out later than its grant (a slow core, a slow handshake): the
-- bucket's next one keeps a full interval from when it really went.
-- KEYS[1] the bucket   ARGV[1] interval ms
local wanted = now_ms() + tonumber(ARGV[1])
local next_free = tonumber(redis.call('HGET', KEYS[1], 'next_free') or '0')
if wanted > next_free then
  redis.call('HSET', KEYS[1], 'next_free', wanted)
end
return 1
