-- A host's lease: registers or renews it, and drops hosts whose lease ran out. The first beat
-- into an empty Redis (a new fleet, or one that lost its data) starts an epoch: for a shard
-- lease's length from then, no shard is taken anew (see shard_acquire.lua).
-- KEYS[1] hosts (zset: host id -> lease end, ms)   KEYS[2] this host's hash   KEYS[3] epoch
-- ARGV[1] host id   ARGV[2] lease ms   ARGV[3] admin address   ARGV[4] capacity
-- ARGV[5] pinned shards ("" when the assigner places its shards)
-- ARGV[6] the host's counters (JSON), for GET /cluster's fleet totals
-- Returns { now, 1 when the host was not registered (new, or its lease had run out) else 0,
-- the epoch's start }
local now = now_ms()
local lease = tonumber(ARGV[2])
local before = redis.call('ZSCORE', KEYS[1], ARGV[1])
local fresh = 0
if not before or tonumber(before) < now then
  fresh = 1
end
redis.call('SET', KEYS[3], now, 'NX')
local epoch = tonumber(redis.call('GET', KEYS[3]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('HSET', KEYS[2], 'admin', ARGV[3], 'capacity', ARGV[4], 'pinned', ARGV[5],
  'stats', ARGV[6], 'seen', now)
if fresh == 1 then
  redis.call('HSET', KEYS[2], 'since', now)
end
redis.call('PEXPIRE', KEYS[2], lease * 3)
return { now, fresh, epoch }
