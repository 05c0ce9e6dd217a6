//! Where webhook events wait for delivery: one FIFO queue per (endpoint, partner), so
//! that a partner's events leave in ledger order while other partners and endpoints go
//! on. Durable in Redis (several delivery processes share the queues, a crash loses
//! nothing), in process memory for the embedded default; one trait, one test suite run
//! against both (`tests` below and `tests/webhook_delivery.rs`).
//!
//! A worker *claims* a due queue: the queue is leased to it under a token until the
//! lease ends, and only its head is sent. The attempt ends the claim: `done` drops the
//! head (acknowledged or given up), `again` schedules the next attempt. A worker that
//! dies leaves its claims to run out; a claim that ran out is refused at the end, so
//! two workers never both move a queue on.
//!
//! | key (`{t}` = `{prefix:wh}`, one hash tag) | type | TTL | written by |
//! |------------------------|--------|---------------|------------|
//! | `{t}:q:{queue}`        | list   | none (emptied by `done`) | `park` (tail), `done` (head) |
//! | `{t}:ready`            | zset   | none          | queue → next attempt ms (or lease end) |
//! | `{t}:heads`            | zset   | none          | queue → parked ms of its head (oldest undelivered) |
//! | `{t}:s:{queue}`        | hash   | none (deleted by `done`) | `claim` (token), `again` (attempts) |
//! | `{t}:k:{endpoint}:{event}` | string | [`KNOWN_TTL`] | `park`: the event was parked for the endpoint |
//!
//! `{queue}` is `{program}/{endpoint}/{partner}` (ids contain no `/`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, Value};
use uuid::Uuid;

use crate::kv::Redis;
use crate::kv::StateError;

/// How long an (endpoint, event) pair is remembered after it was parked: events
/// published again within it (an outbox replay after a crash, a repeated review or
/// payout) are not parked twice, so an acknowledged event is not sent again. Longer than
/// the default retention of a Kafka topic (7 days).
pub const KNOWN_TTL: Duration = Duration::from_secs(8 * 86_400);

const PARK: &str = include_str!("park.lua");
const CLAIM: &str = include_str!("claim.lua");
const SETTLE: &str = include_str!("settle.lua");

/// One endpoint's queue for one partner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    pub program_id: String,
    pub endpoint: String,
    /// Empty for events that concern no partner.
    pub partner_id: String,
}

impl QueueId {
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.program_id, self.endpoint, self.partner_id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '/');
        Some(QueueId {
            program_id: parts.next()?.to_string(),
            endpoint: parts.next()?.to_string(),
            partner_id: parts.next()?.to_string(),
        })
    }

    /// The endpoint's registry key, `{program}/{endpoint}`.
    pub fn endpoint_key(&self) -> String {
        crate::registry::Webhook::key_of(&self.program_id, &self.endpoint)
    }
}

/// One event parked for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// When it was parked: its 24 hours of retries count from here.
    pub parked_ms: i64,
    pub event_id: Uuid,
    /// `conversion.settled`, …
    pub event_type: String,
    /// The request body: the event's JSON exactly as the ledger published it.
    pub body: Vec<u8>,
}

impl Parked {
    /// `{parked ms} {event id} {type} {body}`: the ms first, for the scripts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {} ",
            self.parked_ms,
            self.event_id.simple(),
            self.event_type
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut parts = raw.splitn(4, |b| *b == b' ');
        let ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let id = Uuid::try_parse_ascii(parts.next()?).ok()?;
        let kind = std::str::from_utf8(parts.next()?).ok()?.to_string();
        Some(Parked {
            parked_ms: ms,
            event_id: id,
            event_type: kind,
            body: parts.next()?.to_vec(),
        })
    }
}

/// A queue leased to one worker, with the event at its head.
#[derive(Debug, Clone)]
pub struct Claim {
    pub queue: QueueId,
    pub token: String,
    pub head: Parked,
    /// Attempts made on the head before this one.
    pub attempts: u32,
    raw: Vec<u8>,
}

/// What waits: the oldest undelivered event and how many queues hold any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub oldest_parked_ms: Option<i64>,
    pub queues: u64,
}

/// Durable per-(endpoint, partner) queues of webhook events.
#[async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Parks events at the tail of their queues, in order, skipping any (endpoint,
    /// event) parked before; returns how many were parked.
    async fn park(&self, items: &[(QueueId, Parked)], now_ms: i64) -> Result<usize, StateError>;
    /// Leases up to `max` queues whose next attempt is due at `now_ms`, until
    /// `now_ms + lease_ms`.
    async fn claim(&self, now_ms: i64, lease_ms: u64, max: usize)
        -> Result<Vec<Claim>, StateError>;
    /// The head was acknowledged or given up: drop it; the next event is due at `at_ms`.
    /// `false`: the claim had run out and someone else holds the queue.
    async fn done(&self, claim: &Claim, at_ms: i64) -> Result<bool, StateError>;
    /// Keep the head for another attempt at `at_ms`, after `attempts` attempts.
    async fn again(&self, claim: &Claim, at_ms: i64, attempts: u32) -> Result<bool, StateError>;
    async fn backlog(&self) -> Result<Backlog, StateError>;
    async fn ping(&self) -> Result<(), StateError>;
}

