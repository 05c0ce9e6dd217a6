//! The operational endpoints of the pipeline (`pipeline.admin_listen`) and of webhook
//! delivery (`webhooks.admin_listen`): `/healthz`, `/readyz` (every dependency
//! reachable) and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::store::StateStore;
use crate::http::{self, ApiError, Handler, HttpResponse};
use crate::sink::Sink;

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
                let mut body = serde_json::Map::new();
                let mut ready = true;
                for (name, probe) in &self.checks {
                    let answer = probe().await;
                    ready &= answer.is_ok();
                    body.insert(
                        (*name).to_string(),
                        answer.err().unwrap_or_else(|| "ok".into()).into(),
                    );
                }
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
