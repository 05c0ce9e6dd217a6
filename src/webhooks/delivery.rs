//! Delivery of webhook events (SPEC §3.6): `touchline webhooks`, and a task of `serve`.
//!
//! Two loops share a [`DeliveryQueue`]:
//! - **intake** reads the outbox as a consumer group, parks each event once per
//!   subscribed endpoint in the (endpoint, partner) queue, and only then commits the
//!   offsets. A crash before the commit replays the events; the queue knows them and
//!   parks nothing twice.
//! - **dispatch** claims due queues (at most `webhooks.concurrency` at once) and sends
//!   each one's head: a POST of the event's JSON signed like §3.2 with the endpoint's
//!   secret, `X-Touchline-Event-Id` the event id. Every attempt is written to
//!   `webhook_deliveries` *before* the queue moves on, so an acknowledged event is in the
//!   log before it leaves its queue; a crash in between sends it again (at least once)
//!   and its second acknowledgement collapses into the first under FINAL.
//!
//! A failed attempt (no 2xx within `webhooks.timeout_ms`) is retried with exponential
//! backoff and jitter until `give_up_after_secs` after the event was parked, then given
//! up and recorded. One partner's events for one endpoint go one at a time, in ledger
//! order; a circuit breaker per endpoint keeps a dead endpoint from taking the workers
//! of the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::queue::{Claim, DeliveryQueue, Parked, QueueId};
use crate::access::ssrf::{self, GuardedResolver};
use crate::bus::{BusError, Delivered, EventSource, Position};
use crate::config::WebhooksConfig;
use crate::metrics as m;
use crate::registry::{Registry, Webhook, WebhookEventType};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::sink::{DeliveryLog, DeliveryRow};

/// The header carrying the event id, the same on every attempt.
pub const EVENT_ID_HEADER: &str = "x-touchline-event-id";
/// The header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "x-touchline-event-type";

/// Outbox messages taken per intake round.
const INTAKE_BATCH: usize = 500;
/// Most bytes of a receiver's answer kept in a failure's `error`.
const ERROR_TEXT: usize = 256;
/// How long delivery rows wait for others to share their insert.
const LOG_LINGER: Duration = Duration::from_millis(20);
const LOG_BATCH: usize = 1000;

/// Why delivery stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the outbox consumer failed: {0}")]
    Bus(#[from] BusError),
    #[error("cannot start the HTTP client: {0}")]
    Client(String),
}

/// The part of an outbox event intake needs; the body is delivered as published.
#[derive(Debug, Deserialize)]
struct Head {
    id: Uuid,
    #[serde(rename = "type")]
    kind: WebhookEventType,
    program_id: String,
    partner_id: String,
}

type HttpsClient<R = GaiResolver> =
    Client<hyper_rustls::HttpsConnector<HttpConnector<R>>, Full<Bytes>>;

/// The HTTP clients of deliveries: one for the operator's endpoints, one whose
/// resolver refuses the operator's network, for endpoints that keys registered.
struct Clients {
    open: HttpsClient,
    guarded: HttpsClient<GuardedResolver>,
}

impl Clients {
    fn new(cfg: &WebhooksConfig) -> Result<Self, DeliveryError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let guarded = GuardedResolver::new(cfg.allowed_private_hosts.clone());
        Ok(Clients {
            open: http_client(timeout, HttpConnector::new())?,
            guarded: http_client(timeout, HttpConnector::new_with_resolver(guarded))?,
        })
    }
}

/// Why a restricted endpoint's URL may not be requested as it is: a literal address of
/// the operator's network never reaches the resolver.
fn refused_literal(hook: &Webhook, exceptions: &[String]) -> Option<String> {
    let host = ssrf::host_of(&hook.url)?;
    if ssrf::allowed(&host, exceptions) {
        return None;
    }
    ssrf::literal(&host).map(|why| format!("refused: {host} is {why} of the operator's network"))
}

/// An HTTP client of deliveries: http and https (the system's roots), HTTP/1.1,
/// connections kept for reuse, redirects never followed.
fn http_client<R>(
    timeout: Duration,
    mut http: HttpConnector<R>,
) -> Result<HttpsClient<R>, DeliveryError>
where
    R: tower_service::Service<hyper_util::client::legacy::connect::dns::Name>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Future: Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        // A machine without CA certificates (a minimal image) still delivers to http
        // endpoints, and the embedded demo still starts; https attempts fail, recorded.
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: https webhook endpoints will fail until ca-certificates is installed");
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| DeliveryError::Client(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(https))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Uniform in `0..n`, from the OS's randomness (jitter only).
fn random_below(n: u64) -> u64 {
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

/// How an attempt ends in the log: `Failed` keeps the event for another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acknowledged,
    Failed,
    GivenUp,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Acknowledged => "acknowledged",
            Outcome::Failed => "failed",
            Outcome::GivenUp => "given_up",
        }
    }
}