fn marker(queue: &QueueId, event: Uuid) -> String {
    format!("{}:{}", queue.endpoint_key(), event.simple())
}

/// The queues in Redis (one server or a cluster: every key shares one hash tag).
pub struct RedisQueue {
    redis: Redis,
    base: String,
    park: redis::Script,
    claim: redis::Script,
    settle: redis::Script,
}

impl RedisQueue {
    pub fn new(redis: Redis, prefix: &str) -> Self {
        RedisQueue {
            redis,
            base: format!("{{{prefix}:wh}}:"),
            park: redis::Script::new(PARK),
            claim: redis::Script::new(CLAIM),
            settle: redis::Script::new(SETTLE),
        }
    }

    fn call(&self, script: &redis::Script) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1)
            .arg(format!("{}ready", self.base))
            .arg(&self.base);
        cmd
    }

    /// Runs a script call, loading the script first if the server lost it (a restart).
    async fn run(&self, cmd: Cmd, source: &str) -> Result<Value, StateError> {
        match self.redis.query::<Value>(&cmd).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let _: Value = self
                    .redis
                    .query(redis::cmd("SCRIPT").arg("LOAD").arg(source))
                    .await?;
                Ok(self.redis.query::<Value>(&cmd).await?)
            }
            r => Ok(r?),
        }
    }

    async fn settle(
        &self,
        claim: &Claim,
        op: &str,
        at_ms: i64,
        attempts: u32,
    ) -> Result<bool, StateError> {
        let mut cmd = self.call(&self.settle);
        cmd.arg(claim.queue.encode())
            .arg(&claim.token)
            .arg(&claim.raw)
            .arg(op)
            .arg(at_ms)
            .arg(attempts);
        let held: i64 = redis::from_redis_value(self.run(cmd, SETTLE).await?)?;
        Ok(held == 1)
    }
}

fn token_prefix(now_ms: i64) -> String {
    format!("{now_ms:x}-{:x}", Uuid::new_v4().as_u128() as u64)
}

#[async_trait]
impl DeliveryQueue for RedisQueue {
    async fn park(&self, items: &[(QueueId, Parked)], now_ms: i64) -> Result<usize, StateError> {
        let mut parked = 0;
        // Bounded calls: a script blocks the server while it runs.
        for chunk in items.chunks(200) {
            let mut cmd = self.call(&self.park);
            cmd.arg(now_ms).arg(KNOWN_TTL.as_millis() as u64);
            for (queue, event) in chunk {
                let mut event = event.clone();
                event.parked_ms = now_ms;
                cmd.arg(queue.encode())
                    .arg(marker(queue, event.event_id))
                    .arg(event.encode());
            }
            let n: i64 = redis::from_redis_value(self.run(cmd, PARK).await?)?;
            parked += n as usize;
        }
        Ok(parked)
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claim>, StateError> {
        let mut cmd = self.call(&self.claim);
        cmd.arg(now_ms)
            .arg(lease_ms)
            .arg(max)
            .arg(token_prefix(now_ms));
        let rows: Vec<(String, String, Vec<u8>, u32)> =
            redis::from_redis_value(self.run(cmd, CLAIM).await?)?;
        rows.into_iter()
            .map(|(queue, token, raw, attempts)| {
                let bad = || StateError(format!("unreadable webhook queue entry in {queue}"));
                Ok(Claim {
                    queue: QueueId::decode(&queue).ok_or_else(bad)?,
                    head: Parked::decode(&raw).ok_or_else(bad)?,
                    token,
                    attempts,
                    raw,
                })
            })
            .collect()
    }

    async fn done(&self, claim: &Claim, at_ms: i64) -> Result<bool, StateError> {
        self.settle(claim, "done", at_ms, 0).await
    }

    async fn again(&self, claim: &Claim, at_ms: i64, attempts: u32) -> Result<bool, StateError> {
        self.settle(claim, "again", at_ms, attempts).await
    }

    async fn backlog(&self) -> Result<Backlog, StateError> {
        let heads = format!("{}heads", self.base);
        let mut first = redis::cmd("ZRANGE");
        first.arg(&heads).arg(0).arg(0).arg("WITHSCORES");
        let mut count = redis::cmd("ZCARD");
        count.arg(&heads);
        let replies = self.redis.run(vec![first, count]).await?;
        let mut replies = replies.into_iter();
        let first: Vec<(String, f64)> =
            redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        let queues: u64 = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        Ok(Backlog {
            oldest_parked_ms: first.first().map(|(_, ms)| *ms as i64),
            queues,
        })
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: Value = self.redis.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// The queues in process memory (the embedded default), with the same semantics.
#[derive(Default)]
pub struct MemoryQueue {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    queues: HashMap<QueueId, VecDeque<Vec<u8>>>,
    /// (next attempt ms, queue), with `due` its index.
    ready: BTreeSet<(i64, QueueId)>,
    due: HashMap<QueueId, i64>,
    /// Token of the current claim and attempts on the head.
    states: HashMap<QueueId, (Option<String>, u32)>,
    known: std::collections::HashSet<String>,
    /// Markers in parking order, with when each is forgotten (one TTL for all).
    expiries: VecDeque<(i64, String)>,
    tokens: u64,
}

impl MemoryInner {
    fn schedule(&mut self, q: &QueueId, at: i64) {
        if let Some(old) = self.due.insert(q.clone(), at) {
            self.ready.remove(&(old, q.clone()));
        }
        self.ready.insert((at, q.clone()));
    }

    fn unschedule(&mut self, q: &QueueId) {
        if let Some(old) = self.due.remove(q) {
            self.ready.remove(&(old, q.clone()));
        }
    }

    fn holds(&self, claim: &Claim) -> bool {
        self.states
            .get(&claim.queue)
            .is_some_and(|(t, _)| t.as_deref() == Some(claim.token.as_str()))
            && self
                .queues
                .get(&claim.queue)
                .and_then(|l| l.front())
                .is_some_and(|h| *h == claim.raw)
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // Every critical section leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl DeliveryQueue for MemoryQueue {
    async fn park(&self, items: &[(QueueId, Parked)], now_ms: i64) -> Result<usize, StateError> {
        let mut m = self.lock();
        while m.expiries.front().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, key)) = m.expiries.pop_front() {
                m.known.remove(&key);
            }
        }
        let mut parked = 0;
        for (queue, event) in items {
            let key = marker(queue, event.event_id);
            if !m.known.insert(key.clone()) {
                continue;
            }
            m.expiries
                .push_back((now_ms + KNOWN_TTL.as_millis() as i64, key));
            let mut event = event.clone();
            event.parked_ms = now_ms;
            let list = m.queues.entry(queue.clone()).or_default();
            list.push_back(event.encode());
            if list.len() == 1 {
                m.schedule(queue, now_ms);
            }
            parked += 1;
        }
        Ok(parked)
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claim>, StateError> {
        let mut m = self.lock();
        let due: Vec<QueueId> = m
            .ready
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, q)| q.clone())
            .collect();
        let mut out = Vec::new();
        for q in due {
            let Some(raw) = m.queues.get(&q).and_then(|l| l.front()).cloned() else {
                m.unschedule(&q);
                m.queues.remove(&q);
                m.states.remove(&q);
                continue;
            };
            m.tokens += 1;
            let token = format!("m{}", m.tokens);
            m.schedule(&q, now_ms + lease_ms as i64);
            let state = m.states.entry(q.clone()).or_insert((None, 0));
            state.0 = Some(token.clone());
            let attempts = state.1;
            let head = Parked::decode(&raw)
                .ok_or_else(|| StateError(format!("unreadable webhook queue entry in {q:?}")))?;
            out.push(Claim {
                queue: q,
                token,
                head,
                attempts,
                raw,
            });
        }
        Ok(out)
    }

