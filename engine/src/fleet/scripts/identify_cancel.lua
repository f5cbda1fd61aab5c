-- Withdraws a ticket (its shard stopped, resumed or moved away), waking the bucket.
-- KEYS[1] queue   KEYS[2] ticket owners   ARGV[1] ticket   ARGV[2] wake channel   ARGV[3] bucket
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return removed
