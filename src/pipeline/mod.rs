//! The consumer pipeline (SPEC §5, §5.6): messages from the bus become rows in the sink.
//!
//! One round: take a batch of messages; catch the registry up to the versions they
//! carry; record the clicks (visitor index, fingerprint candidates); then let the
//! partitions' frontiers ([`schedule`]) release what may be decided: candidate clicks
//! in `(ts, click_id)` order, then conversions in intake order, settled as one batch
//! ([`resolve`]); publish this instance's frontiers. When the write is due (rows or
//! time), the sink writes durably and only then are offsets committed, never past a
//! click or conversion still waiting. A crash anywhere replays uncommitted messages,
//! which find their decisions in the state ([`store`]) and write identical rows, which
//! the tables collapse.

pub mod admin;
pub mod resolve;
pub mod schedule;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::Utc;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::bus::{BusError, Delivered, EventBus, EventSource, Position, Topic};
use crate::config::PipelineConfig;
use crate::engine::dedup;
use crate::engine::fraud::{Rule, CLICK_SPAM_WINDOW_MS};
use crate::engine::settle::ConversionStatus;
use crate::engine::Status;
use crate::events::{ClickEvent, ConversionEvent};
use crate::metrics as m;
use crate::money;
use crate::registry::{Program, Registry};
use crate::shutdown::Shutdown;
use crate::sink::rows::{conversion_rows, ClickRow, StatusRow};
use crate::sink::{Batch, Sink, SinkError};
use crate::webhooks::Outbox;
use resolve::{Memo, Outcome};
use schedule::{Part, Pending, Progress, View};
use store::{
    Answer, Candidate, ClickRecord, Decide, Mark, Read, StateError, StateStore, StoredTouch, Tally,
};

/// Conversions resolved per state round trip, at most.
const SETTLE_CHUNK: usize = 10_000;
/// How long stopping may retry dependencies before giving up on its last write.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// A candidate click waiting to be decided.
struct PendingClick {
    event: ClickEvent,
    candidate: Candidate,
    keep: Duration,
}

/// A conversion waiting to be settled.
struct PendingConversion {
    event: ConversionEvent,
    partition: i32,
    offset: i64,
}

/// The parts a pipeline runs on.
pub struct Pipeline {
    config: PipelineConfig,
    registry: Arc<Registry>,
    state: Arc<dyn StateStore>,
    sink: Arc<dyn Sink>,
    /// The dead-letter topic and the webhook outbox.
    dlq: Arc<dyn EventBus>,
    /// Topic names as frontiers are published under (instances sharing state must
    /// agree on them).
    click_topic: String,
    conversion_topic: String,
    progress: HashMap<Part, Progress>,
    clicks: Pending<PendingClick>,
    conversions: Pending<PendingConversion>,
    /// Next offset per partition after the messages taken so far.
    taken: BTreeMap<Part, i64>,
    rows: Batch,
    /// Webhook events of `rows`, published once they are written.
    outbox: Outbox,
    /// Hold ends whose approvals are among `rows`: removed from the queue once written.
    due_done: Vec<String>,
    /// The write under way, if any.
    flight: Option<Flight>,
    last_write: Instant,
    /// The wall clock when the pipeline started, and the monotonic instant then: "now"
    /// is their sum with the time since, so that tests can run on tokio's paused clock.
    started: (chrono::DateTime<Utc>, Instant),
    generation: u64,
    /// The assignment generation whose split conversion partitions were warned about.
    warned_split: Option<u64>,
    /// On stop, consume what is left and settle everything (the in-process bus keeps
    /// nothing across a restart, so there is nothing to come back for).
    drain_on_stop: bool,
    /// Set when stopping left a taken message without its rows, dead letter or place
    /// among the pending: from then on nothing is committed, and the restart replays
    /// (idempotently).
    commit_blocked: bool,
    /// Counter increments of the round, handed to the recorder when it ends.
    counts: Counts,
}

/// Counter increments gathered over a round and added once per series: every click
/// and conversion bumps two to eight labelled counters, and each `counter!` is a
/// lookup in the recorder's registry (3 % of settling's time, measured). The series
/// are few; a round is a fraction of a second.
#[derive(Default)]
struct Counts(HashMap<Series, u64>);

/// A counter's name and up to two labels (unused ones empty).
type Series = (&'static str, [(&'static str, &'static str); 2]);

impl Counts {
    /// `n` more on the series `name` with `labels` (an empty key: no label).
    fn add<const L: usize>(
        &mut self,
        name: &'static str,
        labels: [(&'static str, &'static str); L],
        n: u64,
    ) {
        const { assert!(L <= 2, "a series has at most two labels") };
        let mut series = [("", ""); 2];
        for (slot, label) in series.iter_mut().zip(labels) {
            *slot = label;
        }
        *self.0.entry((name, series)).or_default() += n;
    }

    fn flush(&mut self) {
        for ((name, labels), n) in self.0.drain() {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            metrics::counter!(name, labels).increment(n);
        }
    }
}

/// A dead letter (schemas/events/dlq.schema.json).
#[derive(Serialize)]
struct DeadLetter<'a> {
    v: u8,
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'a str,
    original_base64: String,
    failed_at: String,
}

/// Retries a state operation until it succeeds; `None` when stopping first.
/// `click_spam` (SPEC §5.8): which of these candidate clicks come past their program's
/// limit of clicks from one ip_hash on one partner's links within the hour up to them,
/// counting every click recorded before each (all are: the clicks are released).
async fn click_spam(
    registry: &Registry,
    state: &dyn StateStore,
    clicks: &[(Mark, PendingClick)],
) -> Result<Vec<bool>, StateError> {
    let mut reads = Vec::new();
    let mut asked = Vec::with_capacity(clicks.len());
    for (mark, p) in clicks {
        let c = &p.event;
        let program = registry
            .program(&c.program_id)
            .filter(|p| p.fraud.max_clicks_per_ip_hour.is_some());
        asked.push(program.map(|program| {
            reads.push(Read::Count {
                tally: Tally::IpClicks {
                    program: c.program_id.clone(),
                    partner: c.partner_id.clone(),
                    ip_hash: c.ip_hash.clone(),
                },
                from_ms: mark.ms - CLICK_SPAM_WINDOW_MS + 1,
                before: *mark,
            });
            (reads.len() - 1, program)
        }));
    }
    if reads.is_empty() {
        return Ok(vec![false; clicks.len()]);
    }
    let answers = state.read(&reads).await?;
    Ok(asked
        .iter()
        .map(|a| match a {
            Some((i, program)) => {
                matches!(answers[*i], Answer::Count(n) if program.fraud.click_spam(n))
            }
            None => false,
        })
        .collect())
}