/// How one attempt ended.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Empty when acknowledged.
    error: String,
    /// For the failure metric: status, timeout, connect, io.
    reason: &'static str,
}

/// Bounded, single-line text of an error or an answer.
fn bounded(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_TEXT)
        .collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A row waiting for its insert, and who waits for it.
type Pending = (DeliveryRow, oneshot::Sender<bool>);

/// Writes delivery rows in batches: attempts finishing together share one insert. A
/// failing log is retried until it heals, with `down` raised meanwhile so that no new
/// attempt starts: an acknowledgement that cannot be recorded must not be followed by
/// more of them. Once `stop` fires, a failing write gives up: its attempts leave their
/// queues as they are and are made again by the next process.
async fn write_rows(
    log: Arc<dyn DeliveryLog>,
    mut rx: mpsc::Receiver<Pending>,
    down: Arc<AtomicBool>,
    stop: Shutdown,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LOG_LINGER);
        tokio::pin!(linger);
        while batch.len() < LOG_BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let rows: Vec<DeliveryRow> = batch.iter().map(|(r, _)| r.clone()).collect();
        let mut backoff = Backoff::default();
        let ok = loop {
            match log.record(&rows).await {
                Ok(()) => {
                    down.store(false, Ordering::SeqCst);
                    break true;
                }
                Err(e) if stop.is_fired() => {
                    tracing::warn!(error = %e, rows = rows.len(), "delivery log unavailable while stopping; those attempts will be made again");
                    break false;
                }
                Err(e) => {
                    down.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, rows = rows.len(), "delivery log unavailable, retrying; no new attempts meanwhile");
                    backoff.failed("clickhouse").await;
                }
            }
        };
        for (_, tx) in batch {
            let _ = tx.send(ok);
        }
    }
}

/// The delivery component.
pub struct Delivery {
    cfg: WebhooksConfig,
    registry: Arc<Registry>,
    queue: Arc<dyn DeliveryQueue>,
    clients: Clients,
    breakers: Breakers,
    rows: mpsc::Sender<Pending>,
    /// The delivery log is failing: no new attempts until it heals.
    log_down: Arc<AtomicBool>,
}

