-- Takes a shard's lease: only when the assignment names this host (or the shard is pinned to
-- it), nobody holds it, and the epoch is older than a shard lease (a Redis that lost its data
-- forgot who held what: the holders re-take their own shards first, see shard_renew.lua, or
-- stop theirs within a lease). Each grant gets the next fencing token; the counter starts at
-- the epoch's clock so that tokens keep growing across a loss of data.
-- KEYS[1] the shard's lease (hash: host, token)   KEYS[2] fencing counter   KEYS[3] assignment
-- KEYS[4] hosts   KEYS[5] epoch
-- ARGV[1] shard id   ARGV[2] host id   ARGV[3] lease ms   ARGV[4] 1 for a pinned shard
-- Returns { token, 0 } on a grant; { 0, holder's token } when held by another; { 0, -1 } when
-- the assignment names another host; { 0, -2 } when this host's own lease ran out;
-- { 0, -3 - ms } while the epoch is younger than a lease (ms left).
local now = now_ms()
local mine = redis.call('ZSCORE', KEYS[4], ARGV[2])
if not mine or tonumber(mine) < now then
  return { 0, -2 }
end
if ARGV[4] ~= '1' and redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return { 0, -1 }
end
local holder = redis.call('HMGET', KEYS[1], 'host', 'token')
if holder[1] then
  if holder[1] == ARGV[2] then
    -- Already ours (a retry after a lost reply): renew and keep the token.
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return { tonumber(holder[2]), 0 }
  end
  return { 0, tonumber(holder[2]) }
end
local epoch = tonumber(redis.call('GET', KEYS[5]) or now)
local quiet_until = epoch + tonumber(ARGV[3])
if now < quiet_until then
  return { 0, -3 - (quiet_until - now) }
end
if not redis.call('GET', KEYS[2]) then
  redis.call('SET', KEYS[2], string.format('%.0f', epoch * 1000))
end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'host', ARGV[2], 'token', token, 'since', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return { token, 0 }
