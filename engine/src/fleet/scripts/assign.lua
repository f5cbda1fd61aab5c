-- The assigner writes where shards go, only while it holds the assigner's lease.
-- KEYS[1] assigner   KEYS[2] assignment (hash: shard id -> host id)
-- ARGV[1] host id, then pairs of (shard id, host id or "" to unassign)
-- Returns 1 when written, 0 when this host is not the assigner.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 1
