-- Saves a shard's session, fenced: only the lease holder with its current token writes.
-- KEYS[1] the shard's session (hash)   KEYS[2] the shard's lease
-- ARGV[1] host id   ARGV[2] token   ARGV[3] session id   ARGV[4] resume url
-- ARGV[5] sequence the bot acknowledged   ARGV[6] shard count
-- Returns 1 when written, 0 when the lease is not this host's with this token.
local holder = redis.call('HMGET', KEYS[2], 'host', 'token')
if holder[1] ~= ARGV[1] or holder[2] ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'session_id', ARGV[3], 'resume_url', ARGV[4], 'seq', ARGV[5],
  'shard_count', ARGV[6], 'token', ARGV[2], 'host', ARGV[1], 'saved', now_ms())
return 1
