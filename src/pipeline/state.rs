//! Pipeline state: click dedup marks, journeys, the click → visitor index, conversion
//! dedup claims, monthly counts, customers' first sales, orders' earned rows, and the memo
//! of every settled conversion. Redis in the full stack (shared by all instances, with
//! TTLs), memory in the embedded default, behind one trait.
//!
//! Exactly once rests on [`StateStore::commit`]: a conversion's decision is stored
//! together with every state change it implies, atomically, and only if no other
//! settlement got there first. A replay after a crash finds the memo and writes the very
//! same rows again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::dedup;
use crate::engine::settle::Decision;

/// How long a settled conversion's memo is kept: far longer than any replay window.
pub const MEMO_TTL: Duration = Duration::from_secs(30 * 86_400);
/// How long a conversion dedup claim is kept (SPEC §5.2: at least 400 days).
pub const CLAIM_TTL: Duration = Duration::from_secs(400 * 86_400);
/// Orders stay refundable this long.
pub const ORDER_TTL: Duration = Duration::from_secs(400 * 86_400);
/// Monthly counts are read the month after; keep them a little longer.
pub const COUNT_TTL: Duration = Duration::from_secs(70 * 86_400);
/// Most unique clicks kept per journey (more than any `max_touches`).
pub const MAX_JOURNEY: usize = 256;

/// A state failure: the store is unreachable; the pipeline pauses and retries.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store unavailable: {0}")]
pub struct StateError(pub String);

impl From<redis::RedisError> for StateError {
    fn from(e: redis::RedisError) -> Self {
        StateError(e.to_string())
    }
}

impl From<redis::ParsingError> for StateError {
    fn from(e: redis::ParsingError) -> Self {
        StateError(format!("unexpected reply: {e}"))
    }
}

/// What the state needs to know of a click.
#[derive(Debug, Clone)]
pub struct ClickMark {
    pub fingerprint: String,
    pub click_id: Uuid,
    pub ts: DateTime<Utc>,
    pub window_secs: u64,
    /// Not a bot and status ok: the window decides.
    pub candidate: bool,
    pub program_id: String,
    pub visitor_id: Uuid,
    pub partner_id: String,
    pub campaign: String,
    /// How long the journey and the click index must remember this click.
    pub keep: Duration,
}

/// A unique click in a journey, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTouch {
    pub click_id: Uuid,
    pub partner_id: String,
    pub campaign: String,
    pub ts: DateTime<Utc>,
}

impl StoredTouch {
    fn member(click_id: Uuid, partner_id: &str, campaign: &str) -> String {
        format!("{click_id}|{partner_id}|{campaign}")
    }

    fn parse(member: &str, ts_ms: i64) -> Option<Self> {
        let mut parts = member.splitn(3, '|');
        let click_id = Uuid::parse_str(parts.next()?).ok()?;
        let partner_id = parts.next()?.to_string();
        let campaign = parts.next().unwrap_or("").to_string();
        Some(StoredTouch {
            click_id,
            partner_id,
            campaign,
            ts: Utc.timestamp_millis_opt(ts_ms).single()?,
        })
    }
}

/// A settled conversion as remembered: the decision and its touches' campaigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memo {
    pub decision: Decision,
    pub campaigns: Vec<String>,
}

/// A state change that a settlement implies, applied atomically with its memo.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Counts the conversion once in `counter` (idempotent through `marker`).
    CountOnce {
        counter: String,
        marker: String,
        ttl: Duration,
    },
    /// Sets `key` unless it exists (a customer's first sale, an order's record).
    SetIfAbsent {
        key: String,
        value: String,
        ttl: Option<Duration>,
    },
    /// Replaces `key` if it still holds `expected` (a refund booked on its order).
    CompareAndSet {
        key: String,
        expected: String,
        value: String,
        ttl: Duration,
    },
}

/// What became of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// Stored with all its effects.
    Committed,
    /// This conversion was settled before (a replay): use that decision.
    AlreadySettled(Memo),
    /// A compared value changed meanwhile: resolve again and retry.
    Conflict,
}

