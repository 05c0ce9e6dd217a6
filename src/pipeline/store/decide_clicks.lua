-- Decides candidate clicks, each with every candidate of its fingerprint up to it in
-- (ts, click id) order, and adds the unique ones to their journeys; answers one
-- verdict per candidate (1 unique, 0 not). See StateStore::decide_clicks.
--
-- ARGV[1] is the journey cap, ARGV[2] the keys per candidate: 4 with the journey, 3
-- without (on a Redis Cluster, where a journey lies in another slot and the caller
-- adds unique clicks to it). Per candidate i (0-based), keys from KEYS[stride*i+1]:
--   candidates (zset: score ts ms, member click id as 32 hex), unique ones (same
--   layout), the fingerprint's progress ("ms:id:unique ms": the last decided
--   candidate and the newest unique click, empty when none), [the visitor's journey
--   (zset)]
-- and 6 arguments from ARGV[6i+3]:
--   ts ms, click id (32 hex), window ms, how long decided marks are kept (ms, event
--   time and TTL), journey member (empty: not a touchpoint), journey TTL ms
--
-- Candidates are decided in mark order, so the newest unique click is the only one a
-- window can hold: a candidate is unique unless it lies within the window after it.
-- The progress key carries it, sparing a count of the unique set per candidate; the
-- set itself answers for candidates decided by earlier calls (replays, and candidates
-- another instance's later candidate decided first).
local max_journey = tonumber(ARGV[1])
local stride = tonumber(ARGV[2])
local out = {}
local horizons = {}
for i = 0, #KEYS / stride - 1 do
  local kc, ku, kd = KEYS[stride * i + 1], KEYS[stride * i + 2], KEYS[stride * i + 3]
  local kj = KEYS[stride * i + 4]
  local a = 6 * i + 2
  local tms, tid = tonumber(ARGV[a + 1]), ARGV[a + 2]
  local window, keep = tonumber(ARGV[a + 3]), ARGV[a + 4]
  local dms, did, ums = nil, nil, nil
  local done = redis.call('GET', kd)
  if done then
    local s1 = string.find(done, ':', 1, true)
    local s2 = string.find(done, ':', s1 + 1, true)
    dms = tonumber(string.sub(done, 1, s1 - 1))
    did = string.sub(done, s1 + 1, s2 - 1)
    ums = tonumber(string.sub(done, s2 + 1))
  end
  local verdict = nil
  if not done or tms > dms or (tms == dms and tid > did) then
    local from = '-inf'
    if dms then from = tostring(dms) end
    local items = redis.call('ZRANGEBYSCORE', kc, from, ARGV[a + 1], 'WITHSCORES')
    local last_ms, last_id = nil, nil
    local added = false
    for j = 1, #items, 2 do
      local id, ms = items[j], tonumber(items[j + 1])
      local after_done = (not dms) or ms > dms or (ms == dms and id > did)
      local up_to = ms < tms or (ms == tms and id <= tid)
      if after_done and up_to then
        -- A unique click in (ts - window, ts] makes a duplicate.
        local unique = window <= 0 or not ums or ums <= ms - window
        if unique then
          redis.call('ZADD', ku, ms, id)
          ums = ms
          added = true
        end
        if ms == tms and id == tid then verdict = unique end
        last_ms, last_id = ms, id
      end
    end
    if last_ms then
      redis.call('SET', kd, tostring(last_ms) .. ':' .. last_id .. ':' .. (ums and tostring(ums) or ''), 'PX', keep)
      -- Trimming changes no verdict (reads start at the last decided candidate, and
      -- the newest unique click is in the progress): one decision in 16, picked by the
      -- id's random last digit, keeps the sets short at a sixteenth of the cost.
      local h = horizons[kc] or {ku, 0, keep, false, false}
      h[2] = last_ms - tonumber(keep)
      h[4] = h[4] or string.sub(last_id, -1) == '0'
      h[5] = h[5] or added
      horizons[kc] = h
    end
  end
  if verdict == nil then
    verdict = redis.call('ZSCORE', ku, tid) ~= false
  end
  if verdict then
    out[i + 1] = 1
    if stride == 4 and ARGV[a + 5] ~= '' then
      redis.call('ZADD', kj, tms, ARGV[a + 5])
      if redis.call('ZCARD', kj) > max_journey then
        redis.call('ZREMRANGEBYRANK', kj, 0, -max_journey - 1)
      end
      redis.call('PEXPIRE', kj, ARGV[a + 6])
    end
  else
    out[i + 1] = 0
  end
end
-- Trim fingerprints behind the newest candidate decided; the unique set lives as long
-- as the progress from its last addition (the candidate set's TTL is renewed by every
-- click recorded into it).
for kc, h in pairs(horizons) do
  if h[4] then
    redis.call('ZREMRANGEBYSCORE', kc, '-inf', '(' .. tostring(h[2]))
    redis.call('ZREMRANGEBYSCORE', h[1], '-inf', '(' .. tostring(h[2]))
  end
  if h[5] then redis.call('PEXPIRE', h[1], h[3]) end
end
return out
