-- Ends an attempt on a claimed queue, if the claim still holds (its token is the
-- queue's and its head is still first): 'done' drops the head (acknowledged or given
-- up) and makes the next event due at ARGV[6]; 'again' keeps it, records ARGV[7]
-- attempts and schedules the queue for ARGV[6]. Returns 1, or 0 for a lost claim.
-- KEYS[1] = {base}ready; ARGV[1] = key base, ARGV[2] = queue, ARGV[3] = token,
-- ARGV[4] = head element, ARGV[5] = 'done' | 'again', ARGV[6] = ms, ARGV[7] = attempts.
local base, q, token, head, op, at, tries =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local state = base .. 's:' .. q
local list = base .. 'q:' .. q
if redis.call('HGET', state, 'token') ~= token or redis.call('LINDEX', list, 0) ~= head then
  return 0
end
if op == 'again' then
  redis.call('HSET', state, 'tries', tries)
  redis.call('HDEL', state, 'token')
  redis.call('ZADD', base .. 'ready', at, q)
  return 1
end
redis.call('LPOP', list)
redis.call('DEL', state)
local next = redis.call('LINDEX', list, 0)
if next then
  redis.call('ZADD', base .. 'ready', at, q)
  redis.call('ZADD', base .. 'heads', tonumber(string.match(next, '^%d+')), q)
else
  redis.call('ZREM', base .. 'ready', q)
  redis.call('ZREM', base .. 'heads', q)
end
return 1