/// State store calls wait out an unavailable store; `None` once stopping.
async fn retry<T, F, Fut>(shutdown: &Shutdown, op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StateError>>,
{
    crate::retry::until_ok("redis", "state store", shutdown, crate::retry::never, op)
        .await
        .unwrap_or(None)
}

impl Pipeline {
    pub fn new(
        config: PipelineConfig,
        registry: Arc<Registry>,
        state: Arc<dyn StateStore>,
        sink: Arc<dyn Sink>,
        dlq: Arc<dyn EventBus>,
    ) -> Self {
        Pipeline {
            config,
            registry,
            state,
            sink,
            dlq,
            click_topic: Topic::Clicks.label().to_string(),
            conversion_topic: Topic::Conversions.label().to_string(),
            progress: HashMap::new(),
            clicks: Pending::default(),
            conversions: Pending::default(),
            taken: BTreeMap::new(),
            rows: Batch::default(),
            outbox: Outbox::default(),
            due_done: Vec::new(),
            flight: None,
            last_write: Instant::now(),
            started: (Utc::now(), Instant::now()),
            generation: 0,
            warned_split: None,
            drain_on_stop: false,
            commit_blocked: false,
            counts: Counts::default(),
        }
    }

    /// Publishes frontiers under these topic names (the Kafka topics read).
    pub fn topics(mut self, clicks: &str, conversions: &str) -> Self {
        self.click_topic = clicks.to_string();
        self.conversion_topic = conversions.to_string();
        self
    }

    /// Drains the source and settles everything when stopped (embedded bus).
    pub fn draining(mut self) -> Self {
        self.drain_on_stop = true;
        self
    }

    /// Runs until `shutdown`, then writes and commits what it has. Returns an error only
    /// for what retrying cannot cure (the sink refusing rows).
    pub async fn run(
        mut self,
        mut source: Box<dyn EventSource>,
        mut shutdown: Shutdown,
    ) -> Result<(), PipelineError> {
        self.generation = source.assignment_generation();
        let idle = Duration::from_millis(self.config.flush_interval_ms.min(100));
        let mut wait = idle;
        loop {
            if shutdown.is_fired() {
                break;
            }
            let messages = tokio::select! {
                _ = shutdown.wait() => break,
                r = source.next_batch(self.config.poll_batch, wait) => r,
            };
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed, retrying");
                    metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "kafka")
                        .increment(1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if source.assignment_generation() != self.generation {
                // Partitions moved: what we took of partitions we may have lost will be
                // delivered again to their new owner. Write what is decided (harmless
                // either way: identical rows), forget positions and what waits.
                self.write_and_commit(&mut *source, &shutdown, true).await?;
                self.generation = source.assignment_generation();
                self.taken.clear();
                self.progress.clear();
                self.clicks.clear();
                self.conversions.clear();
            }
            if !messages.is_empty() {
                metrics::histogram!(m::PIPELINE_BATCH_MESSAGES).record(messages.len() as f64);
            }
            self.take(messages, &shutdown).await;
            let (all, owned) = (source.partitions(), source.owned());
            self.warn_split(&all, &owned);
            let more = self.advance(all, owned, false, &shutdown).await;
            self.counts.flush();
            // With more already released, go on without waiting for messages.
            wait = if more { Duration::ZERO } else { idle };
            for (topic, partition, lag) in source.lag() {
                metrics::gauge!(m::PIPELINE_CONSUMER_LAG, "topic" => topic.label(), "partition" => partition.to_string())
                    .set(lag as f64);
            }
            let due = self.rows.len() as u64 >= self.config.batch_rows
                || self.last_write.elapsed()
                    >= Duration::from_millis(self.config.flush_interval_ms);
            if due {
                self.write_and_commit(&mut *source, &shutdown, false)
                    .await?;
            }
        }
        // Stop: write and commit what is settled; what waits stays uncommitted and is
        // delivered again after the restart, unless the bus cannot do that. With a
        // deadline: a dependency that is away must not keep the process from exiting
        // (what is not written is not committed, and comes back after the restart).
        let (expire, deadline) = crate::shutdown::channel();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_DEADLINE).await;
            expire.fire();
        });
        if self.drain_on_stop {
            loop {
                let messages = source
                    .next_batch(self.config.poll_batch, Duration::from_millis(20))
                    .await?;
                if messages.is_empty() {
                    break;
                }
                self.take(messages, &deadline).await;
            }
            while self
                .advance(source.partitions(), source.owned(), true, &deadline)
                .await
            {}
            self.counts.flush();
        }
        self.write_and_commit(&mut *source, &deadline, true).await?;
        tracing::info!(
            clicks = self.clicks.len(),
            conversions = self.conversions.len(),
            "pipeline stopped"
        );
        Ok(())
    }

    /// Takes a batch of messages: decodes them, catches the registry up, records the
    /// clicks and queues what must wait for the frontiers.
    async fn take(&mut self, messages: Vec<Delivered>, shutdown: &Shutdown) {
        let mut clicks = Vec::new();
        let mut conversions = Vec::new();
        for msg in messages {
            let next = self
                .taken
                .entry((msg.topic, msg.partition))
                .or_insert(msg.offset + 1);
            *next = (*next).max(msg.offset + 1);
            let reason = match msg.topic {
                Topic::Clicks => match serde_json::from_slice::<ClickEvent>(&msg.payload) {
                    Ok(c) => {
                        clicks.push((c, msg.partition, msg.offset, msg.payload));
                        continue;
                    }
                    Err(e) => format!("undecodable click: {e}"),
                },
                Topic::Conversions => {
                    match serde_json::from_slice::<ConversionEvent>(&msg.payload) {
                        Ok(c) => {
                            conversions.push((c, msg.partition, msg.offset, msg.payload));
                            continue;
                        }
                        Err(e) => format!("undecodable conversion: {e}"),
                    }
                }
                Topic::Dlq | Topic::Webhooks => continue,
            };
            // Undecodable: dead-lettered with the original bytes.
            self.dead_letter(
                &msg.topic,
                msg.partition,
                msg.offset,
                &msg.payload,
                &reason,
                shutdown,
            )
            .await;
        }
        // Decide with a registry at least as new as the one the edge used (SPEC §5.3).
        let wanted = clicks
            .iter()
            .map(|(c, ..)| c.registry_version)
            .chain(conversions.iter().map(|(c, ..)| c.registry_version))
            .max()
            .unwrap_or(0);
        let patience = Duration::from_secs(self.config.max_wait_secs);
        let started = Instant::now();
        while wanted > self.registry.applied_version()
            && !self.registry.catch_up(wanted, Duration::from_secs(1)).await
        {
            if shutdown.is_fired() {
                // These messages have no rows: they come back after the restart.
                self.commit_blocked = true;
                return;
            }
            if started.elapsed() < patience {
                continue;
            }
            if self.registry.store().ping().await.is_ok() {
                // The store answers but never had that version (events from another
                // registry?): decide with what there is; unknown programs dead-letter.
                tracing::warn!(
                    wanted,
                    applied = self.registry.applied_version(),
                    "registry did not reach the events' version; deciding with what it has"
                );
                break;
            }
            tracing::warn!("registry store unavailable, pausing");
            metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "redis").increment(1);
        }

        let mut records = Vec::with_capacity(clicks.len());
        let mut decided_now = Vec::new();
        let mut candidates = Vec::new();
        for (c, partition, offset, payload) in clicks {
            let program = match self.check_click(&c) {
                Ok(program) => program,
                Err(reason) => {
                    self.dead_letter(
                        &Topic::Clicks,
                        partition,
                        offset,
                        &payload,
                        &reason,
                        shutdown,
                    )
                    .await;
                    continue;
                }
            };
            self.saw((Topic::Clicks, partition), c.ts.timestamp_millis());
            // Journeys reach back `lookback_days`; a day more covers late conversions.
            let keep = Duration::from_secs(program.lookback_secs() + 86_400);
            let candidate = dedup::precheck(&c).is_none().then(|| Candidate {
                fingerprint: dedup::click_fingerprint(&c),
                mark: Mark::new(c.ts, c.click_id),
                window_ms: program.click_dedup_window_secs.saturating_mul(1000),
            });
            // click_spam counts every click of the partner's links from the ip_hash.
            let ip = program
                .fraud
                .max_clicks_per_ip_hour
                .map(|_| Tally::IpClicks {
                    program: c.program_id.clone(),
                    partner: c.partner_id.clone(),
                    ip_hash: c.ip_hash.clone(),
                });
            records.push(ClickRecord {
                click_id: c.click_id,
                mark: Mark::new(c.ts, c.click_id),
                visitor_id: c.visitor_id,
                keep,
                candidate: candidate.clone(),
                ip,
            });
            match candidate {
                Some(candidate) => candidates.push((
                    (Topic::Clicks, partition),
                    offset,
                    PendingClick {
                        event: c,
                        candidate,
                        keep,
                    },
                )),
                None => decided_now.push(c),
            }
        }
        let state = Arc::clone(&self.state);
        let recording = Instant::now();
        if retry(shutdown, || state.record_clicks(&records))
            .await
            .is_none()
        {
            // Stopping with these clicks unrecorded: they come back after the restart.
            self.commit_blocked = true;
            return;
        }
        tracing::debug!(
            clicks = records.len(),
            ms = recording.elapsed().as_millis() as u64,
            "clicks recorded"
        );
        for c in decided_now {
            let verdict = dedup::precheck(&c).unwrap_or(dedup::ClickVerdict::Duplicate);
            self.emit_click(c, verdict);
        }
        for (part, offset, p) in candidates {
            self.clicks.insert(p.candidate.mark, part, offset, p);
        }

        for (c, partition, offset, payload) in conversions {
            if let Err(reason) = self.check_conversion(&c) {
                self.dead_letter(
                    &Topic::Conversions,
                    partition,
                    offset,
                    &payload,
                    &reason,
                    shutdown,
                )
                .await;
                continue;
            }
            self.saw(
                (Topic::Conversions, partition),
                c.received_at.timestamp_millis(),
            );
            let mark = Mark::new(c.received_at, c.conversion_id);
            self.conversions.insert(
                mark,
                (Topic::Conversions, partition),
                offset,
                PendingConversion {
                    event: c,
                    partition,
                    offset,
                },
            );
        }
    }

    /// Warns, once per assignment, when this instance owns some of the conversion
    /// partitions but not all: their conversions then settle in lockstep with the other
    /// owners' (each waits for the others' earlier ones), a few per round trip.
    fn warn_split(&mut self, all: &[Part], owned: &[(Part, bool)]) {
        if self.warned_split == Some(self.generation) {
            return;
        }
        let conversions = |p: &Part| p.0 == Topic::Conversions;
        let mine = owned.iter().filter(|(p, _)| conversions(p)).count();
        let total = all.iter().filter(|p| conversions(p)).count();
        if mine > 0 && mine < total {
            self.warned_split = Some(self.generation);
            tracing::warn!(
                owned = mine,
                partitions = total,
                topic = %self.conversion_topic,
                "the conversions topic's partitions are split between instances: \
                 conversions settle in lockstep with the other owners, slowly under load; \
                 give the topic one partition (kafka.conversion_partitions)"
            );
        }
    }

    /// Notes an event time read on a partition.
    fn saw(&mut self, part: Part, ms: i64) {
        let p = self.progress.entry(part).or_default();
        p.latest_ms = Some(p.latest_ms.map_or(ms, |l| l.max(ms)));
    }

    /// The wall-clock time now, advanced by the monotonic clock since the start.
    fn now(&self) -> chrono::DateTime<Utc> {
        let (wall, at) = self.started;
        wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
    }

    /// The bounds of this moment (see [`schedule`]).
    fn bounds(
        &self,
        all: &[Part],
        owned: &[(Part, bool)],
        published: &HashMap<String, Mark>,
        drain: bool,
    ) -> schedule::Bounds {
        let now_ms = self.now().timestamp_millis();
        let grace_ms =
            i64::try_from(self.config.late_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mine: HashMap<Part, (Mark, Option<Mark>, Option<Mark>)> = owned
            .iter()
            .map(|&(part, at_end)| {
                let progress = Progress {
                    at_end,
                    ..self.progress.get(&part).copied().unwrap_or_default()
                };
                (
                    part,
                    (
                        progress.read_frontier(now_ms, grace_ms),
                        self.clicks.first_of(part),
                        self.conversions.first_of(part),
                    ),
                )
            })
            .collect();
        let mut bounds = View {
            all,
            names: (&self.click_topic, &self.conversion_topic),
            owned: &mine,
            published,
        }
        .bounds();
        if drain {
            bounds.decide_below = Mark::MAX;
            bounds.settle_below = Mark::MAX;
        }
        bounds
    }

    /// Decides the clicks and settles the conversions the frontiers release, then
    /// publishes this instance's frontiers. `drain`: release everything.
    async fn advance(
        &mut self,
        all: Vec<Part>,
        owned: Vec<(Part, bool)>,
        drain: bool,
        shutdown: &Shutdown,
    ) -> bool {
        let state = Arc::clone(&self.state);
        let round = Instant::now();
        let Some(published) = retry(shutdown, || state.frontiers()).await else {
            return false;
        };
        let max_wait = Duration::from_secs(
            self.config
                .late_grace_secs
                .saturating_add(self.config.max_wait_secs),
        );

        // Candidate clicks, in mark order.
        let bounds = self.bounds(&all, &owned, &published, drain);
        // At most a poll's worth at once: rows, memory and round trips stay bounded, and
        // writes and commits keep coming during a long backlog.
        let limit = self.config.poll_batch;
        let released = self.clicks.release(
            bounds.decide_below,
            max_wait,
            self.config.max_pending,
            limit,
        );
        let mut more = released.items.len() == limit;
        let released_clicks = released.items.len();
        if !released.items.is_empty() {
            let registry = &self.registry;
            let Some(suspicious) =
                retry(shutdown, || click_spam(registry, &*state, &released.items)).await
            else {
                self.commit_blocked = true;
                return false;
            };
            let decides: Vec<Decide> = released
                .items
                .iter()
                .zip(&suspicious)
                .map(|((_, p), suspicious)| Decide {
                    candidate: p.candidate.clone(),
                    program_id: p.event.program_id.clone(),
                    visitor_id: p.event.visitor_id,
                    touch: StoredTouch {
                        click_id: p.event.click_id,
                        partner_id: p.event.partner_id.clone(),
                        campaign: p.event.campaign.clone().unwrap_or_default(),
                        ts: p.event.ts,
                    },
                    keep: p.keep,
                    touchpoint: !suspicious,
                })
                .collect();
            let Some(verdicts) = retry(shutdown, || state.decide_clicks(&decides)).await else {
                self.commit_blocked = true;
                return false;
            };
            for (((_, p), unique), suspicious) in
                released.items.into_iter().zip(verdicts).zip(suspicious)
            {
                let verdict = if suspicious {
                    metrics::counter!(m::PIPELINE_FRAUD_FLAGS_TOTAL, "rule" => Rule::ClickSpam.as_str())
                        .increment(1);
                    dedup::ClickVerdict::Suspicious
                } else if unique {
                    dedup::ClickVerdict::Unique
                } else {
                    dedup::ClickVerdict::Duplicate
                };
                self.emit_click(p.event, verdict);
            }
        }

        let clicks_done = round.elapsed();
        let clicks_decided = released_clicks;

        // Conversions, in intake order.
        let bounds = self.bounds(&all, &owned, &published, drain);
        let released = self.conversions.release(
            bounds.settle_below,
            max_wait,
            self.config.max_pending,
            limit,
        );
        more |= released.items.len() == limit;
        if released.forced > 0 && !drain {
            metrics::counter!(m::PIPELINE_FORCED_SETTLEMENTS_TOTAL)
                .increment(released.forced as u64);
            tracing::warn!(
                forced = released.forced,
                "settled conversions before every partition released them"
            );
        }
        let mut items = released.items;
        let conversions_settled = items.len();
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(SETTLE_CHUNK));
            let chunk = std::mem::replace(&mut items, rest);
            let batch: Vec<(Mark, ConversionEvent)> = chunk
                .iter()
                .map(|(mark, p)| (*mark, p.event.clone()))
                .collect();
            let registry = Arc::clone(&self.registry);
            let Some(outcomes) = retry(shutdown, || {
                resolve::settle_batch(&registry, &*state, &batch)
            })
            .await
            else {
                self.commit_blocked = true;
                return false;
            };
            for ((_, p), outcome) in chunk.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Settled(memo) => self.emit_conversion(&p.event, &memo),
                    Outcome::DeadLetter(reason) => {
                        let payload = serde_json::to_vec(&p.event).unwrap_or_default();
                        self.dead_letter(
                            &Topic::Conversions,
                            p.partition,
                            p.offset,
                            &payload,
                            &reason,
                            shutdown,
                        )
                        .await;
                    }
                }
            }
        }
        metrics::gauge!(m::PIPELINE_PENDING).set(self.conversions.len() as f64);
        metrics::gauge!(m::PIPELINE_PENDING_CLICKS).set(self.clicks.len() as f64);

        // What this instance now vouches for.
        let bounds = self.bounds(&all, &owned, &published, false);
        if retry(shutdown, || state.publish(&bounds.publish))
            .await
            .is_none()
        {
            // Unpublished frontiers only hold others back a little longer.
            tracing::warn!("stopping before the frontiers were published");
            return more;
        }

        // Holds that ended before everything settled everywhere: approve their rows.
        // Every instance may approve the same order; the steps are identical rows.
        let before_ms = bounds.settled_everywhere.ms.saturating_add(1);
        let read = [store::Read::DueBefore { before_ms, limit }];
        if let Some(answers) = retry(shutdown, || state.read(&read)).await {
            if let Some(store::Answer::Entries(entries)) = answers.into_iter().next() {
                let full = entries.len() == limit;
                let fresh: Vec<String> = entries
                    .into_iter()
                    .filter(|e| {
                        !self.due_done.contains(e)
                            && !self.flight.as_ref().is_some_and(|f| f.due.contains(e))
                    })
                    .collect();
                // Ends already approved wait for the write; only new ones call for more.
                more |= full && !fresh.is_empty();
                if let Some(rows) = retry(shutdown, || resolve::approvals(&*state, &fresh)).await {
                    metrics::counter!(m::PIPELINE_LIFECYCLE_STEPS_TOTAL, "status" => "approved")
                        .increment(rows.len() as u64);
                    self.outbox.steps(&self.registry, &rows);
                    self.rows.statuses.extend(rows);
                    self.due_done.extend(fresh);
                }
            }
        }
        tracing::debug!(
            clicks_decided,
            clicks_ms = clicks_done.as_millis() as u64,
            conversions_settled,
            conversions_ms = (round.elapsed() - clicks_done).as_millis() as u64,
            pending_clicks = self.clicks.len(),
            pending_conversions = self.conversions.len(),
            "advanced"
        );
        more
    }

    /// The click's program, or why the click cannot be decided.
    fn check_click(&self, e: &ClickEvent) -> Result<Arc<Program>, String> {
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        self.registry
            .program(&e.program_id)
            .ok_or_else(|| format!("unknown program {}", e.program_id))
    }

    fn check_conversion(&self, e: &ConversionEvent) -> Result<(), String> {
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        if self.registry.program(&e.program_id).is_none() {
            return Err(format!("unknown program {}", e.program_id));
        }
        if e.amount.is_sign_negative() || e.amount > money::max_amount() {
            return Err("amount out of range".into());
        }
        Ok(())
    }

    /// Publishes a dead letter; when stopping before the broker took it, nothing more
    /// is committed.
    async fn dead_letter(
        &mut self,
        topic: &Topic,
        partition: i32,
        offset: i64,
        payload: &[u8],
        reason: &str,
        shutdown: &Shutdown,
    ) {
        use base64::Engine;
        tracing::warn!(
            topic = topic.label(),
            partition,
            offset,
            reason,
            "dead letter"
        );
        let letter = DeadLetter {
            v: 1,
            topic: topic.label(),
            partition,
            offset,
            reason,
            original_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            failed_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let letter = serde_json::to_vec(&letter).unwrap_or_default();
        let key = format!("{}:{partition}:{offset}", topic.label());
        // The message's offset is committed with the batch: the letter must be written.
        let dlq = &self.dlq;
        let written = crate::retry::until_ok(
            "kafka",
            "dead-letter topic",
            shutdown,
            crate::retry::never,
            || dlq.publish_dlq(key.as_bytes(), &letter),
        )
        .await;
        if !matches!(written, Ok(Some(()))) {
            self.commit_blocked = true;
            return;
        }
        metrics::counter!(m::PIPELINE_MESSAGES_TOTAL, "topic" => topic.label(), "result" => "dlq")
            .increment(1);
    }

    fn emit_click(&mut self, c: ClickEvent, verdict: dedup::ClickVerdict) {
        let counts = &mut self.counts;
        counts.add(
            m::PIPELINE_CLICK_DEDUP_TOTAL,
            [("result", verdict.as_str())],
            1,
        );
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "clicks"), ("result", "ok")],
            1,
        );
        self.rows.clicks.push(ClickRow::new(c, verdict));
    }

    fn emit_conversion(&mut self, e: &ConversionEvent, memo: &Memo) {
        let d = &memo.decision;
        let life = &memo.lifecycle;
        let (conversion, attributions, commissions) = conversion_rows(e, d, &memo.campaigns, life);
        let first_step = self.rows.statuses.len();
        // The lifecycle: each row's creation, and the rows a refund cancels.
        for (i, c) in commissions.iter().enumerate() {
            let (status, reason) = life.created(i);
            self.counts.add(
                m::PIPELINE_LIFECYCLE_STEPS_TOTAL,
                [("status", status.as_str())],
                1,
            );
            self.rows.statuses.push(StatusRow::step(
                c.commission_id,
                e.conversion_id,
                &e.program_id,
                &c.partner_id,
                c.kind,
                c.amount,
                &d.currency,
                0,
                status,
                reason,
                "pipeline",
                e.received_at,
            ));
        }
        for r in &life.cancels {
            self.counts.add(
                m::PIPELINE_LIFECYCLE_STEPS_TOTAL,
                [("status", "reversed")],
                1,
            );
            self.rows.statuses.push(resolve::step_row(
                r,
                &e.program_id,
                &d.currency,
                1,
                Status::Reversed,
                "refunded before approval",
                e.received_at,
            ));
        }
        for rule in &life.standing.held {
            if let Some(rule) = Rule::parse(rule) {
                self.counts
                    .add(m::PIPELINE_FRAUD_FLAGS_TOTAL, [("rule", rule.as_str())], 1);
            }
        }
        let counts = &mut self.counts;
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "conversions"), ("result", "ok")],
            1,
        );
        counts.add(
            m::PIPELINE_CONVERSIONS_TOTAL,
            [("kind", e.kind.as_str()), ("status", d.status.as_str())],
            1,
        );
        if d.status == ConversionStatus::Attributed && !d.model.is_empty() {
            counts.add(
                m::PIPELINE_ATTRIBUTIONS_TOTAL,
                [("model", model_label(&d.model))],
                1,
            );
        }
        let minor = money::minor_units(&d.currency);
        let currency = currency_label(&d.currency);
        for r in &d.rows {
            let units = (r.amount * Decimal::from(10u64.pow(minor))).trunc();
            let units = u64::try_from(units.abs().mantissa()).unwrap_or(0);
            counts.add(
                m::PIPELINE_COMMISSION_MINOR_UNITS_TOTAL,
                [("currency", currency), ("kind", r.kind.as_str())],
                units,
            );
        }
        self.outbox.conversion(
            &self.registry,
            &conversion,
            &commissions,
            &self.rows.statuses[first_step..],
        );
        self.rows.conversions.push(conversion);
        self.rows.attributions.extend(attributions);
        self.rows.commissions.extend(commissions);
    }

    /// Writes the pending rows and commits the offsets they cover, stopping short of
    /// any click or conversion still waiting. The write runs in the background while
    /// the pipeline goes on ([`Flight`]); its offsets are committed when the next write
    /// starts, or here with `wait`.
    async fn write_and_commit(
        &mut self,
        source: &mut dyn EventSource,
        shutdown: &Shutdown,
        wait: bool,
    ) -> Result<(), PipelineError> {
        self.land(source).await?;
        self.launch(shutdown);
        if wait {
            self.land(source).await?;
        }
        Ok(())
    }

    /// Starts writing the pending rows (retrying transient failures), then their
    /// webhook events, then removing the hold ends they approve from the queue.
    fn launch(&mut self, shutdown: &Shutdown) {
        let rows = std::mem::take(&mut self.rows);
        self.last_write = Instant::now();
        let events = self.outbox.take();
        let due = std::mem::take(&mut self.due_done);
        let done: Vec<store::Write> = due
            .iter()
            .map(|json| store::Write::DueDone { json: json.clone() })
            .collect();
        // The offsets this write covers: everything taken before a waiting click or
        // conversion. Messages taken later lie after them.
        let positions = if self.commit_blocked {
            Vec::new()
        } else {
            self.positions()
        };
        let (sink, bus, state) = (
            Arc::clone(&self.sink),
            Arc::clone(&self.dlq),
            Arc::clone(&self.state),
        );
        let shutdown = shutdown.clone();
        let task = tokio::spawn(async move {
            let fatal = |e: &SinkError| matches!(e, SinkError::Fatal(_));
            if crate::retry::until_ok("clickhouse", "sink", &shutdown, fatal, || sink.write(&rows))
                .await?
                .is_none()
            {
                // Nothing is committed: the rows come back after the restart.
                return Ok(false);
            }
            // Webhook events of the rows written, before the offsets that made them
            // are committed: a crash in between replays the rows and so the same events.
            if !events.is_empty() {
                let fatal = |e: &BusError| matches!(e, BusError::Fatal(_));
                if crate::retry::until_ok("kafka", "webhook outbox", &shutdown, fatal, || {
                    bus.publish_outbox(&events)
                })
                .await?
                .is_none()
                {
                    return Ok(false);
                }
            }
            // Left in the queue, a hold end is approved again: the same rows.
            if !done.is_empty() {
                if let Err(e) = state.write(&done).await {
                    tracing::warn!(error = %e, "hold ends left queued; they will be approved again");
                }
            }
            Ok(true)
        });
        self.flight = Some(Flight {
            task,
            positions,
            due,
        });
    }

    /// Waits for the write under way and commits the offsets it covers.
    async fn land(&mut self, source: &mut dyn EventSource) -> Result<(), PipelineError> {
        let Some(flight) = self.flight.take() else {
            return Ok(());
        };
        let written = match flight.task.await {
            Ok(written) => written?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is going away; nothing is committed.
            Err(_) => false,
        };
        if !written || flight.positions.is_empty() {
            return Ok(());
        }
        match source.commit(&flight.positions).await {
            Ok(()) => metrics::counter!(m::PIPELINE_COMMITS_TOTAL).increment(1),
            // Uncommitted offsets only mean replays, which are harmless.
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
        Ok(())
    }

    /// The next offset to read of every partition taken from, short of what waits.
    fn positions(&self) -> Vec<Position> {
        self.taken
            .iter()
            .map(|(&part, &next)| {
                let waiting = [
                    self.clicks.first_offset_of(part),
                    self.conversions.first_offset_of(part),
                ]
                .into_iter()
                .flatten()
                .min();
                Position {
                    topic: part.0,
                    partition: part.1,
                    next_offset: waiting.map_or(next, |w| w.min(next)),
                }
            })
            .collect()
    }
}

