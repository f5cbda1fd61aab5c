-- A host stops: its lease ends now (its shard leases were released one by one before).
-- KEYS[1] hosts   KEYS[2] this host's hash   KEYS[3] assigner
-- ARGV[1] host id
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 1
