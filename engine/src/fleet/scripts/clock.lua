-- Included at the top of every script: Redis's own clock in milliseconds (no host clock is
-- trusted across a fleet).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
