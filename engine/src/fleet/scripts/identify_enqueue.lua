-- Queues an identify ticket in its bucket: reconnects of running shards before new sessions,
-- first come first served within each.
-- KEYS[1] the bucket's queue (zset: ticket -> order)   KEYS[2] the bucket's ticket owners
-- (hash: ticket -> host id)   KEYS[3] order counter
-- ARGV[1] ticket   ARGV[2] host id   ARGV[3] 0 for a reconnect, 1 for a new session
-- Returns the ticket's place in the queue (0 = next).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local order = redis.call('INCR', KEYS[3])
  -- Exact in a double up to 2^53: class * 2^40 + order.
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) * 1099511627776 + order, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return redis.call('ZRANK', KEYS[1], ARGV[1])