/// Key names, shared by both stores so that they agree on what is one key.
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn fingerprint(&self, fp: &str) -> String {
        format!("{}:fp:{fp}", self.prefix)
    }
    pub fn journey(&self, program: &str, visitor: Uuid) -> String {
        format!("{}:j:{program}:{visitor}", self.prefix)
    }
    pub fn click(&self, click_id: Uuid) -> String {
        format!("{}:c:{click_id}", self.prefix)
    }
    pub fn claim(&self, dedup_key: &str) -> String {
        format!("{}:d:{dedup_key}", self.prefix)
    }
    pub fn memo(&self, conversion_id: Uuid) -> String {
        format!("{}:m:{conversion_id}", self.prefix)
    }
    pub fn count(&self, program: &str, partner: &str, month: u32) -> String {
        format!("{}:v:{program}:{month}:{partner}", self.prefix)
    }
    pub fn count_marker(&self, conversion_id: Uuid, partner: &str) -> String {
        format!("{}:vm:{conversion_id}:{partner}", self.prefix)
    }
    pub fn first_sale(&self, program: &str, customer: &str) -> String {
        format!("{}:fs:{program}:{customer}", self.prefix)
    }
    pub fn order(&self, program: &str, order_id: &str) -> String {
        format!("{}:o:{program}:{order_id}", self.prefix)
    }
    /// Marks a customer whose sale settled without crediting anyone.
    pub fn customer(&self, program: &str, customer: &str) -> String {
        format!("{}:cs:{program}:{customer}", self.prefix)
    }
}

/// Pipeline state.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Key names of this store.
    fn keys(&self) -> &Keys;
    /// Marks clicks: indexes each click's visitor, decides candidates against their
    /// fingerprint's window and adds unique ones to their journey. Returns, per click,
    /// whether it is unique. Idempotent per click id.
    async fn record_clicks(&self, clicks: &[ClickMark]) -> Result<Vec<bool>, StateError>;
    /// The visitor of a click, once the click has been recorded.
    async fn click_visitor(&self, click_id: Uuid) -> Result<Option<Uuid>, StateError>;
    /// Unique clicks of the visitor in the program with `from ≤ ts ≤ to`.
    async fn journey(
        &self,
        program: &str,
        visitor: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredTouch>, StateError>;
    /// The decision of a conversion settled before.
    async fn memo(&self, conversion_id: Uuid) -> Result<Option<Memo>, StateError>;
    /// Claims the dedup key for this conversion: `true` when it is the original (first
    /// claim, or its own claim replayed).
    async fn claim(&self, dedup_key: &str, conversion_id: Uuid) -> Result<bool, StateError>;
    /// A counter's value (0 when absent).
    async fn count(&self, key: &str) -> Result<u64, StateError>;
    /// A stored value.
    async fn get(&self, key: &str) -> Result<Option<String>, StateError>;
    /// Which of `keys` exist, in one round trip.
    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, StateError>;
    /// Stores the memo with its effects, atomically (see [`CommitOutcome`]).
    async fn commit(
        &self,
        conversion_id: Uuid,
        memo: &Memo,
        effects: &[Effect],
    ) -> Result<CommitOutcome, StateError>;
    /// Is the store reachable?
    async fn ping(&self) -> Result<(), StateError>;
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------------------------------
// Memory

#[derive(Default)]
struct Entry {
    value: String,
    expires: Option<Instant>,
}

#[derive(Default)]
struct MemoryInner {
    values: HashMap<String, Entry>,
    /// fingerprint → unique clicks (click id, ts ms)
    fingerprints: HashMap<String, Vec<(Uuid, i64)>>,
    /// journey key → (ts ms, member)
    journeys: HashMap<String, Vec<(i64, String)>>,
}

impl MemoryInner {
    fn get(&mut self, key: &str) -> Option<&str> {
        let expired = self
            .values
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|x| x <= Instant::now()));
        if expired {
            self.values.remove(key);
        }
        self.values.get(key).map(|e| e.value.as_str())
    }

    fn set(&mut self, key: &str, value: String, ttl: Option<Duration>) {
        self.values.insert(
            key.to_string(),
            Entry {
                value,
                expires: ttl.map(|t| Instant::now() + t),
            },
        );
    }
}

