//! Request budgets per key (SPEC §9): a token bucket each, `access.rate_per_key` a
//! second with bursts of `access.burst`. In process: each edge counts its own share
//! (behind a load balancer a key gets the budget on every edge it reaches).
//!
//! Written here rather than taken from a crate: one bucket is a few lines, and the
//! `Retry-After` a refusal carries comes straight from the bucket's arithmetic.

use std::time::Instant;

use dashmap::DashMap;

/// Buckets are dropped once this many keys are known and the bucket is full again:
/// a bound on memory whatever the number of keys presented.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every key that made a request.
pub struct Budgets {
    rate: f64,
    burst: f64,
    buckets: DashMap<String, Bucket>,
}

impl Budgets {
    /// `rate` requests a second, up to `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        Budgets {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Takes one request from `key`'s budget at `now`; `Err(seconds)` until it may
    /// try again when the budget is spent.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u32> {
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets
                .retain(|_, b| self.refill(*b, now).tokens < self.burst);
        }
        let mut entry = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let mut b = self.refill(*entry, now);
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u32)
        };
        *entry = b;
        result
    }

    fn refill(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.rate).min(self.burst),
            at: now.max(b.at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_then_a_wait() {
        let b = Budgets::new(10, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.take("k", t0).is_ok()));
        assert_eq!(b.take("k", t0), Err(1));
        // Other keys have their own bucket.
        assert!(b.take("other", t0).is_ok());
        // A tenth of a second brings one request back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take("k", t1).is_ok());
        assert!(b.take("k", t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take("k", t2).is_ok()));
        assert!(b.take("k", t2).is_err());
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let b = Budgets::new(1, 1);
        let t0 = Instant::now();
        assert!(b.take("k", t0).is_ok());
        assert_eq!(b.take("k", t0), Err(1));
        let slow = Budgets::new(1, 1);
        slow.take("k", t0).unwrap();
        assert!(slow.take("k", t0 + Duration::from_millis(999)).is_err());
        assert!(slow.take("k", t0 + Duration::from_millis(1001)).is_ok());
    }
}
