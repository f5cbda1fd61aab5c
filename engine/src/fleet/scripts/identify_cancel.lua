-- Withdraws a ticket (its shard stopped, resumed or moved away), waking the host of the
-- bucket's next ticket (`bucket:host:0` on the wake channel: it asks at once, and Redis says
-- how long the interval has to run).
-- KEYS[1] queue   KEYS[2] ticket owners   ARGV[1] ticket   ARGV[2] wake channel   ARGV[3] bucket
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 then
  local next_ticket = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if next_ticket then
    local next_host = redis.call('HGET', KEYS[2], next_ticket) or ''
    redis.call('PUBLISH', ARGV[2], ARGV[3] .. ':' .. next_host .. ':0')
  end
end
return removed
