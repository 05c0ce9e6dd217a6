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
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

mod breaker;
mod client;
mod log;

use breaker::{backoff, random_below, Admit, Breakers};
use client::{bounded, Clients};
use log::{write_rows, Pending, LOG_BATCH};

use crate::bus::{BusError, Delivered, EventSource, Position};
use crate::config::WebhooksConfig;
use crate::metrics as m;
use crate::registry::{Registry, Webhook, WebhookEventType};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::sink::{DeliveryLog, DeliveryRow};
use crate::webhooks::queue::{Claim, DeliveryQueue, Parked, QueueId};

/// The header carrying the event id, the same on every attempt.
pub const EVENT_ID_HEADER: &str = "x-touchline-event-id";
/// The header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "x-touchline-event-type";

/// Outbox messages taken per intake round.
const INTAKE_BATCH: usize = 500;

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

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
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
        let answer = self.clients.send(&hook, event).await;
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
