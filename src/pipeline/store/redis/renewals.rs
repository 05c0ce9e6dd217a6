//! TTL renewals: each key's TTL refreshed by its first write in a period, not by every
//! write, remembered by a keyed digest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A key's TTL is renewed by the first write to it in this long; the TTL set is the
/// key's keep plus this, so the key outlives every write by its keep.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Keys this process remembers renewing at once. As 128-bit digests they fit one
/// table of 2^20 slots (~18 MB); past it, renewals start over (more TTL commands,
/// never fewer).
pub(super) const MAX_RENEWALS: usize = 900_000;

/// The keys this process renewed the TTL of in the current period of [`RENEW_EVERY`].
/// A tally, a fingerprint or a journey takes a write per event, and a TTL command
/// after each was a fifth of all Redis commands; one per key and period keeps the
/// same bound. The set is dropped when its period ends, so a key found in it was
/// renewed less than [`RENEW_EVERY`] ago. Forgotten whenever Redis fails, so a key a
/// lost write or a restart left without its TTL gets it at the next write.
///
/// Keys are remembered by a keyed 128-bit digest: a key string per entry cost ~100
/// bytes, and the click bench writes ~500,000 keys a minute, which overflowed a map
/// of 100,000 strings every few seconds. Two digests colliding in a period (odds
/// ~n²/2^129) would skip one renewal.
#[derive(Default)]
pub(super) struct Renewals {
    hashers: (std::hash::RandomState, std::hash::RandomState),
    period: Mutex<Period>,
}

#[derive(Default)]
pub(super) struct Period {
    started: Option<Instant>,
    renewed: std::collections::HashSet<u128, BuildDigest>,
}

impl Renewals {
    pub(super) fn digest(&self, key: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Period> {
        self.period.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` needs its TTL renewed now; if so it counts as renewed.
    pub(super) fn due(&self, key: &str, now: Instant) -> bool {
        let digest = self.digest(key);
        let mut period = self.lock();
        period.roll(now);
        period.renewed.insert(digest)
    }

    /// Whether `key` needs its TTL renewed now (it does not count as renewed yet: for
    /// a script that renews only what it writes, see [`Renewals::renewed`]).
    pub(super) fn pending(&self, key: &str, now: Instant) -> bool {
        let digest = self.digest(key);
        let period = self.lock();
        period.over(now) || !period.renewed.contains(&digest)
    }

    /// `key`'s TTL was renewed at `at` or after.
    pub(super) fn renewed(&self, key: &str, at: Instant) {
        let digest = self.digest(key);
        let mut period = self.lock();
        period.roll(at);
        // Renewed before this period began, perhaps: not remembered, renewed again.
        if period.started.is_some_and(|s| s <= at) {
            period.renewed.insert(digest);
        }
    }

    pub(super) fn forget(&self) {
        let mut period = self.lock();
        period.renewed.clear();
        period.started = None;
    }
}

impl Period {
    pub(super) fn over(&self, now: Instant) -> bool {
        self.started
            .is_none_or(|t| now.saturating_duration_since(t) >= RENEW_EVERY)
    }

    /// Starts a new period if this one is over or full.
    pub(super) fn roll(&mut self, now: Instant) {
        if self.over(now) || self.renewed.len() >= MAX_RENEWALS {
            self.renewed.clear();
            self.started = Some(now);
        }
    }
}

/// Digests are uniformly random already: their low bits index the table.
#[derive(Default, Clone, Copy)]
pub(super) struct BuildDigest;

pub(super) struct DigestHasher(u64);

impl std::hash::BuildHasher for BuildDigest {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128s are hashed (write_u128); any other input still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}