    async fn done(&self, claim: &Claim, at_ms: i64) -> Result<bool, StateError> {
        let mut m = self.lock();
        if !m.holds(claim) {
            return Ok(false);
        }
        m.states.remove(&claim.queue);
        let left = m.queues.get_mut(&claim.queue).map(|l| {
            l.pop_front();
            l.len()
        });
        if left.unwrap_or(0) > 0 {
            m.schedule(&claim.queue, at_ms);
        } else {
            m.queues.remove(&claim.queue);
            m.unschedule(&claim.queue);
        }
        Ok(true)
    }

    async fn again(&self, claim: &Claim, at_ms: i64, attempts: u32) -> Result<bool, StateError> {
        let mut m = self.lock();
        if !m.holds(claim) {
            return Ok(false);
        }
        m.states.insert(claim.queue.clone(), (None, attempts));
        m.schedule(&claim.queue, at_ms);
        Ok(true)
    }

    async fn backlog(&self) -> Result<Backlog, StateError> {
        let m = self.lock();
        let oldest = m
            .queues
            .values()
            .filter_map(|l| l.front().and_then(|h| Parked::decode(h)))
            .map(|p| p.parked_ms)
            .min();
        Ok(Backlog {
            oldest_parked_ms: oldest,
            queues: m.queues.len() as u64,
        })
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// The suite every [`DeliveryQueue`] passes; `tests/webhook_delivery.rs` runs it on Redis
/// and on a Redis Cluster.
#[cfg(any(test, feature = "testkit"))]
#[path = "queue_suite.rs"]
pub mod suite;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_queue_passes_the_suite() {
        suite::run(&MemoryQueue::new()).await;
    }

    #[test]
    fn encodings_round_trip() {
        let p = Parked {
            parked_ms: 1_700_000_000_123,
            event_id: Uuid::from_u128(42),
            event_type: "payout.created".into(),
            body: b"{\"a\": \"b c\"}".to_vec(),
        };
        assert_eq!(Parked::decode(&p.encode()), Some(p));
        let q = QueueId {
            program_id: "p".into(),
            endpoint: "e".into(),
            partner_id: String::new(),
        };
        assert_eq!(QueueId::decode(&q.encode()), Some(q));
        assert_eq!(Parked::decode(b"12 nonsense"), None);
    }
}
