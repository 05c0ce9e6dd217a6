//! Waiting out a dependency that is unavailable for a while: doubling pauses up to
//! [`MAX_PAUSE`], a warning and `touchline_pipeline_retries_total{dependency}` per
//! failure, until it answers, refuses for good, or the process is asked to stop.
//! Meanwhile [`failing`] tells readiness why the process is not getting on.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics as m;
use crate::shutdown::Shutdown;

/// The longest pause between two tries.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

/// How long a failure keeps its dependency reported as failing: longer than the
/// longest pause plus a Redis try cut short by its 5 s response timeout, so a
/// dependency that keeps failing is not reported ready between two tries.
pub const FAILING_FOR: Duration = Duration::from_secs(15);

/// The longest error kept for readiness (a server's message can be long).
const ERROR_CHARS: usize = 300;

/// The latest failure of each dependency retried in this process.
static FAILURES: Mutex<Vec<(&'static str, Instant, String)>> = Mutex::new(Vec::new());

fn record(dependency: &'static str, error: String) {
    let error: String = error.chars().take(ERROR_CHARS).collect();
    let mut all = FAILURES.lock().unwrap_or_else(PoisonError::into_inner);
    match all.iter_mut().find(|(d, ..)| *d == dependency) {
        Some(f) => (f.1, f.2) = (Instant::now(), error),
        None => all.push((dependency, Instant::now(), error)),
    }
}

/// Why `dependency` is not ready, when a try failed within [`FAILING_FOR`]. A server
/// can answer a ping and still refuse the work (Redis at its memory limit refuses
/// writes, not `PING`): readiness asks this besides the ping, so that a process
/// retrying for good does not look ready.
pub fn failing(dependency: &str) -> Option<String> {
    let all = FAILURES.lock().unwrap_or_else(PoisonError::into_inner);
    let (_, at, error) = all.iter().find(|(d, ..)| *d == dependency)?;
    describe(at.elapsed(), error)
}

fn describe(ago: Duration, error: &str) -> Option<String> {
    (ago < FAILING_FOR).then(|| format!("retrying (failed {} s ago): {error}", ago.as_secs()))
}

/// Doubling pauses from 100 ms up to [`MAX_PAUSE`], for loops that retry on their own
/// terms; each failure counts in `touchline_pipeline_retries_total{dependency}`.
#[derive(Debug)]
pub struct Backoff {
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            pause: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// After a success: the next failure waits the shortest pause again.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Counts a failure of `dependency` and waits the next pause.
    pub async fn failed(&mut self, dependency: &'static str) {
        metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => dependency).increment(1);
        self.wait().await;
    }

    /// Waits the next pause, uncounted.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
    }
}

/// Runs `op` until it succeeds (`Ok(Some)`), fails with an error `fatal` accepts
/// (`Err`), or fails after `shutdown` was fired (`Ok(None)`: the caller stops without
/// committing what depended on it). `what` names the dependency in logs, `dependency`
/// labels the metric.
pub async fn until_ok<T, E, F, Fut>(
    dependency: &'static str,
    what: &str,
    shutdown: &Shutdown,
    fatal: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) if shutdown.is_fired() => {
                tracing::warn!(error = %e, "{what} unavailable while stopping; left for the replay");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} unavailable, retrying");
                record(dependency, format!("{what}: {e}"));
                backoff.failed(dependency).await;
            }
        }
    }
}

/// Never fatal: every failure is worth another try.
pub fn never<E>(_: &E) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_ok_fatal_or_stopped() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let mut tries = 0;
        let r: Result<Option<u32>, String> = until_ok("redis", "store", &shutdown, never, || {
            tries += 1;
            let n = tries;
            async move {
                if n < 4 {
                    Err(format!("down {n}"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(Some(4)));
        let r: Result<Option<u32>, String> = until_ok(
            "redis",
            "store",
            &shutdown,
            |e: &String| e == "gone",
            || async { Err("gone".to_string()) },
        )
        .await;
        assert_eq!(r, Err("gone".to_string()));
        trigger.fire();
        let r: Result<Option<u32>, String> =
            until_ok("redis", "store", &shutdown, never, || async {
                Err("down".to_string())
            })
            .await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_reported_until_it_is_old() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        assert_eq!(failing("retry-test"), None);
        let mut tries = 0;
        let r: Result<Option<()>, String> =
            until_ok("retry-test", "the test's store", &shutdown, never, || {
                tries += 1;
                let n = tries;
                async move {
                    if n < 2 {
                        Err("OOM command not allowed".to_string())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!(r, Ok(Some(())));
        // A success does not clear it: a read may succeed while writes keep failing.
        let why = failing("retry-test").expect("reported");
        assert!(
            why.contains("the test's store: OOM command not allowed"),
            "{why}"
        );
        assert_eq!(failing("another"), None);
        let long = "x".repeat(1000);
        assert!(describe(Duration::from_secs(3), &long)
            .is_some_and(|w| w.starts_with("retrying (failed 3 s ago): x")));
        assert_eq!(describe(FAILING_FOR, "gone"), None);
        record("retry-test", long);
        let why = failing("retry-test").unwrap();
        assert!(why.len() < ERROR_CHARS + 40, "{}", why.len());
    }
}
