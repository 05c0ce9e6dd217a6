-- Decides a fingerprint's candidate clicks in (ts, click id) order up to the one asked
-- about, and answers its verdict (1 unique, 0 not). See StateStore::decide_clicks.
--
-- KEYS[1] candidates (zset: score ts ms, member click id as 32 hex)
-- KEYS[2] unique ones (same layout)
-- KEYS[3] the last decided candidate, "ms:id"
-- ARGV[1] ts ms of the click asked about, ARGV[2] its id (32 hex)
-- ARGV[3] window ms, ARGV[4] how long decided marks are kept (ms, event time and TTL)
local tms = tonumber(ARGV[1])
local tid = ARGV[2]
local window = tonumber(ARGV[3])
local dms, did = nil, nil
local done = redis.call('GET', KEYS[3])
if done then
  local sep = string.find(done, ':', 1, true)
  dms = tonumber(string.sub(done, 1, sep - 1))
  did = string.sub(done, sep + 1)
  if tms < dms or (tms == dms and tid <= did) then
    if redis.call('ZSCORE', KEYS[2], tid) then return 1 end
    return 0
  end
end
local from = '-inf'
if dms then from = tostring(dms) end
local items = redis.call('ZRANGEBYSCORE', KEYS[1], from, ARGV[1], 'WITHSCORES')
local last_ms, last_id = nil, nil
for i = 1, #items, 2 do
  local id = items[i]
  local ms = tonumber(items[i + 1])
  local after_done = (not dms) or ms > dms or (ms == dms and id > did)
  local up_to = ms < tms or (ms == tms and id <= tid)
  if after_done and up_to then
    -- A unique click in (ts - window, ts] makes a duplicate.
    if window <= 0 or redis.call('ZCOUNT', KEYS[2], '(' .. tostring(ms - window), tostring(ms)) == 0 then
      redis.call('ZADD', KEYS[2], ms, id)
    end
    last_ms, last_id = ms, id
  end
end
if last_ms then
  redis.call('SET', KEYS[3], tostring(last_ms) .. ':' .. last_id, 'PX', ARGV[4])
  local horizon = '(' .. tostring(last_ms - tonumber(ARGV[4]))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if redis.call('ZSCORE', KEYS[2], tid) then return 1 end
return 0