/// The embedded default's state: process memory.
pub struct MemoryState {
    keys: Keys,
    inner: Mutex<MemoryInner>,
}

impl MemoryState {
    pub fn new() -> Self {
        MemoryState {
            keys: Keys::new("tl"),
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl StateStore for MemoryState {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn record_clicks(&self, clicks: &[ClickMark]) -> Result<Vec<bool>, StateError> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(clicks.len());
        for c in clicks {
            inner.set(
                &self.keys.click(c.click_id),
                c.visitor_id.to_string(),
                Some(c.keep),
            );
            if !c.candidate {
                out.push(false);
                continue;
            }
            let ts = c.ts.timestamp_millis();
            let fp = inner.fingerprints.entry(c.fingerprint.clone()).or_default();
            let unique = if fp.iter().any(|(id, _)| *id == c.click_id) {
                true
            } else {
                let previous = fp
                    .iter()
                    .filter_map(|(_, t)| Utc.timestamp_millis_opt(*t).single());
                let verdict = dedup::decide_click(c.ts, previous, c.window_secs);
                if verdict == dedup::ClickVerdict::Unique {
                    fp.push((c.click_id, ts));
                    let horizon = ts
                        - 2 * i64::try_from(c.window_secs.saturating_mul(1000))
                            .unwrap_or(i64::MAX / 4);
                    fp.retain(|(_, t)| *t >= horizon);
                }
                verdict == dedup::ClickVerdict::Unique
            };
            if unique {
                let member = StoredTouch::member(c.click_id, &c.partner_id, &c.campaign);
                let journey = inner
                    .journeys
                    .entry(self.keys.journey(&c.program_id, c.visitor_id))
                    .or_default();
                if !journey.iter().any(|(_, m)| *m == member) {
                    journey.push((ts, member));
                    journey.sort();
                    if journey.len() > MAX_JOURNEY {
                        let cut = journey.len() - MAX_JOURNEY;
                        journey.drain(..cut);
                    }
                }
            }
            out.push(unique);
        }
        Ok(out)
    }

    async fn click_visitor(&self, click_id: Uuid) -> Result<Option<Uuid>, StateError> {
        let mut inner = self.lock();
        Ok(inner
            .get(&self.keys.click(click_id))
            .and_then(|v| Uuid::parse_str(v).ok()))
    }

    async fn journey(
        &self,
        program: &str,
        visitor: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredTouch>, StateError> {
        let inner = self.lock();
        let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
        Ok(inner
            .journeys
            .get(&self.keys.journey(program, visitor))
            .map(|j| {
                j.iter()
                    .filter(|(ts, _)| (from..=to).contains(ts))
                    .filter_map(|(ts, m)| StoredTouch::parse(m, *ts))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn memo(&self, conversion_id: Uuid) -> Result<Option<Memo>, StateError> {
        let mut inner = self.lock();
        Ok(inner
            .get(&self.keys.memo(conversion_id))
            .and_then(|m| serde_json::from_str(m).ok()))
    }

    async fn claim(&self, dedup_key: &str, conversion_id: Uuid) -> Result<bool, StateError> {
        let mut inner = self.lock();
        let key = self.keys.claim(dedup_key);
        let own = conversion_id.to_string();
        match inner.get(&key) {
            Some(holder) => Ok(holder == own),
            None => {
                inner.set(&key, own, Some(CLAIM_TTL));
                Ok(true)
            }
        }
    }

    async fn count(&self, key: &str) -> Result<u64, StateError> {
        let mut inner = self.lock();
        Ok(inner.get(key).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        let mut inner = self.lock();
        Ok(inner.get(key).map(str::to_string))
    }

    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, StateError> {
        let mut inner = self.lock();
        Ok(keys.iter().map(|k| inner.get(k).is_some()).collect())
    }

    async fn commit(
        &self,
        conversion_id: Uuid,
        memo: &Memo,
        effects: &[Effect],
    ) -> Result<CommitOutcome, StateError> {
        let mut inner = self.lock();
        let memo_key = self.keys.memo(conversion_id);
        if let Some(existing) = inner.get(&memo_key) {
            let m = serde_json::from_str(existing).map_err(|e| StateError(e.to_string()))?;
            return Ok(CommitOutcome::AlreadySettled(m));
        }
        for e in effects {
            if let Effect::CompareAndSet { key, expected, .. } = e {
                if inner.get(key).unwrap_or("") != expected {
                    return Ok(CommitOutcome::Conflict);
                }
            }
        }
        for e in effects {
            match e {
                Effect::CountOnce {
                    counter,
                    marker,
                    ttl,
                } => {
                    if inner.get(marker).is_none() {
                        inner.set(marker, "1".into(), Some(*ttl));
                        let n = inner
                            .get(counter)
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                            + 1;
                        inner.set(counter, n.to_string(), Some(*ttl));
                    }
                }
                Effect::SetIfAbsent { key, value, ttl } => {
                    if inner.get(key).is_none() {
                        inner.set(key, value.clone(), *ttl);
                    }
                }
                Effect::CompareAndSet {
                    key, value, ttl, ..
                } => inner.set(key, value.clone(), Some(*ttl)),
            }
        }
        let json = serde_json::to_string(memo).map_err(|e| StateError(e.to_string()))?;
        inner.set(&memo_key, json, Some(MEMO_TTL));
        Ok(CommitOutcome::Committed)
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Redis

/// Marks one click; see [`StateStore::record_clicks`]. The window test is the one of
/// [`dedup::in_preceding_window`]: a unique click in (ts − window, ts] makes a duplicate.
const CLICK_SCRIPT: &str = r"
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[8])
if ARGV[9] ~= '1' then return 0 end
local ts = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if w > 0 and redis.call('ZCOUNT', KEYS[1], '(' .. (ts - w), ts) > 0 then return 0 end
  redis.call('ZADD', KEYS[1], ts, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ts - 2 * w))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('ZADD', KEYS[2], ts, ARGV[5])
local n = redis.call('ZCARD', KEYS[2])
local max = tonumber(ARGV[10])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max - 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
";

/// Stores a memo with its effects; see [`StateStore::commit`].
/// Returns {0} committed, {1, memo} already settled, {2} conflict.
const COMMIT_SCRIPT: &str = r"
local memo = redis.call('GET', KEYS[1])
if memo then return {1, memo} end
local n = tonumber(ARGV[3])
for e = 0, n - 1 do
  local i = 4 + e * 5
  if ARGV[i] == 'cas' then
    local cur = redis.call('GET', ARGV[i + 1]) or ''
    if cur ~= ARGV[i + 4] then return {2} end
  end
end
for e = 0, n - 1 do
  local i = 4 + e * 5
  local t, k, v, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if t == 'count' then
    if redis.call('SET', v, '1', 'NX', 'PX', ttl) then
      redis.call('INCR', k)
      redis.call('PEXPIRE', k, ttl)
    end
  elseif t == 'setnx' then
    if ttl == '0' then redis.call('SET', k, v, 'NX') else redis.call('SET', k, v, 'NX', 'PX', ttl) end
  elseif t == 'cas' then
    redis.call('SET', k, v, 'PX', ttl)
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0}
";

/// Claims a dedup key; 1 when this conversion holds it.
const CLAIM_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then return 1 end
return 0
";

/// State in Redis, shared by every pipeline instance.
pub struct RedisState {
    conn: ConnectionManager,
    keys: Keys,
    click: redis::Script,
    commit: redis::Script,
    claim: redis::Script,
}

impl RedisState {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisState {
            conn,
            keys: Keys::new(prefix),
            click: redis::Script::new(CLICK_SCRIPT),
            commit: redis::Script::new(COMMIT_SCRIPT),
            claim: redis::Script::new(CLAIM_SCRIPT),
        }
    }

    /// Runs `script` (whose text is `source`) once per argument set in one pipeline (one
    /// round trip), loading it first if the server does not know it (after a restart).
    async fn eval_many(
        &self,
        script: &redis::Script,
        source: &'static str,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> Result<Vec<i64>, StateError> {
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            for (keys, args) in calls {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash())
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args);
                pipe.add_command(cmd);
            }
            match pipe.query_async::<Vec<i64>>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    let _: String = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(source)
                        .query_async(&mut conn)
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StateError("script could not be loaded".into()))
    }
}

#[async_trait]
impl StateStore for RedisState {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn record_clicks(&self, clicks: &[ClickMark]) -> Result<Vec<bool>, StateError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        let calls: Vec<(Vec<String>, Vec<String>)> = clicks
            .iter()
            .map(|c| {
                let window_ms = c.window_secs.saturating_mul(1000);
                let keys = vec![
                    self.keys.fingerprint(&c.fingerprint),
                    self.keys.journey(&c.program_id, c.visitor_id),
                    self.keys.click(c.click_id),
                ];
                let args = vec![
                    c.click_id.to_string(),
                    c.ts.timestamp_millis().to_string(),
                    window_ms.to_string(),
                    (window_ms.saturating_mul(2).max(3_600_000)).to_string(),
                    StoredTouch::member(c.click_id, &c.partner_id, &c.campaign),
                    ms(c.keep).to_string(),
                    c.visitor_id.to_string(),
                    ms(c.keep).to_string(),
                    if c.candidate { "1" } else { "0" }.to_string(),
                    MAX_JOURNEY.to_string(),
                ];
                (keys, args)
            })
            .collect();
        Ok(self
            .eval_many(&self.click, CLICK_SCRIPT, &calls)
            .await?
            .into_iter()
            .map(|v| v == 1)
            .collect())
    }

    async fn click_visitor(&self, click_id: Uuid) -> Result<Option<Uuid>, StateError> {
        Ok(self
            .get(&self.keys.click(click_id))
            .await?
            .and_then(|v| Uuid::parse_str(&v).ok()))
    }

    async fn journey(
        &self,
        program: &str,
        visitor: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredTouch>, StateError> {
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.journey(program, visitor))
            .arg(from.timestamp_millis())
            .arg(to.timestamp_millis())
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        // Scores are integer milliseconds well inside f64's exact range.
        Ok(raw
            .iter()
            .filter_map(|(m, s)| StoredTouch::parse(m, *s as i64))
            .collect())
    }

    async fn memo(&self, conversion_id: Uuid) -> Result<Option<Memo>, StateError> {
        Ok(self
            .get(&self.keys.memo(conversion_id))
            .await?
            .map(|m| {
                serde_json::from_str(&m).map_err(|e| StateError(format!("undecodable memo: {e}")))
            })
            .transpose()?)
    }

    async fn claim(&self, dedup_key: &str, conversion_id: Uuid) -> Result<bool, StateError> {
        let calls = vec![(
            vec![self.keys.claim(dedup_key)],
            vec![conversion_id.to_string(), ms(CLAIM_TTL).to_string()],
        )];
        Ok(self
            .eval_many(&self.claim, CLAIM_SCRIPT, &calls)
            .await?
            .first()
            == Some(&1))
    }

    async fn count(&self, key: &str) -> Result<u64, StateError> {
        Ok(self
            .get(key)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.exists(k);
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    async fn commit(
        &self,
        conversion_id: Uuid,
        memo: &Memo,
        effects: &[Effect],
    ) -> Result<CommitOutcome, StateError> {
        let json = serde_json::to_string(memo).map_err(|e| StateError(e.to_string()))?;
        let mut invocation = self.commit.key(self.keys.memo(conversion_id));
        invocation.arg(json).arg(ms(MEMO_TTL)).arg(effects.len());
        for e in effects {
            match e {
                Effect::CountOnce {
                    counter,
                    marker,
                    ttl,
                } => {
                    invocation
                        .arg("count")
                        .arg(counter)
                        .arg(marker)
                        .arg(ms(*ttl))
                        .arg("");
                }
                Effect::SetIfAbsent { key, value, ttl } => {
                    invocation
                        .arg("setnx")
                        .arg(key)
                        .arg(value)
                        .arg(ttl.map(ms).unwrap_or(0))
                        .arg("");
                }
                Effect::CompareAndSet {
                    key,
                    expected,
                    value,
                    ttl,
                } => {
                    invocation
                        .arg("cas")
                        .arg(key)
                        .arg(value)
                        .arg(ms(*ttl))
                        .arg(expected);
                }
            }
        }
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut self.conn.clone()).await?;
        let code: i64 = reply
            .first()
            .map(redis::from_redis_value_ref)
            .transpose()?
            .unwrap_or(-1);
        match code {
            0 => Ok(CommitOutcome::Committed),
            1 => {
                let raw: String = reply
                    .get(1)
                    .map(redis::from_redis_value_ref)
                    .transpose()?
                    .unwrap_or_default();
                let m = serde_json::from_str(&raw)
                    .map_err(|e| StateError(format!("undecodable memo: {e}")))?;
                Ok(CommitOutcome::AlreadySettled(m))
            }
            2 => Ok(CommitOutcome::Conflict),
            other => Err(StateError(format!("unexpected commit reply {other}"))),
        }
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as D;

    fn mark(id: u128, fp: &str, ts: DateTime<Utc>, candidate: bool) -> ClickMark {
        ClickMark {
            fingerprint: fp.into(),
            click_id: Uuid::from_u128(id),
            ts,
            window_secs: 3600,
            candidate,
            program_id: "acme".into(),
            visitor_id: Uuid::from_u128(1000),
            partner_id: "p".into(),
            campaign: "spring".into(),
            keep: Duration::from_secs(86_400),
        }
    }

    #[tokio::test]
    async fn memory_clicks_dedup_idempotently_and_build_journeys() {
        let s = MemoryState::new();
        let t = Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap();
        let marks = vec![
            mark(1, "a", t, true),
            mark(2, "a", t + D::minutes(10), true),
            mark(3, "a", t + D::minutes(61), true),
            mark(4, "b", t, false),
        ];
        assert_eq!(
            s.record_clicks(&marks).await.unwrap(),
            vec![true, false, true, false]
        );
        // A replay decides the same.
        assert_eq!(
            s.record_clicks(&marks).await.unwrap(),
            vec![true, false, true, false]
        );
        let j = s
            .journey(
                "acme",
                Uuid::from_u128(1000),
                t - D::days(1),
                t + D::days(1),
            )
            .await
            .unwrap();
        assert_eq!(
            j.iter().map(|t| t.click_id.as_u128()).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(j[0].campaign, "spring");
        assert_eq!(
            s.click_visitor(Uuid::from_u128(4)).await.unwrap(),
            Some(Uuid::from_u128(1000))
        );
    }

    #[tokio::test]
    async fn memory_commit_is_atomic_and_memoized() {
        let s = MemoryState::new();
        let memo = Memo {
            decision: Decision::uncredited(
                crate::engine::settle::ConversionStatus::Unattributed,
                rust_decimal::Decimal::ONE,
                "USD",
            ),
            campaigns: vec![],
        };
        let count = Effect::CountOnce {
            counter: "c".into(),
            marker: "m".into(),
            ttl: COUNT_TTL,
        };
        assert_eq!(
            s.commit(Uuid::from_u128(1), &memo, std::slice::from_ref(&count))
                .await
                .unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            s.commit(Uuid::from_u128(1), &memo, std::slice::from_ref(&count))
                .await
                .unwrap(),
            CommitOutcome::AlreadySettled(memo.clone())
        );
        assert_eq!(s.count("c").await.unwrap(), 1);
        let cas = Effect::CompareAndSet {
            key: "o".into(),
            expected: "old".into(),
            value: "new".into(),
            ttl: ORDER_TTL,
        };
        assert_eq!(
            s.commit(Uuid::from_u128(2), &memo, &[count, cas])
                .await
                .unwrap(),
            CommitOutcome::Conflict
        );
        assert_eq!(
            s.count("c").await.unwrap(),
            1,
            "nothing of a conflicting commit is applied"
        );
        assert!(s.claim("k", Uuid::from_u128(5)).await.unwrap());
        assert!(s.claim("k", Uuid::from_u128(5)).await.unwrap());
        assert!(!s.claim("k", Uuid::from_u128(6)).await.unwrap());
    }
}
