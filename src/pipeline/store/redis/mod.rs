//! Pipeline state in Redis (one server or a cluster), shared by every pipeline
//! instance. Each call is one round trip: a pipeline on one server, commands sent at
//! once on a cluster. The only script, `decide_clicks.lua`, decides a batch of clicks
//! with their journeys on one server; on a cluster it runs per click on the keys of one
//! fingerprint, which share a hash tag, and journeys are written beside it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{Cmd, Value};
use uuid::Uuid;

use crate::kv::Redis;

use super::{ms, Answer, ClickRecord, Decide, Mark, Read, StateError, StateStore, Write};

mod decide;
mod keys;
mod read;
mod renewals;
mod write;

use decide::DecideCall;
use renewals::Renewals;

const DECIDE_CLICKS: &str = include_str!("decide_clicks.lua");
/// Clicks decided per script call.
const DECIDE_CHUNK: usize = 500;
/// State in Redis.
pub struct RedisState {
    redis: Redis,
    prefix: String,
    decide: redis::Script,
    renewals: Renewals,
}

impl RedisState {
    pub fn new(redis: Redis, prefix: &str) -> Self {
        RedisState {
            redis,
            prefix: prefix.to_string(),
            decide: redis::Script::new(DECIDE_CLICKS),
            renewals: Renewals::default(),
        }
    }

    /// A Redis failure. A batch may have been cut short, or the server restarted and
    /// lost its last writes: the TTLs this process remembers setting may not be there,
    /// so renewals start over.
    fn failed(&self, e: redis::RedisError) -> StateError {
        self.renewals.forget();
        e.into()
    }

    async fn run(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, StateError> {
        self.redis.run(cmds).await.map_err(|e| self.failed(e))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        self.redis.query(cmd).await.map_err(|e| self.failed(e))
    }

    /// Runs the script calls `build` makes. If the server lost its scripts (a
    /// restart), loads them and runs calls built again: what it lost with its scripts
    /// it may have lost of our TTLs, so the renewals are forgotten first and the
    /// calls renew again. Deciding twice is harmless. On a cluster SCRIPT LOAD
    /// reaches every node.
    async fn run_scripts<T>(
        &self,
        build: impl Fn() -> (Vec<Cmd>, T),
    ) -> Result<(Vec<Value>, T), StateError> {
        let (cmds, made) = build();
        match self.redis.run(cmds).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.renewals.forget();
                let _: Value = self
                    .query(redis::cmd("SCRIPT").arg("LOAD").arg(DECIDE_CLICKS))
                    .await?;
                let (cmds, made) = build();
                Ok((self.run(cmds).await?, made))
            }
            Err(e) => Err(self.failed(e)),
            Ok(r) => Ok((r, made)),
        }
    }
}

/// Commands gathered for one round trip.
#[derive(Default)]
struct Cmds(Vec<Cmd>);

impl Cmds {
    fn cmd(&mut self, name: &str) -> &mut Cmd {
        self.0.push(redis::cmd(name));
        self.0.last_mut().expect("just pushed")
    }
}

fn text(v: &Value) -> Result<Option<String>, StateError> {
    Ok(redis::from_redis_value_ref::<Option<String>>(v)?)
}

fn int(v: &Value) -> Result<u64, StateError> {
    Ok(redis::from_redis_value_ref::<u64>(v)?)
}

