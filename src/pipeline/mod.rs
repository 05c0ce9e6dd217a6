//! The consumer pipeline (SPEC §5, §5.6): messages from the bus become rows in the sink.
//!
//! One round: take a batch of messages, mark clicks (one state round trip for the
//! batch), settle conversions (memoized with their effects), and add the rows to the
//! pending write. When the write is due (rows or time), the sink writes it durably and
//! only then are offsets committed, never past a conversion still waiting for a late
//! click, sale or order. A crash anywhere replays uncommitted messages, which find their
//! decisions memoized and write identical rows, which the tables collapse.

pub mod admin;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::bus::{BusError, Delivered, EventBus, EventSource, Position, Topic};
use crate::config::PipelineConfig;
use crate::engine::attribution::Touch;
use crate::engine::dedup;
use crate::engine::journey;
use crate::engine::settle::{self, ConversionStatus, Credit, Decision, FirstSale, OrderRecord};
use crate::events::{ClickEvent, ConversionEvent, ConversionKind};
use crate::metrics as m;
use crate::money;
use crate::registry::{Program, Registry};
use crate::shutdown::Shutdown;
use crate::sink::rows::{conversion_rows, ClickRow};
use crate::sink::{Batch, Sink, SinkError};
use state::{ClickMark, CommitOutcome, Effect, Memo, StateError, StateStore, StoredTouch};

/// Longest pause between retries of a failing dependency.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// Conversions settled at once, each partition key's in order. Higher hides more
/// state-store latency; the store serializes what must be serialized.
const SETTLE_CONCURRENCY: usize = 512;

/// What settling one partition key's conversions came to.
#[derive(Default)]
struct GroupOutcome {
    settled: Vec<(ConversionEvent, Box<Memo>)>,
    waiting: Vec<Waiting>,
    /// What is left after a state failure, to be retried.
    failed: Option<(Vec<(Waiting, bool)>, StateError)>,
}

/// A conversion waiting for what it depends on.
struct Waiting {
    event: ConversionEvent,
    at: (Topic, i32, i64),
    since: Instant,
    /// The state keys of the click, first sale or order it waits for (any of them
    /// ends the wait), once known.
    needs: Vec<String>,
    /// Settle now with what there is (the pending bound was reached).
    forced: bool,
}

/// What settling a conversion came to.
enum Settled {
    Done(Box<Memo>),
    /// Its click, first sale or order is not there yet: the keys, any of which ends
    /// the wait.
    Wait(Vec<String>),
}

