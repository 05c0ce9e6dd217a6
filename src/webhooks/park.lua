-- Parks webhook events at the tail of their queues (SPEC §3.6), skipping any that was
-- parked before for the same endpoint (a replay of the outbox, or an event published
-- twice): the known marker outlives the outbox's replay window.
-- KEYS[1] = {base}ready (routes the call; every key shares its hash tag)
-- ARGV[1] = key base, ARGV[2] = now ms, ARGV[3] = marker TTL ms,
-- then triples (queue, marker, element); an element starts with its parked ms.
local base, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local parked = 0
for i = 4, #ARGV, 3 do
  local q, marker, element = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SET', base .. 'k:' .. marker, '1', 'NX', 'PX', ttl) then
    if redis.call('RPUSH', base .. 'q:' .. q, element) == 1 then
      redis.call('ZADD', base .. 'ready', now, q)
      redis.call('ZADD', base .. 'heads', now, q)
    end
    parked = parked + 1
  end
end
return parked
