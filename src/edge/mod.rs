//! The HTTP edge (SPEC §3): referral redirects, conversion intake, the registry API and
//! the operational endpoints.

pub mod admin;
mod analytics;
pub(crate) mod api;
mod assets;
mod audit;
pub mod conversions;
pub mod disputes;
#[cfg(test)]
mod hostile;
pub mod keys;
pub mod lifecycle;
pub mod partner;
mod postbacks;
mod promo;
pub mod redirect;
pub mod routes;
mod stripe;
mod tiers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use self::routes::{Access, Found, Op, Route, Router};
use crate::access::Budgets;
use crate::bus::EventBus;
use crate::config::Config;
use crate::http::{self, ApiError, Handler, HttpResponse};
use crate::metrics as m;
use crate::registry::{KeyUses, Registry};
use crate::shutdown::Shutdown;

/// Everything a request handler needs; shared by all connections.
pub struct Edge {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    pub(crate) bus: Arc<dyn EventBus>,
    /// The ledger behind the review and payout API; `None` where there is none to read.
    pub(crate) ledger: Option<Arc<crate::ledger::Ledger>>,
    /// Where the analytics API reads (SPEC §9.2); `None` where there is nothing to read.
    pub(crate) analytics: Option<Arc<dyn crate::analytics::Source>>,
    metrics: PrometheusHandle,
    /// SHA-256 state after absorbing the salt, cloned per click.
    salted: Sha256,
    router: Router,
    budgets: Budgets,
    key_uses: KeyUses,
    audit: audit::AuditTrail,
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
        let budgets = Budgets::new(config.access.rate_per_key, config.access.burst);
        Edge {
            router: Router::new(),
            budgets,
            key_uses: KeyUses::default(),
            audit: audit::AuditTrail::start(None),
            config,
            registry,
            bus,
            ledger: None,
            analytics: None,
            metrics,
            salted,
        }
    }

    /// Records the keyed API's writes in `log` (`api_audit`). Starts a task: call it
    /// within the runtime.
    pub fn with_audit(mut self, log: Option<Arc<dyn crate::sink::AuditLog>>) -> Self {
        self.audit = audit::AuditTrail::start(log);
        self
    }

    /// Serves the review and payout API over `ledger`.
    pub fn with_ledger(mut self, ledger: Option<Arc<crate::ledger::Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Serves the analytics API over `source`.
    pub fn with_analytics(mut self, source: Option<Arc<dyn crate::analytics::Source>>) -> Self {
        self.analytics = source;
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
        http::serve(listener, Arc::clone(&self), shutdown, drain).await;
        self.audit.close(drain).await;
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
        match self.router.find(req.method(), req.uri().path()) {
            Found::Route(route, params) => (
                route.template,
                self.dispatch(route, params, req, peer).await,
            ),
            Found::Method(template, allow) => (
                template,
                ApiError::method_not_allowed(allow).into_response(),
            ),
            Found::None => (
                "other",
                ApiError::not_found("no such route").into_response(),
            ),
        }
    }

    async fn dispatch(
        &self,
        route: &'static Route,
        params: Vec<(String, String)>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> HttpResponse {
        match (route.access, route.op) {
            (Access::Roles(roles), _) => self.keyed(route, roles, params, req).await,
            (_, Op::Redirect) => {
                let code = params.first().map(|(_, v)| v.as_str()).unwrap_or_default();
                self.redirect(&req, code, peer)
            }
            (_, Op::Conversions) => self.conversions(req).await,
            (_, Op::StripeEvents) => {
                let program = params.first().map(|(_, v)| v.clone()).unwrap_or_default();
                self.stripe_events(req, &program).await
            }
            (_, Op::TlJs) => assets::serve(&assets::TL_JS, req.headers()),
            (_, Op::Dashboard) => assets::serve(&assets::DASHBOARD_HTML, req.headers()),
            (_, Op::DashboardJs) => assets::serve(&assets::DASHBOARD_JS, req.headers()),
            (_, Op::DashboardCss) => assets::serve(&assets::DASHBOARD_CSS, req.headers()),
            (_, Op::Readyz) => self.ready().await,
            (_, Op::Metrics) => {
                self.record_gauges();
                http::text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            (_, Op::Healthz) => http::text(StatusCode::OK, "text/plain", "ok\n"),
            _ => ApiError::internal("a route without a handler").into_response(),
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
        204 => "204",
        302 => "302",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        429 => "429",
        503 => "503",
        c if c >= 500 => "5xx",
        _ => "4xx",
    }
}

/// What an edge reads and writes besides the bus: the ledger behind the review,
/// payout and partner APIs, and the log of the keyed API's writes.
#[derive(Default)]
pub struct Books {
    pub ledger: Option<Arc<crate::ledger::Ledger>>,
    pub audit: Option<Arc<dyn crate::sink::AuditLog>>,
    pub analytics: Option<Arc<dyn crate::analytics::Source>>,
}

/// Starts an edge on `listener` with the given parts and returns its task.
pub fn spawn(
    config: Config,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
    books: Books,
    listener: TcpListener,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let edge = Edge::new(config, registry, bus, m::install())
        .with_ledger(books.ledger)
        .with_analytics(books.analytics)
        .with_audit(books.audit);
    let edge = Arc::new(edge);
    tokio::spawn(edge.serve(listener, shutdown, Duration::from_secs(10)))
}
