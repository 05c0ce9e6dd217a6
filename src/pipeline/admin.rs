//! The operational endpoints of the pipeline (`pipeline.admin_listen`) and of webhook
//! delivery (`webhooks.admin_listen`): `/healthz`, `/readyz` (every dependency
//! reachable) and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::store::StateStore;
use crate::http::{self, ApiError, Handler, HttpResponse};
use crate::sink::Sink;

/// How long `/readyz` waits for a probe: a dependency that hangs (a stopped server, a
/// partition dropping packets) is reported as such instead of hanging the answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Probe = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>> + Send + Sync,
>;

/// Serves health and metrics of a process whose readiness is its dependencies'.
pub struct ServiceAdmin {
    checks: Vec<(&'static str, Probe)>,
    metrics: PrometheusHandle,
}

impl ServiceAdmin {
    pub fn new(metrics: PrometheusHandle) -> Self {
        ServiceAdmin {
            checks: Vec::new(),
            metrics,
        }
    }

    /// `/readyz` also asks `probe`, reported under `name`.
    pub fn check<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Box::new(move || Box::pin(probe()))));
        self
    }

    /// The pipeline's: its state store, its sink and the webhook outbox, each not ready
    /// while the pipeline retries it ([`crate::retry::failing`]) or it fails a ping.
    pub fn pipeline(state: Arc<dyn StateStore>, sink: Arc<dyn Sink>) -> Self {
        Self::new(crate::metrics::install())
            .check("state", move || {
                let state = Arc::clone(&state);
                async move {
                    retrying("redis")?;
                    state.ping().await.map_err(|e| e.to_string())
                }
            })
            .check("sink", move || {
                let sink = Arc::clone(&sink);
                async move {
                    retrying("clickhouse")?;
                    sink.ping().await.map_err(|e| e.to_string())
                }
            })
            .check("outbox", || async { retrying("kafka") })
    }

    /// Whether every probe answered ok within [`PROBE_TIMEOUT`], and each one's answer.
    /// The probes run at once, so the answer takes at most one timeout.
    async fn readiness(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let answers = futures_util::future::join_all(self.checks.iter().map(|(_, probe)| {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, probe());
            async move {
                answer.await.unwrap_or_else(|_| {
                    Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))
                })
            }
        }))
        .await;
        let ready = answers.iter().all(Result::is_ok);
        let body = self
            .checks
            .iter()
            .zip(answers)
            .map(|((name, _), answer)| {
                let text = answer.err().unwrap_or_else(|| "ok".into());
                ((*name).to_string(), text.into())
            })
            .collect();
        (ready, body)
    }
}

/// Not ready while `dependency` is being retried.
pub fn retrying(dependency: &str) -> Result<(), String> {
    crate::retry::failing(dependency).map_or(Ok(()), Err)
}

impl Handler for ServiceAdmin {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> HttpResponse {
        match req.uri().path() {
            "/healthz" => http::text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                let (ready, body) = self.readiness().await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                http::json(status, &serde_json::Value::Object(body))
            }
            "/metrics" => http::text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            _ => ApiError::not_found("no such route").into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_is_not_ready_and_the_answer_still_comes() {
        let admin = ServiceAdmin::new(crate::metrics::install())
            .check("fine", || async { Ok(()) })
            .check("hung", || async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .check("refused", || async {
                Err("connection refused".to_string())
            });
        let started = tokio::time::Instant::now();
        let (ready, body) = admin.readiness().await;
        assert!(!ready);
        assert_eq!(body["fine"], "ok");
        assert_eq!(body["hung"], "no answer within 2 s");
        assert_eq!(body["refused"], "connection refused");
        // The probes ran at once: one timeout, not one per probe.
        assert_eq!(started.elapsed(), PROBE_TIMEOUT);
        let admin = ServiceAdmin::new(crate::metrics::install()).check("fine", || async { Ok(()) });
        assert!(admin.readiness().await.0);
    }
}