/// The parts a pipeline runs on.
pub struct Pipeline {
    config: PipelineConfig,
    registry: Arc<Registry>,
    state: Arc<dyn StateStore>,
    sink: Arc<dyn Sink>,
    dlq: Arc<dyn EventBus>,
    waiting: Vec<Waiting>,
    /// Next offset per partition after the messages taken so far.
    taken: BTreeMap<(Topic, i32), i64>,
    rows: Batch,
    last_write: Instant,
    generation: u64,
    /// On stop, consume what is left and settle what waits (the in-process bus keeps
    /// nothing across a restart, so there is nothing to come back for).
    drain_on_stop: bool,
    /// Set when stopping left a taken message without its rows or dead letter: from then
    /// on nothing is committed, and the restart replays (idempotently).
    commit_blocked: bool,
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
            waiting: Vec::new(),
            taken: BTreeMap::new(),
            rows: Batch::default(),
            last_write: Instant::now(),
            generation: 0,
            drain_on_stop: false,
            commit_blocked: false,
        }
    }

    /// Drains the source and settles waiting conversions when stopped (embedded bus).
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
        let wait = Duration::from_millis(self.config.flush_interval_ms.min(100));
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
                // delivered again to their new owner. Write what is settled (harmless
                // either way: identical rows), forget positions and waiting conversions.
                self.write_and_commit(&mut *source, &shutdown).await?;
                self.generation = source.assignment_generation();
                self.taken.clear();
                self.waiting.clear();
                metrics::gauge!(m::PIPELINE_PENDING).set(0.0);
            }
            if !messages.is_empty() {
                metrics::histogram!(m::PIPELINE_BATCH_MESSAGES).record(messages.len() as f64);
            }
            self.process(messages, &shutdown).await;
            for (topic, partition, lag) in source.lag() {
                metrics::gauge!(m::PIPELINE_CONSUMER_LAG, "topic" => topic.label(), "partition" => partition.to_string())
                    .set(lag as f64);
            }
            let due = self.rows.len() as u64 >= self.config.batch_rows
                || self.last_write.elapsed()
                    >= Duration::from_millis(self.config.flush_interval_ms);
            if due {
                self.write_and_commit(&mut *source, &shutdown).await?;
            }
        }
        // Stop: write and commit what is settled; waiting conversions stay uncommitted
        // and are delivered again after the restart, unless the bus cannot do that.
        let never = Shutdown::never();
        if self.drain_on_stop {
            loop {
                let messages = source
                    .next_batch(self.config.poll_batch, Duration::from_millis(20))
                    .await?;
                if messages.is_empty() {
                    break;
                }
                self.process(messages, &never).await;
            }
            self.config.late_grace_secs = 0;
            self.process(Vec::new(), &never).await;
        }
        self.write_and_commit(&mut *source, &never).await?;
        tracing::info!(waiting = self.waiting.len(), "pipeline stopped");
        Ok(())
    }

    /// Processes one batch of messages, retrying the state store until it answers.
    async fn process(&mut self, messages: Vec<Delivered>, shutdown: &Shutdown) {
        let mut clicks = Vec::new();
        let mut conversions = Vec::new();
        for msg in messages {
            let next = self
                .taken
                .entry((msg.topic, msg.partition))
                .or_insert(msg.offset + 1);
            *next = (*next).max(msg.offset + 1);
            match msg.topic {
                Topic::Clicks => match self.decode_click(&msg) {
                    Ok(c) => clicks.push(c),
                    Err(reason) => {
                        if !self.dead_letter(&msg, &reason, shutdown).await {
                            // Stopping before the letter was written: commit nothing more.
                            self.commit_blocked = true;
                        }
                    }
                },
                Topic::Conversions => match self.decode_conversion(&msg) {
                    Ok(c) => conversions.push(Waiting {
                        event: c,
                        at: (msg.topic, msg.partition, msg.offset),
                        since: Instant::now(),
                        needs: Vec::new(),
                        forced: false,
                    }),
                    Err(reason) => {
                        if !self.dead_letter(&msg, &reason, shutdown).await {
                            // Stopping before the letter was written: commit nothing more.
                            self.commit_blocked = true;
                        }
                    }
                },
                Topic::Dlq => {}
            }
        }
        let round = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let unique = loop {
            match self.mark_clicks(&clicks).await {
                Ok(unique) => break unique,
                Err(e) => {
                    if shutdown.is_fired() {
                        // These clicks have no rows: commit nothing more, so that
                        // they are delivered again after the restart.
                        self.commit_blocked = true;
                        return;
                    }
                    tracing::warn!(error = %e, "state store unavailable, pausing");
                    metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "redis")
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let clicks_marked = clicks.len();
        // The events become their rows: moved, not cloned, once the state has them.
        for ((c, _), u) in clicks.into_iter().zip(unique) {
            let verdict = match dedup::precheck(&c) {
                Some(v) => v,
                None if u => dedup::ClickVerdict::Unique,
                None => dedup::ClickVerdict::Duplicate,
            };
            metrics::counter!(m::PIPELINE_CLICK_DEDUP_TOTAL, "result" => verdict.as_str())
                .increment(1);
            metrics::counter!(m::PIPELINE_MESSAGES_TOTAL, "topic" => "clicks", "result" => "ok")
                .increment(1);
            self.rows.clicks.push(ClickRow::new(c, u));
        }
        let clicks_done = round.elapsed();
        // Conversions waiting from earlier rounds go first: their dependencies may have
        // arrived with this batch.
        let mut queue = std::mem::take(&mut self.waiting);
        queue.extend(conversions);
        // Past the pending bound, the oldest settle now with what there is.
        let overflow = queue.len().saturating_sub(self.config.max_pending);
        let grace = Duration::from_secs(self.config.late_grace_secs);
        for w in queue.iter_mut().take(overflow) {
            w.forced = true;
        }
        let ready = self.ready(&queue, grace).await;
        let mut groups: Vec<Vec<(Waiting, bool)>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (w, ready) in queue.into_iter().zip(ready) {
            let key = w.event.partition_key();
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push((w, ready));
        }
        let mut backoff = Duration::from_millis(100);
        while !groups.is_empty() {
            let outcomes: Vec<GroupOutcome> = futures_util::stream::iter(groups)
                .map(|g| self.settle_group(g))
                .buffer_unordered(SETTLE_CONCURRENCY)
                .collect()
                .await;
            groups = Vec::new();
            let mut failure = None;
            for o in outcomes {
                for (event, memo) in o.settled {
                    self.emit(&event, &memo);
                }
                self.waiting.extend(o.waiting);
                if let Some((rest, e)) = o.failed {
                    groups.push(rest);
                    failure = Some(e);
                }
            }
            if let Some(e) = failure {
                if shutdown.is_fired() {
                    // Not settled: stays uncommitted, delivered again.
                    self.waiting
                        .extend(groups.into_iter().flatten().map(|(w, _)| w));
                    break;
                }
                tracing::warn!(error = %e, "state store unavailable, pausing");
                metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "redis").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        metrics::gauge!(m::PIPELINE_PENDING).set(self.waiting.len() as f64);
        tracing::debug!(
            clicks = clicks_marked,
            clicks_ms = clicks_done.as_millis() as u64,
            conversions_ms = (round.elapsed() - clicks_done).as_millis() as u64,
            waiting = self.waiting.len(),
            "round processed"
        );
    }

    /// Which conversions are worth settling now: new ones, those past their grace, and
    /// those whose click, first sale or order has appeared, probed for all at once so
    /// that thousands waiting cost one round trip a round, not three each.
    async fn ready(&self, queue: &[Waiting], grace: Duration) -> Vec<bool> {
        let mut ready: Vec<bool> = queue
            .iter()
            .map(|w| w.needs.is_empty() || w.forced || w.since.elapsed() >= grace)
            .collect();
        let probe: Vec<(usize, &String)> = queue
            .iter()
            .enumerate()
            .filter(|(i, _)| !ready[*i])
            .flat_map(|(i, w)| w.needs.iter().map(move |k| (i, k)))
            .collect();
        if probe.is_empty() {
            return ready;
        }
        let keys: Vec<String> = probe.iter().map(|(_, k)| (*k).clone()).collect();
        match self.state.exist(&keys).await {
            Ok(found) => {
                for ((i, _), exists) in probe.iter().zip(found) {
                    ready[*i] |= exists;
                }
            }
            // Unreachable now: they stay waiting and are probed again next round.
            Err(e) => tracing::warn!(error = %e, "could not probe waiting conversions"),
        }
        ready
    }

    /// Settles one partition key's conversions in order; stops at the first state failure
    /// and hands back what is left. Once one waits, the rest of the key waits behind it:
    /// what it waits for may appear meanwhile (settled by another key's group), and a
    /// later conversion of the key must not overtake it (two refunds of one order).
    async fn settle_group(&self, group: Vec<(Waiting, bool)>) -> GroupOutcome {
        let mut out = GroupOutcome::default();
        let mut items = group.into_iter();
        while let Some((mut w, ready)) = items.next() {
            if !out.waiting.is_empty() || !ready {
                out.waiting.push(w);
                continue;
            }
            let force =
                w.forced || w.since.elapsed() >= Duration::from_secs(self.config.late_grace_secs);
            match self.settle_one(&w.event, force).await {
                Ok(Settled::Done(memo)) => out.settled.push((w.event, memo)),
                Ok(Settled::Wait(needs)) => {
                    w.needs = needs;
                    out.waiting.push(w)
                }
                Err(e) => {
                    let mut rest = vec![(w, ready)];
                    rest.extend(items);
                    out.failed = Some((rest, e));
                    break;
                }
            }
        }
        out
    }

    fn decode_click(&self, msg: &Delivered) -> Result<(ClickEvent, Arc<Program>), String> {
        let e: ClickEvent =
            serde_json::from_slice(&msg.payload).map_err(|e| format!("undecodable click: {e}"))?;
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        let program = self
            .registry
            .program(&e.program_id)
            .ok_or_else(|| format!("unknown program {}", e.program_id))?;
        Ok((e, program))
    }

    fn decode_conversion(&self, msg: &Delivered) -> Result<ConversionEvent, String> {
        let e: ConversionEvent = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("undecodable conversion: {e}"))?;
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        if self.registry.program(&e.program_id).is_none() {
            return Err(format!("unknown program {}", e.program_id));
        }
        if e.amount.is_sign_negative() || e.amount > money::max_amount() {
            return Err("amount out of range".into());
        }
        Ok(e)
    }

    /// Publishes a dead letter; `false` when stopping before the broker took it.
    async fn dead_letter(&self, msg: &Delivered, reason: &str, shutdown: &Shutdown) -> bool {
        use base64::Engine;
        tracing::warn!(
            topic = msg.topic.label(),
            partition = msg.partition,
            offset = msg.offset,
            reason,
            "dead letter"
        );
        let letter = DeadLetter {
            v: 1,
            topic: msg.topic.label(),
            partition: msg.partition,
            offset: msg.offset,
            reason,
            original_base64: base64::engine::general_purpose::STANDARD.encode(&msg.payload),
            failed_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let payload = serde_json::to_vec(&letter).unwrap_or_default();
        let key = format!("{}:{}:{}", msg.topic.label(), msg.partition, msg.offset);
        let mut backoff = Duration::from_millis(100);
        // The message's offset is committed with the batch: the letter must be written.
        while let Err(e) = self.dlq.publish_dlq(key.as_bytes(), &payload).await {
            if shutdown.is_fired() {
                return false;
            }
            tracing::warn!(error = %e, "dead-letter topic unavailable, retrying");
            metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "kafka").increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        metrics::counter!(m::PIPELINE_MESSAGES_TOTAL, "topic" => msg.topic.label(), "result" => "dlq").increment(1);
        true
    }

    /// Records the clicks in the state store; whether each is unique.
    async fn mark_clicks(
        &self,
        clicks: &[(ClickEvent, Arc<Program>)],
    ) -> Result<Vec<bool>, StateError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<ClickMark> = clicks
            .iter()
            .map(|(c, p)| ClickMark {
                fingerprint: dedup::click_fingerprint(c),
                click_id: c.click_id,
                ts: c.ts,
                window_secs: p.click_dedup_window_secs,
                candidate: dedup::precheck(c).is_none(),
                program_id: c.program_id.clone(),
                visitor_id: c.visitor_id,
                partner_id: c.partner_id.clone(),
                campaign: c.campaign.clone().unwrap_or_default(),
                // Journeys reach back `lookback_days`; a day more covers late conversions.
                keep: Duration::from_secs(p.lookback_secs() + 86_400),
            })
            .collect();
        self.state.record_clicks(&marks).await
    }

    /// Settles one conversion, or says it must wait. `force`: the grace is over, settle
    /// with what there is.
    async fn settle_one(&self, e: &ConversionEvent, force: bool) -> Result<Settled, StateError> {
        if let Some(memo) = self.state.memo(e.conversion_id).await? {
            return Ok(Settled::Done(Box::new(memo)));
        }
        let Some(program) = self.registry.program(&e.program_id) else {
            // Deleted since decoding; nothing can be credited.
            let d = Decision::uncredited(ConversionStatus::Unattributed, Decimal::ZERO, "");
            return self.commit_plain(e, d).await;
        };
        let key = dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id);
        if !self.state.claim(&key, e.conversion_id).await? {
            let settled = program
                .fx
                .get(&e.currency)
                .map(|r| e.amount * *r)
                .unwrap_or_default();
            let d = Decision::uncredited(ConversionStatus::Duplicate, settled, &program.currency);
            return self.commit_plain(e, d).await;
        }
        // A refund's CAS may lose to a concurrent refund of the same order: resolve again.
        for _ in 0..16 {
            let (memo, effects) = match self.decide(&program, e, force).await? {
                Ok(decided) => decided,
                Err(needs) => return Ok(Settled::Wait(needs)),
            };
            match self.state.commit(e.conversion_id, &memo, &effects).await? {
                CommitOutcome::Committed => return Ok(Settled::Done(Box::new(memo))),
                CommitOutcome::AlreadySettled(m) => return Ok(Settled::Done(Box::new(m))),
                CommitOutcome::Conflict => continue,
            }
        }
        Err(StateError(format!(
            "conversion {} kept conflicting",
            e.conversion_id
        )))
    }

    /// Stores a decision that credits nobody and changes no other state.
    async fn commit_plain(
        &self,
        e: &ConversionEvent,
        decision: Decision,
    ) -> Result<Settled, StateError> {
        let memo = Memo {
            decision,
            campaigns: Vec::new(),
        };
        Ok(
            match self.state.commit(e.conversion_id, &memo, &[]).await? {
                CommitOutcome::AlreadySettled(m) => Settled::Done(Box::new(m)),
                _ => Settled::Done(Box::new(memo)),
            },
        )
    }

    /// Resolves the credit from state and settles; the keys to wait for when it must.
    async fn decide(
        &self,
        program: &Program,
        e: &ConversionEvent,
        force: bool,
    ) -> Result<Result<(Memo, Vec<Effect>), Vec<String>>, StateError> {
        let keys = self.state.keys();
        let mut campaigns = Vec::new();
        let mut order_raw: Option<String> = None;
        let mut first_sale: Option<FirstSale> = None;
        let mut order: Option<OrderRecord> = None;
        let credit_kind: CreditKind = match e.kind {
            ConversionKind::Sale | ConversionKind::Lead | ConversionKind::Signup => {
                let visitor = match e.click_id {
                    Some(click) => match self.state.click_visitor(click).await? {
                        Some(v) => Some(v),
                        None if !force => return Ok(Err(vec![keys.click(click)])),
                        None => e.visitor_id,
                    },
                    None => e.visitor_id,
                };
                let touches = match visitor {
                    Some(v) => {
                        let from = e.occurred_at
                            - chrono::Duration::days(i64::from(program.lookback_days));
                        self.state
                            .journey(&program.id, v, from, e.occurred_at)
                            .await?
                    }
                    None => Vec::new(),
                };
                let selected = self.select(program, e, touches);
                if !selected.is_empty() {
                    campaigns = selected.iter().map(|t| t.campaign.clone()).collect();
                    CreditKind::Journey(
                        selected
                            .into_iter()
                            .map(|t| Touch {
                                click_id: t.click_id,
                                partner_id: t.partner_id,
                                ts: t.ts,
                            })
                            .collect(),
                    )
                } else if let Some(partner) = self.referral_partner(program, e) {
                    campaigns = vec![self.referral_campaign(e)];
                    CreditKind::Referral(partner)
                } else {
                    CreditKind::None
                }
            }
            ConversionKind::Recurring => {
                let customer = e.customer_id.as_deref().unwrap_or("");
                match self
                    .state
                    .get(&keys.first_sale(&program.id, customer))
                    .await?
                {
                    Some(raw) => {
                        first_sale = serde_json::from_str::<FirstSale>(&raw).ok();
                        campaigns = first_sale
                            .as_ref()
                            .map(|f| f.campaigns.clone())
                            .unwrap_or_default();
                        CreditKind::Recurring
                    }
                    // A sale of this customer settled and credited nobody: nothing to wait for.
                    None if !force
                        && self
                            .state
                            .get(&keys.customer(&program.id, customer))
                            .await?
                            .is_none() =>
                    {
                        return Ok(Err(vec![
                            keys.first_sale(&program.id, customer),
                            keys.customer(&program.id, customer),
                        ]))
                    }
                    None => CreditKind::None,
                }
            }
            ConversionKind::Refund => {
                let original = e.original_order_id.as_deref().unwrap_or("");
                match self.state.get(&keys.order(&program.id, original)).await? {
                    Some(raw) => {
                        order = serde_json::from_str(&raw).ok();
                        order_raw = Some(raw);
                        CreditKind::Refund
                    }
                    None if !force => return Ok(Err(vec![keys.order(&program.id, original)])),
                    None => CreditKind::None,
                }
            }
        };
        let credit = match &credit_kind {
            CreditKind::Journey(t) => Credit::Journey(t.clone()),
            CreditKind::Referral(p) => Credit::Referral(p.clone()),
            CreditKind::Recurring => first_sale
                .as_ref()
                .map(Credit::Recurring)
                .unwrap_or(Credit::None),
            CreditKind::Refund => order.as_ref().map(Credit::Refund).unwrap_or(Credit::None),
            CreditKind::None => Credit::None,
        };
        // Volume bonuses read last month's counts of the partners credited.
        let month = settle::previous_month(e.occurred_at);
        let mut volumes: HashMap<String, u64> = HashMap::new();
        if e.kind == ConversionKind::Sale {
            let partners: Vec<String> = match &credit {
                Credit::Journey(t) => t.iter().map(|t| t.partner_id.clone()).collect(),
                Credit::Referral(p) => vec![p.clone()],
                _ => vec![],
            };
            for p in partners {
                if let std::collections::hash_map::Entry::Vacant(slot) = volumes.entry(p) {
                    let key = keys.count(&program.id, slot.key(), month);
                    slot.insert(self.state.count(&key).await?);
                }
            }
        }
        let decision = settle::settle(program, e, credit, &*self.registry, |p, _| {
            volumes.get(p).copied().unwrap_or(0)
        });
        let memo = Memo {
            decision,
            campaigns,
        };
        let effects = self.effects(program, e, &memo, order.as_ref(), order_raw)?;
        Ok(Ok((memo, effects)))
    }

    fn select(
        &self,
        program: &Program,
        e: &ConversionEvent,
        touches: Vec<StoredTouch>,
    ) -> Vec<StoredTouch> {
        // Select on engine touches, then map back to the stored ones for campaigns.
        let by_id: HashMap<Uuid, StoredTouch> =
            touches.iter().map(|t| (t.click_id, t.clone())).collect();
        let engine: Vec<Touch> = touches
            .into_iter()
            .map(|t| Touch {
                click_id: t.click_id,
                partner_id: t.partner_id,
                ts: t.ts,
            })
            .collect();
        journey::select(
            engine,
            e.occurred_at,
            program.lookback_days,
            program.max_touches,
            |p| settle::is_active(&*self.registry, p),
        )
        .into_iter()
        .filter_map(|t| by_id.get(&t.click_id).cloned())
        .collect()
    }

    fn referral_partner(&self, program: &Program, e: &ConversionEvent) -> Option<String> {
        let code = e.referral_code.as_deref()?;
        let link = self.registry.link(code)?;
        (link.link.program_id == program.id
            && settle::is_active(&*self.registry, &link.link.partner_id))
        .then(|| link.link.partner_id.clone())
    }

    fn referral_campaign(&self, e: &ConversionEvent) -> String {
        e.referral_code
            .as_deref()
            .and_then(|c| self.registry.link(c))
            .and_then(|l| l.link.campaign.clone())
            .unwrap_or_default()
    }

    /// The state changes a decision implies.
    fn effects(
        &self,
        program: &Program,
        e: &ConversionEvent,
        memo: &Memo,
        order: Option<&OrderRecord>,
        order_raw: Option<String>,
    ) -> Result<Vec<Effect>, StateError> {
        let keys = self.state.keys();
        let d = &memo.decision;
        let mut effects = Vec::new();
        if d.status == ConversionStatus::Duplicate {
            return Ok(effects);
        }
        let attributed = d.status == ConversionStatus::Attributed;
        // Every settled order is recorded, earning or not, so that its refunds never wait
        // out the grace for an order that exists but earned nothing.
        if e.kind != ConversionKind::Refund {
            let record = OrderRecord {
                conversion_id: e.conversion_id,
                settled_amount: d.settled_amount,
                rows: d.earned_rows(),
            };
            effects.push(Effect::SetIfAbsent {
                key: keys.order(&program.id, &e.order_id),
                value: to_json(&record)?,
                ttl: Some(state::ORDER_TTL),
            });
        }
        if let (ConversionKind::Sale, Some(customer), false) = (e.kind, &e.customer_id, attributed)
        {
            // Recurring payments of this customer need not wait for a sale: it came and
            // credited nobody.
            effects.push(Effect::SetIfAbsent {
                key: keys.customer(&program.id, customer),
                value: e.conversion_id.to_string(),
                ttl: Some(state::ORDER_TTL),
            });
        }
        if !attributed {
            return Ok(effects);
        }
        if e.kind.is_journey_kind() {
            let month = settle::month_of(e.occurred_at);
            for (partner, _) in d.shares() {
                effects.push(Effect::CountOnce {
                    counter: keys.count(&program.id, &partner, month),
                    marker: keys.count_marker(e.conversion_id, &partner),
                    ttl: state::COUNT_TTL,
                });
            }
        }
        if e.kind == ConversionKind::Sale {
            if let Some(customer) = &e.customer_id {
                let shares = d.shares();
                let campaigns = shares
                    .iter()
                    .map(|(p, _)| heaviest_campaign(memo, p))
                    .collect();
                let first = FirstSale {
                    conversion_id: e.conversion_id,
                    occurred_at: e.occurred_at,
                    model: d.model.clone(),
                    shares,
                    campaigns,
                };
                // Lifetime plans need the first sale forever; others until the term ends.
                let ttl = program
                    .commission
                    .recurring
                    .months
                    .map(|m| Duration::from_secs(u64::from(m + 1) * 31 * 86_400));
                effects.push(Effect::SetIfAbsent {
                    key: keys.first_sale(&program.id, customer),
                    value: to_json(&first)?,
                    ttl,
                });
            }
        }
        if let (ConversionKind::Refund, Some(order), Some(raw), false) =
            (e.kind, order, order_raw, d.rows.is_empty())
        {
            let mut updated = order.clone();
            updated.book(d);
            effects.push(Effect::CompareAndSet {
                key: keys.order(&program.id, e.original_order_id.as_deref().unwrap_or("")),
                expected: raw,
                value: to_json(&updated)?,
                ttl: state::ORDER_TTL,
            });
        }
        Ok(effects)
    }

    fn emit(&mut self, e: &ConversionEvent, memo: &Memo) {
        let d = &memo.decision;
        let (conversion, attributions, commissions) = conversion_rows(e, d, &memo.campaigns);
        metrics::counter!(m::PIPELINE_MESSAGES_TOTAL, "topic" => "conversions", "result" => "ok")
            .increment(1);
        metrics::counter!(m::PIPELINE_CONVERSIONS_TOTAL, "kind" => e.kind.as_str(), "status" => d.status.as_str())
            .increment(1);
        if d.status == ConversionStatus::Attributed && !d.model.is_empty() {
            metrics::counter!(m::PIPELINE_ATTRIBUTIONS_TOTAL, "model" => model_label(&d.model))
                .increment(1);
        }
        let minor = money::minor_units(&d.currency);
        for r in &d.rows {
            let units = (r.amount * Decimal::from(10u64.pow(minor))).trunc();
            let units = u64::try_from(units.abs().mantissa()).unwrap_or(0);
            metrics::counter!(m::PIPELINE_COMMISSION_MINOR_UNITS_TOTAL, "currency" => currency_label(&d.currency), "kind" => r.kind.as_str())
                .increment(units);
        }
        self.rows.conversions.push(conversion);
        self.rows.attributions.extend(attributions);
        self.rows.commissions.extend(commissions);
    }

    /// Writes the pending rows (retrying transient failures) and commits the offsets
    /// they cover, stopping short of any conversion still waiting.
    async fn write_and_commit(
        &mut self,
        source: &mut dyn EventSource,
        shutdown: &Shutdown,
    ) -> Result<(), PipelineError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sink.write(&self.rows).await {
                Ok(()) => break,
                Err(SinkError::Fatal(e)) => return Err(SinkError::Fatal(e).into()),
                Err(e) => {
                    if shutdown.is_fired() {
                        // Nothing is committed: the rows come back after the restart.
                        tracing::warn!(error = %e, "stopping with rows unwritten; they will be replayed");
                        return Ok(());
                    }
                    tracing::warn!(error = %e, rows = self.rows.len(), "sink unavailable, retrying");
                    metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "clickhouse")
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.rows = Batch::default();
        self.last_write = Instant::now();
        let mut positions: Vec<Position> = self
            .taken
            .iter()
            .map(|(&(topic, partition), &next)| Position {
                topic,
                partition,
                next_offset: next,
            })
            .collect();
        for w in &self.waiting {
            let (topic, partition, offset) = w.at;
            if let Some(p) = positions
                .iter_mut()
                .find(|p| p.topic == topic && p.partition == partition)
            {
                p.next_offset = p.next_offset.min(offset);
            }
        }
        if positions.is_empty() || self.commit_blocked {
            return Ok(());
        }
        match source.commit(&positions).await {
            Ok(()) => metrics::counter!(m::PIPELINE_COMMITS_TOTAL).increment(1),
            // Uncommitted offsets only mean replays, which are harmless.
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
        Ok(())
    }
}

/// The campaign of the partner's heaviest touch (the latest among equals).
fn heaviest_campaign(memo: &Memo, partner: &str) -> String {
    memo.decision
        .attributions
        .iter()
        .zip(&memo.campaigns)
        .filter(|(a, _)| a.partner_id == partner)
        .max_by(|(a, _), (b, _)| a.weight.cmp(&b.weight).then(a.position.cmp(&b.position)))
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

enum CreditKind {
    None,
    Journey(Vec<Touch>),
    Referral(String),
    Recurring,
    Refund,
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
    money::KNOWN
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("other")
}

/// JSON encoding of the records stored in state.
fn to_json<T: Serialize>(v: &T) -> Result<String, StateError> {
    serde_json::to_string(v).map_err(|e| StateError(e.to_string()))
}
