//! The pipeline's operational endpoints on `pipeline.admin_listen`: `/healthz`,
//! `/readyz` (state store and sink reachable) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::store::StateStore;
use crate::http::{self, ApiError, Handler, HttpResponse};
use crate::sink::Sink;

/// Serves the pipeline's health and metrics.
pub struct PipelineAdmin {
    pub state: Arc<dyn StateStore>,
    pub sink: Arc<dyn Sink>,
    pub metrics: PrometheusHandle,
}

impl Handler for PipelineAdmin {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> HttpResponse {
        match req.uri().path() {
            "/healthz" => http::text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => {
                let state = self.state.ping().await;
                let sink = self.sink.ping().await;
                let body = serde_json::json!({
                    "state": state.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
                    "sink": sink.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
                });
                let status = if state.is_ok() && sink.is_ok() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                http::json(status, &body)
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
