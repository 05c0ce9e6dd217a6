//! The Redis key of each kind of state (the table of keys is in `store/mod.rs`), and the
//! commands that add to a tally and renew a key's TTL.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::renewals::RENEW_EVERY;
use super::{Cmds, RedisState};
use crate::pipeline::store::{ms, CapKey, Mark, OrderSlot, Tally, TierKey};

impl RedisState {
    pub(super) fn click(&self, id: Uuid) -> String {
        format!("{}:c:{id}", self.prefix)
    }

    pub(super) fn fingerprint(&self, fp: &str, part: &str) -> String {
        format!("{}:fp:{{{fp}}}:{part}", self.prefix)
    }

    pub(super) fn journey(&self, program: &str, visitor: Uuid) -> String {
        format!("{}:j:{program}:{visitor}", self.prefix)
    }

    pub(super) fn memo(&self, id: Uuid) -> String {
        format!("{}:m:{id}", self.prefix)
    }

    pub(super) fn claim(&self, key: &str) -> String {
        format!("{}:d:{key}", self.prefix)
    }

    pub(super) fn tally(&self, t: &Tally) -> String {
        let p = &self.prefix;
        match t {
            Tally::Volume {
                program,
                partner,
                month,
            } => format!("{p}:tv:{program}:{month}:{partner}"),
            Tally::Sales { program, partner } => format!("{p}:ts:{program}:{partner}"),
            Tally::Refunds { program, partner } => format!("{p}:tr:{program}:{partner}"),
            Tally::IpClicks {
                program,
                partner,
                ip_hash,
            } => format!("{p}:ti:{program}:{partner}:{ip_hash}"),
        }
    }

    pub(super) fn tier_figures(&self, key: &TierKey) -> String {
        let TierKey {
            program,
            partner,
            period,
        } = key;
        format!("{}:tf:{program}:{period}:{partner}", self.prefix)
    }

    pub(super) fn tier_moves(&self, program: &str, partner: &str) -> String {
        format!("{}:tm:{program}:{partner}", self.prefix)
    }

    pub(super) fn tier_done(&self, program: &str) -> String {
        format!("{}:tb:{program}", self.prefix)
    }

    pub(super) fn cap(&self, key: &CapKey) -> String {
        let CapKey {
            program,
            partner,
            period,
        } = key;
        format!("{}:cap:{program}:{partner}:{period}", self.prefix)
    }

    pub(super) fn first_sale(&self, program: &str, customer: &str) -> String {
        format!("{}:fs:{program}:{customer}", self.prefix)
    }

    pub(super) fn order(&self, program: &str, order: &str, slot: OrderSlot) -> String {
        format!("{}:o:{{{program}:{order}}}{}", self.prefix, slot.suffix())
    }

    pub(super) fn refunds(&self, program: &str, order: &str, slot: OrderSlot) -> String {
        format!("{}:r", self.order(program, order, slot))
    }

    pub(super) fn due(&self) -> String {
        format!("{}:due", self.prefix)
    }

    pub(super) fn frontiers_key(&self) -> String {
        format!("{}:wm", self.prefix)
    }

    /// Adds a mark to a tally (set once) and keeps the key its keep.
    pub(super) fn tally_cmds(&self, pipe: &mut Cmds, t: &Tally, mark: Mark, now: Instant) {
        let key = self.tally(t);
        // Score 0, member the mark: members sort as marks, so one ZLEXCOUNT counts
        // up to a mark, ties of a millisecond included. The empty member sorts before
        // every mark and is never trimmed: a trim cannot delete the key, so it is never
        // created again by a write whose TTL renewal this or another process skipped.
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(0)
            .arg("")
            .arg(0)
            .arg(mark.encode());
        self.renew(pipe, key, t.keep(), now);
    }

    /// Renews `key`'s TTL to `keep` (and a little) unless this process did lately.
    pub(super) fn renew(&self, pipe: &mut Cmds, key: String, keep: Duration, now: Instant) {
        if self.renewals.due(&key, now) {
            pipe.cmd("PEXPIRE").arg(key).arg(ms(keep + RENEW_EVERY));
        }
    }
}