impl Delivery {
    /// Runs intake from `source` and dispatch until `shutdown`; attempts in flight end
    /// (each within the timeout) and are recorded before it returns.
    pub async fn run(
        cfg: WebhooksConfig,
        registry: Arc<Registry>,
        queue: Arc<dyn DeliveryQueue>,
        log: Arc<dyn DeliveryLog>,
        source: Box<dyn EventSource>,
        shutdown: Shutdown,
    ) -> Result<(), DeliveryError> {
        // Dispatch stops when intake does, for whatever reason: a process that can no
        // longer take events must not look busy delivering the last ones forever.
        let (stop_trigger, stop) = crate::shutdown::channel();
        let (tx, rx) = mpsc::channel(LOG_BATCH * 4);
        let log_down = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_rows(log, rx, Arc::clone(&log_down), stop.clone()));
        let delivery = Arc::new(Delivery {
            clients: Clients::new(&cfg)?,
            breakers: Breakers::new(cfg.breaker_failures, cfg.breaker_open_ms, cfg.retry_max_ms),
            cfg,
            registry,
            queue,
            rows: tx,
            log_down,
        });
        let gauges = tokio::spawn(Arc::clone(&delivery).watch_backlog(stop.clone()));
        let dispatch = tokio::spawn(Arc::clone(&delivery).dispatch(stop));
        let intake = delivery.intake(source, shutdown).await;
        stop_trigger.fire();
        let dispatched = dispatch.await;
        let _ = gauges.await;
        // The last holder of the row sender: the writer ends once it wrote what is left.
        drop(delivery);
        let _ = writer.await;
        intake?;
        if let Err(e) = dispatched {
            tracing::error!(error = %e, "webhook dispatch task failed");
        }
        Ok(())
    }

    /// Outbox → queues, then commit.
    async fn intake(
        &self,
        mut source: Box<dyn EventSource>,
        mut shutdown: Shutdown,
    ) -> Result<(), DeliveryError> {
        let mut bus_backoff = Backoff::default();
        while !shutdown.is_fired() {
            let batch = tokio::select! {
                b = source.next_batch(INTAKE_BATCH, Duration::from_millis(200)) => b,
                _ = shutdown.wait() => return Ok(()),
            };
            let batch = match batch {
                Ok(b) => {
                    bus_backoff.reset();
                    b
                }
                Err(BusError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "outbox unavailable, retrying");
                    bus_backoff.failed("kafka").await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                continue;
            }
            let items = self.fan_out(&batch).await;
            let queue = &self.queue;
            let parked = crate::retry::until_ok(
                "redis",
                "webhook queue",
                &shutdown,
                crate::retry::never,
                || queue.park(&items, now_ms()),
            )
            .await;
            // Stopping before parking is safe: nothing was committed, the events come
            // back with the next process.
            let Ok(Some(parked)) = parked else {
                return Ok(());
            };
            metrics::counter!(m::WEBHOOK_EVENTS_TOTAL, "result" => "parked")
                .increment(parked as u64);
            metrics::counter!(m::WEBHOOK_EVENTS_TOTAL, "result" => "known")
                .increment((items.len() - parked) as u64);
            let mut next: HashMap<(crate::bus::Topic, i32), i64> = HashMap::new();
            for d in &batch {
                let at = next.entry((d.topic, d.partition)).or_insert(0);
                *at = (*at).max(d.offset + 1);
            }
            let positions: Vec<Position> = next
                .into_iter()
                .map(|((topic, partition), next_offset)| Position {
                    topic,
                    partition,
                    next_offset,
                })
                .collect();
            // A commit that fails is not retried: the next one covers it, and a replay
            // parks nothing twice.
            match source.commit(&positions).await {
                Ok(()) => metrics::counter!(m::WEBHOOK_COMMITS_TOTAL).increment(1),
                Err(BusError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "outbox commit failed; the next one covers it")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The (queue, event) pairs of a batch, in order: one per subscribed endpoint.
    async fn fan_out(&self, batch: &[Delivered]) -> Vec<(QueueId, Parked)> {
        let mut refreshed = false;
        let mut items = Vec::new();
        for d in batch {
            let head: Head = match serde_json::from_slice(&d.payload) {
                Ok(h) => h,
                Err(e) => {
                    // Only touchline writes the outbox: this is a bug or a stranger.
                    tracing::error!(error = %e, partition = d.partition, offset = d.offset,
                        "unreadable outbox event skipped");
                    metrics::counter!(m::WEBHOOK_EVENTS_TOTAL, "result" => "unreadable")
                        .increment(1);
                    continue;
                }
            };
            let mut hooks = self.subscribers(&head);
            if hooks.is_empty() && !refreshed {
                // The ledger published it because some endpoint subscribed: this copy of
                // the registry may not know that endpoint yet.
                refreshed = true;
                if let Err(e) = self.registry.refresh().await {
                    tracing::warn!(error = %e, "registry refresh failed");
                }
                hooks = self.subscribers(&head);
            }
            if hooks.is_empty() {
                metrics::counter!(m::WEBHOOK_EVENTS_TOTAL, "result" => "unsubscribed").increment(1);
            }
            for hook in hooks {
                items.push((
                    QueueId {
                        program_id: head.program_id.clone(),
                        endpoint: hook.name.clone(),
                        partner_id: head.partner_id.clone(),
                    },
                    Parked {
                        parked_ms: 0,
                        event_id: head.id,
                        event_type: head.kind.as_str().to_string(),
                        body: d.payload.clone(),
                    },
                ));
            }
        }
        items
    }

    fn subscribers(&self, head: &Head) -> Vec<Arc<Webhook>> {
        let mut hooks: Vec<Arc<Webhook>> = self
            .registry
            .webhooks(&head.program_id)
            .into_iter()
            .filter(|w| w.events.contains(&head.kind) && w.concerns(&head.partner_id))
            .collect();
        hooks.sort_by(|a, b| a.name.cmp(&b.name));
        hooks
    }

    /// How long a claim holds: the attempt, then writing its row. A crashed worker's
    /// queues wait this long before another worker takes them. (While the log is down
    /// nobody starts attempts, so a claim outliving its lease is not taken meanwhile.)
    fn lease_ms(&self) -> u64 {
        self.cfg.timeout_ms + 15_000
    }

    /// Claims due queues and sends their heads, at most `concurrency` at once.
    async fn dispatch(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut inflight = JoinSet::new();
        let poll = Duration::from_millis(self.cfg.poll_ms);
        let mut backoff = Backoff::default();
        while !shutdown.is_fired() {
            while inflight.try_join_next().is_some() {}
            let free = self.cfg.concurrency.saturating_sub(inflight.len());
            let mut short = true;
            if free > 0 && !self.log_down.load(Ordering::SeqCst) {
                match self.queue.claim(now_ms(), self.lease_ms(), free).await {
                    Ok(claims) => {
                        backoff.reset();
                        short = claims.len() < free;
                        for claim in claims {
                            inflight.spawn(Arc::clone(&self).attempt(claim));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook queue unavailable, retrying");
                        backoff.failed("redis").await;
                        continue;
                    }
                }
            }
            if short {
                // Nothing more is due (or every worker is busy): wait for a worker to
                // finish, or for the next look.
                tokio::select! {
                    _ = inflight.join_next(), if !inflight.is_empty() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
        // Attempts in flight end within the timeout and are recorded.
        while inflight.join_next().await.is_some() {}
    }

    /// One attempt on a claimed queue's head.
    async fn attempt(self: Arc<Self>, claim: Claim) {
        let event = &claim.head;
        let endpoint_key = claim.queue.endpoint_key();
        let Some(hook) = self.endpoint(&claim).await else {
            // Removed, or no longer subscribed: nothing to deliver to.
            self.finish(
                &claim,
                None,
                Outcome::GivenUp,
                0,
                "the endpoint no longer subscribes to this event",
                0,
            )
            .await;
            return;
        };
        let admitted = self.breakers.admit(&endpoint_key, now_ms());
        if let Admit::Wait(until) = admitted {
            // No attempt: the event keeps its attempts and its place.
            let at = until + random_below(500) as i64;
            if let Err(e) = self.queue.again(&claim, at, claim.attempts).await {
                tracing::warn!(error = %e, "webhook queue unavailable; the lease will run out");
            }
            return;
        }
        let started = Instant::now();
        let answer = self.send(&hook, event).await;
        let took = started.elapsed();
        metrics::histogram!(m::WEBHOOK_REQUEST_DURATION_SECONDS).record(took.as_secs_f64());
        let now = now_ms();
        let acknowledged = answer.error.is_empty();
        self.breakers.record(&endpoint_key, acknowledged, now);
        let outcome = if acknowledged {
            Outcome::Acknowledged
        } else {
            metrics::counter!(m::WEBHOOK_FAILURES_TOTAL, "reason" => answer.reason).increment(1);
            let waited = now.saturating_sub(event.parked_ms);
            if waited >= (self.cfg.give_up_after_secs as i64).saturating_mul(1000) {
                Outcome::GivenUp
            } else {
                Outcome::Failed
            }
        };
        let duration_ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        self.finish(
            &claim,
            Some(&hook.url),
            outcome,
            answer.status,
            &answer.error,
            duration_ms,
        )
        .await;
    }

    /// The endpoint of a claim, if it still subscribes to the event's type.
    async fn endpoint(&self, claim: &Claim) -> Option<Arc<Webhook>> {
        let find = || {
            self.registry
                .webhooks(&claim.queue.program_id)
                .into_iter()
                .find(|w| w.name == claim.queue.endpoint)
                .filter(|w| w.concerns(&claim.queue.partner_id))
                .filter(|w| w.events.iter().any(|e| e.as_str() == claim.head.event_type))
        };
        if let Some(hook) = find() {
            return Some(hook);
        }
        // Make sure before giving an event up for it.
        let _ = self.registry.refresh().await;
        find()
    }

    /// Records an attempt, then moves the queue on (or schedules the next attempt).
    async fn finish(
        &self,
        claim: &Claim,
        url: Option<&str>,
        outcome: Outcome,
        status: u16,
        error: &str,
        duration_ms: u32,
    ) {
        let attempt = claim.attempts + 1;
        let at = Utc::now();
        let row = DeliveryRow {
            program_id: claim.queue.program_id.clone(),
            endpoint: claim.queue.endpoint.clone(),
            event_id: claim.head.event_id,
            event_type: claim.head.event_type.clone(),
            partner_id: claim.queue.partner_id.clone(),
            outcome: outcome.as_str(),
            seq: if outcome == Outcome::Failed {
                attempt
            } else {
                0
            },
            attempt,
            status_code: status,
            error: bounded(error),
            duration_ms,
            url: url.unwrap_or_default().to_string(),
            attempted_at: at,
            attempted_at_ms: crate::sink::rows::millis(at),
        };
        let (tx, rx) = oneshot::channel();
        if self.rows.send((row, tx)).await.is_err() || !rx.await.unwrap_or(false) {
            // Not recorded (stopping while the log is down): leave the queue as it is;
            // the next process makes the attempt again once the lease runs out, so no
            // acknowledged event is missing from the log.
            tracing::warn!(event = %claim.head.event_id, "delivery attempt not recorded; it will be made again");
            return;
        }
        metrics::counter!(m::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => outcome.as_str()).increment(1);
        let now = now_ms();
        let moved = if outcome == Outcome::Failed {
            let wait = backoff(
                self.cfg.retry_base_ms,
                self.cfg.retry_max_ms,
                attempt,
                random_below,
            );
            self.queue.again(claim, now + wait as i64, attempt).await
        } else {
            self.queue.done(claim, now).await
        };
        match moved {
            Ok(true) => {}
            Ok(false) => tracing::warn!(queue = %claim.queue.encode(),
                "a webhook claim ran out during its attempt; another worker has the queue"),
            Err(e) => tracing::warn!(error = %e, queue = %claim.queue.encode(),
                "webhook queue unavailable; the attempt is made again when the lease runs out"),
        }
    }

    /// POSTs the event; an empty `error` means acknowledged (2xx in time).
    async fn send(&self, hook: &Webhook, event: &Parked) -> Answer {
        let signed = crate::signature::sign(&hook.secret, Utc::now().timestamp(), &event.body);
        let request = Request::post(hook.url.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("touchline-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(crate::signature::HEADER, signed)
            .header(EVENT_ID_HEADER, event.event_id.to_string())
            .header(EVENT_TYPE_HEADER, event.event_type.as_str())
            .body(Full::new(Bytes::from(event.body.clone())));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Answer {
                    status: 0,
                    error: format!("cannot build the request: {e}"),
                    reason: "request",
                }
            }
        };
        if hook.restricted {
            if let Some(error) = refused_literal(hook, &self.cfg.allowed_private_hosts) {
                return Answer {
                    status: 0,
                    error,
                    reason: "connect",
                };
            }
        }
        let exchange = async {
            let sent = if hook.restricted {
                self.clients.guarded.request(request).await
            } else {
                self.clients.open.request(request).await
            };
            let response = sent.map_err(|e| {
                let reason = if e.is_connect() { "connect" } else { "io" };
                (reason, error_chain(&e))
            })?;
            let status = response.status();
            // Read a little of the answer: what a failure says, and the connection can
            // be reused when the answer is short.
            let mut body = response.into_body();
            let mut text = Vec::new();
            while text.len() < ERROR_TEXT {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            text.extend_from_slice(data);
                        }
                    }
                    _ => break,
                }
            }
            Ok::<_, (&'static str, String)>((status, text))
        };
        match tokio::time::timeout(Duration::from_millis(self.cfg.timeout_ms), exchange).await {
            Err(_) => Answer {
                status: 0,
                error: format!("no answer within {} ms", self.cfg.timeout_ms),
                reason: "timeout",
            },
            Ok(Err((reason, error))) => Answer {
                status: 0,
                error,
                reason,
            },
            Ok(Ok((status, _))) if status.is_success() => Answer {
                status: status.as_u16(),
                error: String::new(),
                reason: "",
            },
            Ok(Ok((status, text))) => Answer {
                status: status.as_u16(),
                error: format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&text)
                ),
                reason: "status",
            },
        }
    }

    /// Keeps the backlog gauges current.
    async fn watch_backlog(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            match self.queue.backlog().await {
                Ok(b) => {
                    let age = b
                        .oldest_parked_ms
                        .map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics::gauge!(m::WEBHOOK_OLDEST_UNDELIVERED_SECONDS).set(age);
                    metrics::gauge!(m::WEBHOOK_QUEUES).set(b.queues as f64);
                }
                Err(e) => tracing::debug!(error = %e, "webhook backlog unknown"),
            }
            metrics::gauge!(m::WEBHOOK_OPEN_CIRCUITS).set(self.breakers.open() as f64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return,
            }
        }
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

    #[test]
    fn error_text_is_bounded_and_one_line() {
        let long = "x\n".repeat(1_000);
        let t = bounded(&long);
        assert_eq!(t.chars().count(), ERROR_TEXT);
        assert!(!t.contains('\n'));
    }
}
