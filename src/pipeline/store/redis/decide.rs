//! Deciding candidate clicks: the `decide_clicks.lua` calls for a batch and the journeys
//! written beside them on a cluster.

use std::time::{Duration, Instant};

use redis::{Cmd, Value};

use super::renewals::RENEW_EVERY;
use super::{Cmds, RedisState};
use crate::pipeline::store::{ms, Decide, StateError, MAX_JOURNEY};

/// A script call deciding clicks, with each click's journey and candidate set.
pub(super) struct DecideCall {
    pub(super) cmd: Cmd,
    keys: Vec<(String, String)>,
}

impl RedisState {
    /// One script call deciding `clicks`, with their journeys when `journeys`; the
    /// keys whose TTLs it may renew, for [`RedisState::decided`].
    pub(super) fn decide_call(
        &self,
        clicks: &[Decide],
        journeys: bool,
        now: Instant,
    ) -> DecideCall {
        let mut cmd = redis::cmd("EVALSHA");
        let stride = if journeys { 3 } else { 2 };
        cmd.arg(self.decide.get_hash()).arg(clicks.len() * stride);
        let mut keys = Vec::with_capacity(clicks.len());
        for d in clicks {
            let fp = &d.candidate.fingerprint;
            let candidates = self.fingerprint(fp, "c");
            let journey = self.journey(&d.program_id, d.visitor_id);
            cmd.arg(&candidates).arg(self.fingerprint(fp, "p"));
            if journeys {
                cmd.arg(&journey);
            }
            keys.push((journey, candidates));
        }
        cmd.arg(MAX_JOURNEY).arg(stride);
        // A TTL to renew, or none when this process renewed the key lately.
        let ttl = |key: &str, keep: Duration| {
            if self.renewals.pending(key, now) {
                ms(keep + RENEW_EVERY).to_string()
            } else {
                String::new()
            }
        };
        for (d, (journey, candidates)) in clicks.iter().zip(&keys) {
            let c = &d.candidate;
            cmd.arg(c.mark.ms)
                .arg(c.mark.id_hex())
                .arg(c.window_ms)
                .arg(c.keep_ms())
                // No member: not a touchpoint.
                .arg(if d.touchpoint {
                    d.touch.member()
                } else {
                    String::new()
                })
                .arg(ttl(journey, d.keep))
                .arg(ttl(candidates, Duration::from_millis(c.keep_ms())));
        }
        DecideCall { cmd, keys }
    }

    /// Verdicts from a script's answer, noting the TTLs it renewed.
    pub(super) fn decided(
        &self,
        call: &DecideCall,
        answer: &Value,
        now: Instant,
    ) -> Result<Vec<bool>, StateError> {
        let flags: Vec<i64> = redis::from_redis_value_ref(answer)?;
        for (f, (journey, candidates)) in flags.iter().zip(&call.keys) {
            if f & 2 != 0 {
                self.renewals.renewed(journey, now);
            }
            if f & 4 != 0 {
                self.renewals.renewed(candidates, now);
            }
        }
        Ok(flags.iter().map(|f| f & 1 == 1).collect())
    }

    /// Adds a unique click to its journey, keeping the newest MAX_JOURNEY.
    pub(super) fn journey_cmds(&self, pipe: &mut Cmds, d: &Decide, now: Instant) {
        let key = self.journey(&d.program_id, d.visitor_id);
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(d.touch.ts.timestamp_millis())
            .arg(d.touch.member());
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-(MAX_JOURNEY as i64) - 1);
        self.renew(pipe, key, d.keep, now);
    }
}
