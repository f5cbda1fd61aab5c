-- Reconciles the fleet's daily identify budget with a `/gateway/bot` answer. Within the same
-- period the lower count wins (identifies in flight on other hosts are not in Discord's answer
-- yet, or not in ours); a reset time more than a minute away from the stored one is a new
-- period, taken as Discord says.
-- KEYS[1] budget   ARGV[1] total   ARGV[2] remaining   ARGV[3] reset after ms
-- Returns { remaining, reset in ms } as stored now.
local now = now_ms()
local reset_at = now + tonumber(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'remaining', 'reset_at')
local remaining = tonumber(ARGV[2])
if stored[1] and math.abs(tonumber(stored[2]) - reset_at) <= 60000 then
  remaining = math.min(remaining, tonumber(stored[1]))
  reset_at = tonumber(stored[2])
end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'remaining', remaining, 'reset_at', reset_at)
return { remaining, reset_at - now }