#[async_trait]
impl StateStore for RedisState {
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError> {
        let mut pipe = Cmds(Vec::with_capacity(clicks.len() * 3));
        let now = Instant::now();
        for c in clicks {
            pipe.cmd("SET")
                .arg(self.click(c.click_id))
                .arg(c.visitor_id.to_string())
                .arg("PX")
                .arg(ms(c.keep));
            if let Some(cand) = &c.candidate {
                let key = self.fingerprint(&cand.fingerprint, "c");
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("NX")
                    .arg(cand.mark.ms)
                    .arg(cand.mark.id_hex());
                self.renew(&mut pipe, key, Duration::from_millis(cand.keep_ms()), now);
            }
            if let Some(ip) = &c.ip {
                self.tally_cmds(&mut pipe, ip, c.mark, now);
            }
        }
        self.run(pipe.0).await?;
        Ok(())
    }

    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        let cluster = self.redis.is_cluster();
        // One server: script calls of DECIDE_CHUNK clicks with their journeys, in one
        // round trip, none holding the server for long. A cluster: one call per click
        // on its fingerprint's slot.
        let build = || {
            let now = Instant::now();
            let calls: Vec<DecideCall> = if cluster {
                clicks
                    .chunks(1)
                    .map(|one| self.decide_call(one, false, now))
                    .collect()
            } else {
                clicks
                    .chunks(DECIDE_CHUNK)
                    .map(|chunk| self.decide_call(chunk, true, now))
                    .collect()
            };
            let cmds = calls.iter().map(|c| c.cmd.clone()).collect();
            (cmds, (calls, now))
        };
        let (answers, (calls, now)) = self.run_scripts(build).await?;
        let mut verdicts = Vec::with_capacity(clicks.len());
        for (call, answer) in calls.iter().zip(&answers) {
            verdicts.extend(self.decided(call, answer, now)?);
        }
        if verdicts.len() != clicks.len() {
            return Err(StateError(format!(
                "the click script answered {} verdicts for {} clicks",
                verdicts.len(),
                clicks.len()
            )));
        }
        if cluster {
            let mut pipe = Cmds::default();
            let now = Instant::now();
            for (d, _) in clicks
                .iter()
                .zip(&verdicts)
                .filter(|(d, unique)| **unique && d.touchpoint)
            {
                self.journey_cmds(&mut pipe, d, now);
            }
            self.run(pipe.0).await?;
        }
        Ok(verdicts)
    }

    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = ids
            .iter()
            .map(|id| {
                let mut get = redis::cmd("GET");
                get.arg(self.memo(*id));
                get
            })
            .collect();
        self.run(cmds).await?.iter().map(text).collect()
    }

    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self.read_pass(reads, true).await?;
        // Groups whose marks did not fit one answer are counted read by read.
        let again: Vec<usize> = (0..reads.len()).filter(|i| out[*i].is_none()).collect();
        if !again.is_empty() {
            let subset: Vec<Read> = again.iter().map(|i| reads[*i].clone()).collect();
            for (i, answer) in again.into_iter().zip(self.read_pass(&subset, false).await?) {
                out[i] = answer;
            }
        }
        out.into_iter()
            .map(|a| a.ok_or_else(|| StateError("a count read went unanswered".into())))
            .collect()
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Cmds::default();
        let now = Instant::now();
        // The reply that answers each write: a memo's first command (what was there
        // before), a tier move's read-back (what stands, compared with what was sent).
        let mut answered_at = Vec::with_capacity(writes.len());
        for w in writes {
            let start = pipe.0.len();
            answered_at.push(match w {
                Write::Memo { .. } => Some((start, None)),
                Write::TierMove { json, .. } => Some((start + 1, Some(json.as_str()))),
                _ => None,
            });
            self.write_cmds(w, &mut pipe, now);
        }
        let replies = self.run(pipe.0).await?;
        answered_at
            .into_iter()
            .map(|at| {
                let Some((i, sent)) = at else {
                    return Ok(None);
                };
                let reply = replies
                    .get(i)
                    .ok_or_else(|| StateError("fewer replies than writes".into()))?;
                let stored = text(reply)?;
                Ok(match sent {
                    Some(sent) => stored.filter(|s| s != sent),
                    None => stored,
                })
            })
            .collect()
    }

    async fn frontiers(&self) -> Result<HashMap<String, Mark>, StateError> {
        let raw: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.frontiers_key()))
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((k, Mark::decode(&v)?)))
            .collect())
    }

    async fn publish(&self, frontiers: &[(String, Mark)]) -> Result<(), StateError> {
        if frontiers.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.frontiers_key());
        for (k, m) in frontiers {
            cmd.arg(k).arg(m.encode());
        }
        let _: u64 = self.query(&cmd).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_last_a_period_and_only_what_was_renewed_in_it() {
        let r = Renewals::default();
        let t0 = Instant::now();
        let later = |secs| t0 + Duration::from_secs(secs);
        assert!(r.due("a", t0));
        assert!(!r.due("a", later(59)));
        assert!(r.pending("b", later(1)));
        // Asked, not renewed: still pending.
        assert!(r.pending("b", later(2)));
        r.renewed("b", later(2));
        assert!(!r.pending("b", later(3)));
        // The period is over: everything is due again.
        assert!(r.pending("b", later(60)));
        assert!(r.due("a", later(60)));
        // A renewal from before the current period began is not remembered.
        r.renewed("c", later(30));
        assert!(r.pending("c", later(61)));
        r.forget();
        assert!(r.pending("a", later(61)));
        assert!(r.due("a", later(61)));
    }
}
