-- Claims up to ARGV[4] queues whose next attempt is due: each is leased (its ready
-- score moved past the lease) under a fresh token, so that one worker at a time sends a
-- queue's head and a crashed worker's queues come back when their lease ends.
-- KEYS[1] = {base}ready; ARGV[1] = key base, ARGV[2] = now ms, ARGV[3] = lease ms,
-- ARGV[4] = most queues, ARGV[5] = token prefix (unique per call).
-- Returns {queue, token, head element, attempts so far} per claim.
local base, now, lease, most, prefix =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local due = redis.call('ZRANGEBYSCORE', base .. 'ready', '-inf', now, 'LIMIT', 0, most)
local out = {}
for i, q in ipairs(due) do
  local head = redis.call('LINDEX', base .. 'q:' .. q, 0)
  local state = base .. 's:' .. q
  if head then
    local token = prefix .. ':' .. i
    redis.call('ZADD', base .. 'ready', now + lease, q)
    redis.call('HSET', state, 'token', token)
    local tries = redis.call('HGET', state, 'tries') or '0'
    out[#out + 1] = {q, token, head, tries}
  else
    redis.call('ZREM', base .. 'ready', q)
    redis.call('ZREM', base .. 'heads', q)
    redis.call('DEL', state)
  end
end
return out