/// A write under way: the sink's rows, their webhook events, the hold ends they
/// approve. Its offsets are committed once it answers `true` (written); rows, events
/// and the queue's removals are idempotent, so a crash at any point only replays.
struct Flight {
    task: tokio::task::JoinHandle<Result<bool, PipelineError>>,
    positions: Vec<Position>,
    /// Hold ends whose approvals it writes: not approved again meanwhile.
    due: Vec<String>,
}

/// Bounded metric labels.
fn model_label(model: &str) -> &'static str {
    match model {
        "first_touch" => "first_touch",
        "last_touch" => "last_touch",
        "linear" => "linear",
        "time_decay" => "time_decay",
        "position_based" => "position_based",
        "referral_code" => "referral_code",
        _ => "other",
    }
}

fn currency_label(code: &str) -> &'static str {
    // KNOWN is sorted (money's tests); a row per commission asks.
    money::KNOWN
        .binary_search(&code)
        .map_or("other", |i| money::KNOWN[i])
}

#[cfg(test)]
mod tests {
    //! Late arrival on the memory bus and store, on tokio's paused clock: the
    //! frontiers hold a conversion back for the grace, so a click the edge held back
    //! still counts, and one later than that does not.

    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::events::{ClickStatus, ConversionKind, EVENT_VERSION};
    use crate::registry::{Link, LinkStatus, MemoryStore, Partner, PartnerStatus, Program};
    use std::sync::Mutex;
    use uuid::Uuid;

