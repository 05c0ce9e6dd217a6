-- Decides candidate clicks, each with every candidate of its fingerprint up to it in
-- (ts, click id) order, and adds the unique ones to their journeys; answers one
-- result per candidate: 1 if unique, plus 2 if it renewed the journey's TTL, plus 4
-- if it renewed the candidate set's. See StateStore::decide_clicks.
--
-- ARGV[1] is the journey cap, ARGV[2] the keys per candidate: 3 with the journey, 2
-- without (on a Redis Cluster, where a journey lies in another slot and the caller
-- adds unique clicks to it). Per candidate i (0-based), keys from KEYS[stride*i+1]:
--   candidates (zset: score ts ms, member click id as 32 hex; a unique one's score
--   is ts ms + 0.5 once decided), the fingerprint's progress ("ms:id:unique ms": the
--   last decided candidate and the newest unique click, empty when none), [the
--   visitor's journey (zset)]
-- and 7 arguments from ARGV[7i+3]:
--   ts ms, click id (32 hex), window ms, how long decided marks are kept (ms, event
--   time and TTL), journey member (empty: not a touchpoint), the journey's TTL ms and
--   the candidate set's TTL ms, each empty when the caller renewed it lately (so
--   a write here needs no PEXPIRE)
--
-- Candidates are decided in mark order, so the newest unique click is the only one a
-- window can hold: a candidate is unique unless it lies within the window after it.
-- The progress key carries it, sparing a count of unique clicks per candidate. A
-- verdict stays in its candidate's score (a half for unique), for candidates decided
-- by earlier calls (replays, and candidates another instance's later candidate
-- decided first); recording a click again (ZADD NX) keeps it.
local max_journey = tonumber(ARGV[1])
local stride = tonumber(ARGV[2])
local out = {}
local horizons = {}
local renewed = {}
for i = 0, #KEYS / stride - 1 do
  local kc, kd = KEYS[stride * i + 1], KEYS[stride * i + 2]
  local kj = KEYS[stride * i + 3]
  local a = 7 * i + 2
  local tms, tid = tonumber(ARGV[a + 1]), ARGV[a + 2]
  local window, keep = tonumber(ARGV[a + 3]), ARGV[a + 4]
  local flags = 0
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
    -- Undecided candidates have whole scores: up to and with this one's.
    local items = redis.call('ZRANGEBYSCORE', kc, from, ARGV[a + 1], 'WITHSCORES')
    local last_ms, last_id = nil, nil
    for j = 1, #items, 2 do
      local id, score = items[j], items[j + 1]
      local ms = math.floor(tonumber(score))
      local after_done = (not dms) or ms > dms or (ms == dms and id > did)
      local up_to = ms < tms or (ms == tms and id <= tid)
      if after_done and up_to then
        -- A unique click in (ts - window, ts] makes a duplicate.
        local unique = window <= 0 or not ums or ums <= ms - window
        if unique then
          redis.call('ZADD', kc, 'XX', score .. '.5', id)
          ums = ms
          if ARGV[a + 7] ~= '' and not renewed[kc] then
            redis.call('PEXPIRE', kc, ARGV[a + 7])
            renewed[kc] = true
          end
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
      local h = horizons[kc] or {0, false}
      h[1] = last_ms - tonumber(keep)
      h[2] = h[2] or string.sub(last_id, -1) == '0'
      horizons[kc] = h
    end
  end
  if verdict == nil then
    local score = redis.call('ZSCORE', kc, tid)
    verdict = score ~= false and tonumber(score) ~= math.floor(tonumber(score))
  end
  if renewed[kc] then flags = flags + 4 end
  if verdict then
    flags = flags + 1
    if stride == 3 and ARGV[a + 5] ~= '' then
      redis.call('ZADD', kj, tms, ARGV[a + 5])
      if redis.call('ZCARD', kj) > max_journey then
        redis.call('ZREMRANGEBYRANK', kj, 0, -max_journey - 1)
      end
      if ARGV[a + 6] ~= '' and not renewed[kj] then
        redis.call('PEXPIRE', kj, ARGV[a + 6])
        renewed[kj] = true
      end
    end
  end
  if stride == 3 and renewed[kj] then flags = flags + 2 end
  out[i + 1] = flags
end
-- Trim fingerprints behind the newest candidate decided.
for kc, h in pairs(horizons) do
  if h[2] then
    redis.call('ZREMRANGEBYSCORE', kc, '-inf', '(' .. tostring(h[1]))
  end
end
return out
