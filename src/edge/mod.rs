//! The HTTP edge (SPEC §3): referral redirects, conversion intake, the registry API and
//! the operational endpoints.

pub mod admin;
pub mod conversions;
#[cfg(test)]
mod hostile;
pub mod lifecycle;
pub mod redirect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::bus::EventBus;
use crate::config::Config;
use crate::http::{self, ApiError, Handler, HttpResponse};
use crate::metrics as m;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// Everything a request handler needs; shared by all connections.
pub struct Edge {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    pub(crate) bus: Arc<dyn EventBus>,
    /// The ledger behind the review and payout API; `None` where there is none to read.
    pub(crate) ledger: Option<Arc<crate::ledger::Ledger>>,
    metrics: PrometheusHandle,
    /// SHA-256 state after absorbing the salt, cloned per click.
    salted: Sha256,
}

impl Edge {
    pub fn new(
        config: Config,
        registry: Arc<Registry>,
        bus: Arc<dyn EventBus>,
        metrics: PrometheusHandle,
    ) -> Self {
        let mut salted = Sha256::new();
        salted.update(config.edge.ip_salt.as_bytes());
        Edge {
            config,
            registry,
            bus,
            ledger: None,
            metrics,
            salted,
        }
    }

    /// Serves the review and payout API over `ledger`.
    pub fn with_ledger(mut self, ledger: Option<Arc<crate::ledger::Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// `ip_hash`: hex SHA-256 of (salt ‖ ip), first 32 characters.
    pub fn ip_hash(&self, ip: &str) -> String {
        let mut h = self.salted.clone();
        h.update(ip.as_bytes());
        let digest = h.finalize();
        hex::encode(&digest[..16])
    }

    /// Serves until `shutdown`, then flushes buffered click events (up to `drain`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: Shutdown,
        drain: Duration,
    ) {
        let bus = Arc::clone(&self.bus);
        http::serve(listener, self, shutdown, drain).await;
        if let Err(e) = bus.flush(drain).await {
            tracing::error!(error = %e, "click events left unflushed at shutdown");
        } else {
            tracing::info!("click events flushed");
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (&'static str, HttpResponse) {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["r", code] => {
                let resp = match method {
                    Method::GET | Method::HEAD => self.redirect(&req, code, peer),
                    _ => ApiError::method_not_allowed("GET, HEAD").into_response(),
                };
                ("/r/{code}", resp)
            }
            ["api", "v1", "conversions"] => {
                let resp = match method {
                    Method::POST => self.conversions(req).await,
                    _ => ApiError::method_not_allowed("POST").into_response(),
                };
                ("/api/v1/conversions", resp)
            }
            ["api", "v1", rest @ ..] => {
                let route = match rest {
                    ["programs", _] => "/api/v1/programs/{id}",
                    ["partners", _] => "/api/v1/partners/{id}",
                    ["links"] => "/api/v1/links",
                    ["links", _] => "/api/v1/links/{code}",
                    ["commissions"] => "/api/v1/commissions",
                    ["commissions", "review"] => "/api/v1/commissions/review",
                    ["payouts"] => "/api/v1/payouts",
                    ["payouts", _] => "/api/v1/payouts/{id}",
                    _ => "other",
                };
                let owned: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                (route, self.admin(req, &owned).await)
            }
            ["healthz"] => ("/healthz", http::text(StatusCode::OK, "text/plain", "ok\n")),
            ["readyz"] => ("/readyz", self.ready().await),
            ["metrics"] => {
                self.record_gauges();
                (
                    "/metrics",
                    http::text(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        self.metrics.render(),
                    ),
                )
            }
            _ => (
                "other",
                ApiError::not_found("no such route").into_response(),
            ),
        }
    }

    async fn ready(&self) -> HttpResponse {
        let bus = self.bus.ping().await;
        let registry = self.registry.store().ping().await;
        let body = serde_json::json!({
            "broker": bus.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
            "registry": registry.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        });
        let status = if bus.is_ok() && registry.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        http::json(status, &body)
    }

    fn record_gauges(&self) {
        metrics::gauge!(m::EDGE_CLICK_BUFFERED).set(self.bus.buffered() as f64);
    }
}

impl Handler for Edge {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let method = method_label(req.method());
        let (route, resp) = self.route(req, peer).await;
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => status_label(resp.status()))
            .increment(1);
        metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route)
            .record(started.elapsed().as_secs_f64());
        resp
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        302 => "302",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        503 => "503",
        c if c >= 500 => "5xx",
        _ => "4xx",
    }
}

/// Starts an edge on `listener` with the given parts and returns its task.
pub fn spawn(
    config: Config,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    ledger: Option<Arc<crate::ledger::Ledger>>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let edge = Arc::new(Edge::new(config, registry, bus, m::install()).with_ledger(ledger));
    tokio::spawn(edge.serve(listener, shutdown, Duration::from_secs(10)))
}
