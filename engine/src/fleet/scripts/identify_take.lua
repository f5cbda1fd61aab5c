-- Asks for a ticket's identify: granted when it heads its bucket's queue, the bucket's last
-- identify was an interval ago (Redis's clock), and the day's budget allows it. A grant wakes
-- the host of the bucket's next ticket: the wake channel says `bucket:host:ms`, ms being how
-- long the bucket's interval has to run (that host asks then, not before).
-- KEYS[1] queue   KEYS[2] ticket owners   KEYS[3] the bucket (hash: next_free)
-- KEYS[4] budget (hash: total, remaining, reset_at)   KEYS[5] hosts   KEYS[6] stats (hash)
-- ARGV[1] ticket   ARGV[2] interval ms (Discord's 5 s plus the safety margin)
-- ARGV[3] identifies kept back for reconnects   ARGV[4] 1 for a new session
-- ARGV[5] wake channel   ARGV[6] bucket
-- Returns { 1, now } granted; { 0, ms } wait (0 ms: until woken, another ticket is first);
-- { -1, 0 } the ticket is not queued; { -2, ms } the budget is spent until its reset.
local now = now_ms()
-- Tickets of hosts whose lease ran out would hold the bucket for ever.
local dropped = false
for _ = 1, 64 do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not head then
    break
  end
  local owner = redis.call('HGET', KEYS[2], head)
  local alive = owner and redis.call('ZSCORE', KEYS[5], owner)
  if alive and tonumber(alive) >= now then
    break
  end
  redis.call('ZREM', KEYS[1], head)
  redis.call('HDEL', KEYS[2], head)
  redis.call('HINCRBY', KEYS[6], 'abandoned', 1)
  dropped = true
end
if dropped then
  -- The new head's host learns it now, not at its fallback.
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if head and head ~= ARGV[1] then
    local next_free = tonumber(redis.call('HGET', KEYS[3], 'next_free') or '0')
    redis.call('PUBLISH', ARGV[5], ARGV[6] .. ':' .. (redis.call('HGET', KEYS[2], head) or '')
      .. ':' .. string.format('%d', math.max(0, next_free - now)))
  end
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return { -1, 0 }
end
if redis.call('ZRANGE', KEYS[1], 0, 0)[1] ~= ARGV[1] then
  return { 0, 0 }
end
local next_free = tonumber(redis.call('HGET', KEYS[3], 'next_free') or '0')
if now < next_free then
  return { 0, next_free - now }
end
local budget = redis.call('HMGET', KEYS[4], 'total', 'remaining', 'reset_at')
if budget[2] then
  local remaining = tonumber(budget[2])
  local reset_at = tonumber(budget[3])
  if now >= reset_at then
    remaining = tonumber(budget[1])
    reset_at = now + 86400000
    redis.call('HSET', KEYS[4], 'remaining', remaining, 'reset_at', reset_at)
  end
  local floor = 0
  if ARGV[4] == '1' then
    floor = tonumber(ARGV[3])
  end
  if remaining <= floor then
    return { -2, reset_at - now }
  end
  redis.call('HINCRBY', KEYS[4], 'remaining', -1)
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'next_free', now + tonumber(ARGV[2]), 'last', now)
redis.call('HINCRBY', KEYS[6], 'granted', 1)
local next_ticket = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if next_ticket then
  local next_host = redis.call('HGET', KEYS[2], next_ticket) or ''
  redis.call('PUBLISH', ARGV[5], ARGV[6] .. ':' .. next_host .. ':' .. ARGV[2])
end
return { 1, now }
