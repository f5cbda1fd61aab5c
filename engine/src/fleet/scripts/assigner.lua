-- The assigner's lease: taken when free, renewed by its holder.
-- KEYS[1] assigner   KEYS[2] hosts
-- ARGV[1] host id   ARGV[2] lease ms
-- Returns { 1 when this host is the assigner else 0, the assigner's id or "" }
local now = now_ms()
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  -- A holder whose host lease ran out gives way at once.
  local alive = redis.call('ZSCORE', KEYS[2], holder)
  if alive and tonumber(alive) >= now then
    return { 0, holder }
  end
end
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not mine or tonumber(mine) < now then
  return { 0, holder or '' }
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return { 1, ARGV[1] }
