-- Renews the leases a host holds, all in one round trip. A lease that is gone although its
-- holder still runs the shard (Redis lost its data, or the key was deleted) is taken again
-- with a new token when no one else holds it and the assignment names this host or no one.
-- The holder only asks while its own deadline has not passed, so it never re-takes a lease
-- another host could have had.
-- KEYS[1] fencing counter   KEYS[2] assignment   KEYS[3] epoch, then the leases, one per shard
-- ARGV[1] host id   ARGV[2] lease ms, then per lease: its shard id and token
-- Returns one entry per lease: 0 renewed, -1 lost, or a new token when taken again.
local out = {}
local now = now_ms()
for i = 4, #KEYS do
  local key = KEYS[i]
  local shard = ARGV[(i - 4) * 2 + 3]
  local token = ARGV[(i - 4) * 2 + 4]
  local holder = redis.call('HMGET', key, 'host', 'token')
  if holder[1] == ARGV[1] and holder[2] == token then
    redis.call('PEXPIRE', key, ARGV[2])
    out[#out + 1] = 0
  elseif holder[1] then
    out[#out + 1] = -1
  else
    local assigned = redis.call('HGET', KEYS[2], shard)
    if assigned and assigned ~= ARGV[1] then
      out[#out + 1] = -1
    else
      redis.call('SET', KEYS[3], now, 'NX')
      if not redis.call('GET', KEYS[1]) then
        redis.call('SET', KEYS[1], string.format('%.0f', tonumber(redis.call('GET', KEYS[3])) * 1000))
      end
      local fresh = redis.call('INCR', KEYS[1])
      redis.call('HSET', key, 'host', ARGV[1], 'token', fresh, 'since', now)
      redis.call('PEXPIRE', key, ARGV[2])
      out[#out + 1] = fresh
    end
  end
end
return out