    /// Rows the pipeline wrote, for assertions (unit tests only: the SPEC's sinks are
    /// tested against ClickHouse and files).
    #[derive(Default)]
    struct Capture(Mutex<Batch>);

    #[async_trait::async_trait]
    impl Sink for Capture {
        async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut batch.clone());
            Ok(())
        }
        async fn ping(&self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    async fn registry() -> Arc<Registry> {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let program: Program =
            serde_json::from_value(crate::registry::model::tests_support::program_json()).unwrap();
        registry.put_program("acme", program).await.unwrap();
        let partner = Partner {
            email_sha256: None,
            id: String::new(),
            program_id: "acme".into(),
            name: None,
            tier: None,
            parent_id: None,
            status: PartnerStatus::Active,
        };
        registry.put_partner("alice", partner).await.unwrap();
        registry
            .create_link(Link {
                code: "alice-1".into(),
                program_id: "acme".into(),
                partner_id: "alice".into(),
                destination: "https://shop.example/".into(),
                campaign: None,
                utm_source: None,
                utm_medium: None,
                utm_campaign: None,
                utm_term: None,
                utm_content: None,
                sub_ids: Vec::new(),
                status: LinkStatus::Active,
            })
            .await
            .unwrap();
        registry
    }

    fn click(id: u128, visitor: Uuid, ts: chrono::DateTime<Utc>) -> ClickEvent {
        ClickEvent {
            v: EVENT_VERSION,
            click_id: Uuid::from_u128(id),
            ts,
            program_id: "acme".into(),
            partner_id: "alice".into(),
            link_code: "alice-1".into(),
            campaign: None,
            visitor_id: visitor,
            ip_hash: format!("{id:032x}"),
            user_agent: "Mozilla/5.0".into(),
            referer: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            sub_ids: Vec::new(),
            is_bot: false,
            status: ClickStatus::Ok,
            registry_version: 0,
        }
    }

    fn sale(id: u128, click: u128, at: chrono::DateTime<Utc>) -> ConversionEvent {
        ConversionEvent {
            v: EVENT_VERSION,
            conversion_id: Uuid::from_u128(id),
            program_id: "acme".into(),
            order_id: format!("o-{id}"),
            kind: ConversionKind::Sale,
            amount: Decimal::from(100),
            currency: "USD".into(),
            occurred_at: at,
            received_at: at,
            click_id: Some(Uuid::from_u128(click)),
            visitor_id: None,
            referral_code: None,
            customer_id: None,
            original_order_id: None,
            registry_version: 0,
            customer_email_sha256: None,
        }
    }

    /// A round's increments reach the recorder once flushed, summed per series, with
    /// their labels and nothing else; a flushed round is not counted again.
    #[test]
    fn counts_reach_the_recorder_per_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut counts = Counts::default();
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "clicks"), ("result", "ok")],
            1,
        );
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "clicks"), ("result", "ok")],
            2,
        );
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "conversions"), ("result", "ok")],
            5,
        );
        counts.add(m::PIPELINE_FORCED_SETTLEMENTS_TOTAL, [], 4);
        metrics::with_local_recorder(&recorder, || {
            assert!(handle.render().is_empty());
            counts.flush();
            counts.flush();
        });
        let text = handle.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
                .to_string()
        };
        assert_eq!(
            value(&format!(
                "{}{{topic=\"clicks\",result=\"ok\"}}",
                m::PIPELINE_MESSAGES_TOTAL
            )),
            "3"
        );
        assert_eq!(
            value(&format!(
                "{}{{topic=\"conversions\",result=\"ok\"}}",
                m::PIPELINE_MESSAGES_TOTAL
            )),
            "5"
        );
        assert_eq!(value(m::PIPELINE_FORCED_SETTLEMENTS_TOTAL), "4");
    }

    #[test]
    fn currency_labels_are_known_codes_or_other() {
        assert_eq!(currency_label("USD"), "USD");
        assert_eq!(currency_label("AED"), "AED");
        assert_eq!(currency_label("ZWL"), "ZWL");
        assert_eq!(currency_label("usd"), "other");
        assert_eq!(currency_label("XYZ"), "other");
    }

    /// click_spam (SPEC §5.8) with a limit of 2 an hour: the third and fourth clicks
    /// from one ip_hash on alice's links are stored suspicious, neither unique nor a
    /// touchpoint; another ip, and the same one an hour later, are not.
    #[tokio::test(start_paused = true)]
    async fn clicks_past_the_hourly_limit_are_suspicious_and_not_touchpoints() {
        let registry = registry().await;
        let mut program: Program =
            serde_json::from_value(crate::registry::model::tests_support::program_json()).unwrap();
        program.fraud.max_clicks_per_ip_hour = Some(2);
        registry.put_program("acme", program).await.unwrap();
        let bus = MemoryBus::new(1000);
        let sink = Arc::new(Capture::default());
        let mut config = crate::config::Config::embedded().pipeline;
        config.late_grace_secs = 1;
        let (trigger, shutdown) = crate::shutdown::channel();
        let pipeline = Pipeline::new(
            config,
            registry,
            Arc::new(store::MemoryState::new()),
            Arc::clone(&sink) as Arc<dyn Sink>,
            Arc::clone(&bus) as Arc<dyn EventBus>,
        );
        let task = tokio::spawn(pipeline.run(Box::new(bus.source()), shutdown));
        let t0 = Utc::now() - chrono::Duration::hours(3);
        let min = |m: i64| t0 + chrono::Duration::minutes(m);
        let spammer = "5".repeat(32);
        let clicks = [
            (1, min(0), &spammer),
            (2, min(1), &spammer),
            (3, min(2), &spammer),
            (4, min(3), &spammer),
            (5, min(3), &"6".repeat(32)),
            // 60 minutes after click 4, plus a millisecond: the hour before is empty.
            (6, min(63) + chrono::Duration::milliseconds(1), &spammer),
        ];
        for (id, ts, ip) in clicks {
            let mut c = click(id, Uuid::from_u128(100 + id), ts);
            c.ip_hash = ip.clone();
            c.user_agent = format!("agent {id}");
            bus.publish_click(
                c.visitor_id.to_string().as_bytes(),
                &serde_json::to_vec(&c).unwrap(),
            )
            .unwrap();
        }
        // Sales following a suspicious click and an ordinary one.
        for (id, click) in [(31, 3), (32, 2)] {
            let s = sale(id, click, Utc::now());
            bus.publish_conversions(&[(s.partition_key(), serde_json::to_vec(&s).unwrap())])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        trigger.fire();
        task.await.unwrap().unwrap();

        let rows = sink.0.lock().unwrap();
        let mut clicks: Vec<(u128, &str, u8)> = rows
            .clicks
            .iter()
            .map(|c| (c.click_id.as_u128(), c.status, c.is_unique))
            .collect();
        clicks.sort();
        assert_eq!(
            clicks,
            [
                (1, "ok", 1),
                (2, "ok", 1),
                (3, "suspicious", 0),
                (4, "suspicious", 0),
                (5, "ok", 1),
                (6, "ok", 1)
            ]
        );
        let status: HashMap<u128, &str> = rows
            .conversions
            .iter()
            .map(|c| (c.conversion_id.as_u128(), c.status))
            .collect();
        assert_eq!(
            status,
            HashMap::from([(31, "unattributed"), (32, "attributed")])
        );
    }

    /// A sink refusing rows for good (a schema mismatch, say): the write runs in the
    /// background, and its failure still stops the pipeline, loudly, without a signal.
    #[tokio::test(start_paused = true)]
    async fn a_sink_refusing_rows_stops_the_pipeline() {
        struct Refusing;
        #[async_trait::async_trait]
        impl Sink for Refusing {
            async fn write(&self, _batch: &Batch) -> Result<(), SinkError> {
                Err(SinkError::Fatal("no such column".into()))
            }
            async fn ping(&self) -> Result<(), SinkError> {
                Ok(())
            }
        }
        let bus = MemoryBus::new(1000);
        let (_trigger, shutdown) = crate::shutdown::channel();
        let pipeline = Pipeline::new(
            crate::config::Config::embedded().pipeline,
            registry().await,
            Arc::new(store::MemoryState::new()),
            Arc::new(Refusing),
            Arc::clone(&bus) as Arc<dyn EventBus>,
        );
        let task = tokio::spawn(pipeline.run(Box::new(bus.source()), shutdown));
        let c = click(1, Uuid::from_u128(2), Utc::now());
        bus.publish_click(b"v", &serde_json::to_vec(&c).unwrap())
            .unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the pipeline stops on its own")
            .unwrap();
        assert!(
            matches!(stopped, Err(PipelineError::Sink(SinkError::Fatal(_)))),
            "{stopped:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_click_counts_within_the_grace_and_not_after() {
        let registry = registry().await;
        let bus = MemoryBus::new(1000);
        let sink = Arc::new(Capture::default());
        let mut config = crate::config::Config::embedded().pipeline;
        config.late_grace_secs = 10;
        config.max_wait_secs = 60;
        let (trigger, shutdown) = crate::shutdown::channel();
        let pipeline = Pipeline::new(
            config,
            registry,
            Arc::new(store::MemoryState::new()),
            Arc::clone(&sink) as Arc<dyn Sink>,
            Arc::clone(&bus) as Arc<dyn EventBus>,
        );
        // The pipeline's clock: the wall clock at its start, advanced by tokio's.
        let (wall, at) = (Utc::now(), Instant::now());
        let now = move || wall + chrono::Duration::from_std(at.elapsed()).unwrap();
        let task = tokio::spawn(pipeline.run(Box::new(bus.source()), shutdown));
        let visitor = Uuid::from_u128(77);
        let publish_click = |c: ClickEvent| {
            bus.publish_click(
                c.visitor_id.to_string().as_bytes(),
                &serde_json::to_vec(&c).unwrap(),
            )
            .unwrap()
        };
        let publish_sale = |c: ConversionEvent| {
            let bus = Arc::clone(&bus);
            async move {
                bus.publish_conversions(&[(c.partition_key(), serde_json::to_vec(&c).unwrap())])
                    .await
                    .unwrap()
            }
        };

        // A sale whose click the edge held back for 5 s: within the grace, it counts.
        let t0 = now();
        publish_sale(sale(1, 10, t0)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        publish_click(click(10, visitor, t0 - chrono::Duration::seconds(1)));
        // A sale whose click comes 30 s late: settled without it, unattributed.
        tokio::time::sleep(Duration::from_secs(1)).await;
        publish_sale(sale(2, 20, now())).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        publish_click(click(20, visitor, now() - chrono::Duration::seconds(31)));
        tokio::time::sleep(Duration::from_secs(30)).await;
        trigger.fire();
        task.await.unwrap().unwrap();

        let rows = sink.0.lock().unwrap();
        let status: HashMap<u128, &str> = rows
            .conversions
            .iter()
            .map(|c| (c.conversion_id.as_u128(), c.status))
            .collect();
        assert_eq!(
            status,
            HashMap::from([(1, "attributed"), (2, "unattributed")])
        );
        assert_eq!(rows.clicks.len(), 2, "both clicks are stored");
        assert!(rows.clicks.iter().all(|c| c.is_unique == 1));
        assert_eq!(rows.commissions.len(), 1);
        assert_eq!(rows.commissions[0].partner_id, "alice");
        assert_eq!(rows.commissions[0].amount, Decimal::from(15));
    }
}
