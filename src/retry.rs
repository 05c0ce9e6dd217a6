//! Waiting out a dependency that is unavailable for a while: doubling pauses up to
//! [`MAX_PAUSE`], a warning and `touchline_pipeline_retries_total{dependency}` per
//! failure, until it answers, refuses for good, or the process is asked to stop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::metrics as m;
use crate::shutdown::Shutdown;

/// The longest pause between two tries.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

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
    let mut pause = Duration::from_millis(100);
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
                metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => dependency)
                    .increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
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
}
