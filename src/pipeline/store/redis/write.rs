//! The commands of each write: set-once memos, claims and orders, tallies, first
//! sales, refunds and hold ends, each key with its TTL.

use std::time::Instant;

use super::{Cmds, RedisState};
use crate::pipeline::store::{
    ms, Write, CAP_ENTRIES_KEPT, CLAIM_TTL, MEMO_TTL, ORDER_TTL, TIER_FIGURES_TTL,
};

impl RedisState {
    /// The commands of one write; a memo's is the first (its reply is the memo that
    /// was there before).
    pub(super) fn write_cmds(&self, w: &Write, pipe: &mut Cmds, now: Instant) {
        match w {
            Write::Memo {
                conversion_id,
                json,
            } => {
                // Set once; the reply is what was there before (Redis ≥ 7.0).
                pipe.cmd("SET")
                    .arg(self.memo(*conversion_id))
                    .arg(json)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(ms(MEMO_TTL));
            }
            Write::Claim { key, holder } => {
                pipe.cmd("SET")
                    .arg(self.claim(key))
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms(CLAIM_TTL));
            }
            Write::Tally { tally, mark } => self.tally_cmds(pipe, tally, *mark, now),
            Write::FirstSale {
                program,
                customer,
                mark,
                json,
                ttl,
            } => {
                let key = self.first_sale(program, customer);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("NX")
                    .arg(mark.ms)
                    .arg(format!("{}{json}", mark.id_hex()));
                match ttl {
                    Some(t) => self.renew(pipe, key, *t, now),
                    // A lifetime plan follows the first sale for good.
                    None => {
                        pipe.cmd("PERSIST").arg(&key);
                    }
                }
            }
            Write::Order {
                program,
                order,
                slot,
                json,
            } => {
                pipe.cmd("SET")
                    .arg(self.order(program, order, *slot))
                    .arg(json)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms(ORDER_TTL));
            }
            Write::Refund {
                program,
                order,
                slot,
                mark,
                json,
            } => {
                let key = self.refunds(program, order, *slot);
                pipe.cmd("HSET").arg(&key).arg(mark.encode()).arg(json);
                self.renew(pipe, key, ORDER_TTL, now);
            }
            Write::Due { due_ms, json } => {
                pipe.cmd("ZADD").arg(self.due()).arg(*due_ms).arg(json);
            }
            Write::DueDone { json } => {
                pipe.cmd("ZREM").arg(self.due()).arg(json);
            }
            Write::TierFigures {
                key,
                conversion_id,
                json,
            } => {
                let key = self.tier_figures(key);
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(conversion_id.to_string())
                    .arg(json);
                self.renew(pipe, key, TIER_FIGURES_TTL, now);
            }
            Write::TierMove {
                program,
                partner,
                from_ms,
                json,
            } => {
                // Set once, then read back: the reply says which move stands.
                let key = self.tier_moves(program, partner);
                pipe.cmd("HSETNX").arg(&key).arg(*from_ms).arg(json);
                pipe.cmd("HGET").arg(&key).arg(*from_ms);
            }
            Write::TierDone {
                program,
                boundary_ms,
            } => {
                pipe.cmd("ZADD")
                    .arg(self.tier_done(program))
                    .arg("GT")
                    .arg(*boundary_ms)
                    .arg("done");
            }
            Write::CapTotal { key, mark, total } => {
                let key_name = self.cap(key);
                pipe.cmd("ZADD")
                    .arg(&key_name)
                    .arg(0)
                    .arg(format!("{}{total}", mark.bound("")));
                // Only the latest entries are read; the rest go.
                pipe.cmd("ZREMRANGEBYRANK")
                    .arg(&key_name)
                    .arg(0)
                    .arg(-(CAP_ENTRIES_KEPT as i64) - 1);
                match key.ttl() {
                    Some(t) => self.renew(pipe, key_name, t, now),
                    None => {
                        pipe.cmd("PERSIST").arg(&key_name);
                    }
                }
            }
        }
    }
}
