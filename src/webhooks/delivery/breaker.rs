//! When to try an endpoint again: exponential backoff with jitter per event, and a
//! circuit breaker per endpoint so that a dead endpoint does not take the workers of
//! the others.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

/// Uniform in `0..n`, from the OS's randomness (jitter only).
pub(super) fn random_below(n: u64) -> u64 {
    (Uuid::new_v4().as_u128() as u64) % n.max(1)
}

/// The wait before attempt `attempts + 1`: `base · 2^(attempts − 1)` capped at `max`,
/// less a random part of up to half, so that endpoints that failed together do not
/// all come back at once.
pub fn backoff(base_ms: u64, max_ms: u64, attempts: u32, random: impl FnOnce(u64) -> u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(40);
    let full = base_ms.saturating_mul(1u64 << exp).min(max_ms);
    full - random(full / 2 + 1).min(full / 2)
}

/// What the breaker says about an attempt on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Go,
    /// Open, resting time over: this attempt is the probe.
    Probe,
    /// Open: wait until then without an attempt.
    Wait(i64),
}

#[derive(Debug, Default, Clone)]
struct Breaker {
    failures: u32,
    /// Times opened in a row (the rest doubles with each).
    opened: u32,
    open_until: i64,
    probing: bool,
}

/// Circuit breakers per endpoint (`{program}/{endpoint}`), in process: each delivery
/// process learns on its own that an endpoint is down, after a few attempts.
pub struct Breakers {
    threshold: u32,
    open_ms: u64,
    max_open_ms: u64,
    states: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(threshold: u32, open_ms: u64, max_open_ms: u64) -> Self {
        Breakers {
            threshold,
            open_ms,
            max_open_ms: max_open_ms.max(open_ms),
            states: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, endpoint: &str, now: i64) -> Admit {
        let mut states = self.lock();
        let Some(b) = states.get_mut(endpoint) else {
            return Admit::Go;
        };
        if b.opened == 0 {
            Admit::Go
        } else if now < b.open_until {
            Admit::Wait(b.open_until)
        } else if b.probing {
            // The probe is out: the others wait for its answer (at most a timeout).
            Admit::Wait(now + 1_000)
        } else {
            b.probing = true;
            Admit::Probe
        }
    }

    pub fn record(&self, endpoint: &str, ok: bool, now: i64) {
        let mut states = self.lock();
        if ok {
            states.remove(endpoint);
            return;
        }
        let b = states.entry(endpoint.to_string()).or_default();
        b.failures = b.failures.saturating_add(1);
        if b.opened > 0 || b.failures >= self.threshold {
            b.opened = b.opened.saturating_add(1);
            let rest = self
                .open_ms
                .saturating_mul(1u64 << (b.opened - 1).min(30))
                .min(self.max_open_ms);
            b.open_until = now + rest as i64;
            b.probing = false;
        }
    }

    /// Endpoints whose circuit is open now.
    pub fn open(&self) -> usize {
        self.lock().values().filter(|b| b.opened > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_below() {
        let none = |_| 0;
        assert_eq!(backoff(1_000, 60_000, 1, none), 1_000);
        assert_eq!(backoff(1_000, 60_000, 2, none), 2_000);
        assert_eq!(backoff(1_000, 60_000, 6, none), 32_000);
        assert_eq!(backoff(1_000, 60_000, 7, none), 60_000);
        assert_eq!(backoff(1_000, 60_000, 200, none), 60_000);
        // The most jitter takes half off, never more.
        assert_eq!(backoff(1_000, 60_000, 1, |n| n - 1), 500);
        assert_eq!(backoff(1_000, 60_000, 1, |_| u64::MAX), 500);
        for attempts in 1..20 {
            let w = backoff(1_000, 3_600_000, attempts, random_below);
            let full = (1_000u64 << (attempts - 1)).min(3_600_000);
            assert!(w >= full / 2 && w <= full, "{attempts}: {w}");
        }
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let b = Breakers::new(3, 1_000, 8_000);
        let e = "acme/crm";
        assert_eq!(b.admit(e, 0), Admit::Go);
        b.record(e, false, 0);
        b.record(e, false, 1);
        assert_eq!(b.admit(e, 2), Admit::Go);
        assert_eq!(b.open(), 0);
        b.record(e, false, 2);
        assert_eq!(b.open(), 1);
        assert_eq!(b.admit(e, 500), Admit::Wait(1_002));
        // Other endpoints are not concerned.
        assert_eq!(b.admit("acme/erp", 500), Admit::Go);
        // One probe when the rest is over; the others keep waiting for its answer.
        assert_eq!(b.admit(e, 1_002), Admit::Probe);
        assert_eq!(b.admit(e, 1_003), Admit::Wait(2_003));
        // The probe fails: twice as long.
        b.record(e, false, 1_100);
        assert_eq!(b.admit(e, 1_200), Admit::Wait(3_100));
        assert_eq!(b.admit(e, 3_100), Admit::Probe);
        b.record(e, false, 3_100);
        assert_eq!(b.admit(e, 3_200), Admit::Wait(7_100));
        // Capped.
        for t in [7_100, 20_000, 40_000] {
            assert_eq!(b.admit(e, t), Admit::Probe);
            b.record(e, false, t);
        }
        assert_eq!(b.admit(e, 40_001), Admit::Wait(48_000));
        // A success closes it.
        assert_eq!(b.admit(e, 48_000), Admit::Probe);
        b.record(e, true, 48_000);
        assert_eq!(b.admit(e, 48_001), Admit::Go);
        assert_eq!(b.open(), 0);
    }
}
