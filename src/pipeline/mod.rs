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
mod advance;
mod commit;
mod counts;
mod dead_letter;
mod emit;
mod intake;
pub mod resolve;
pub mod schedule;
pub mod store;
mod tiers;
#[cfg(test)]
mod tiers_tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::Utc;

use crate::bus::{BusError, EventBus, EventSource, Topic};
use crate::config::PipelineConfig;
use crate::events::{ClickEvent, ConversionEvent};
use crate::metrics as m;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::sink::{Sink, SinkError};
use commit::Writes;
use emit::Output;
use intake::Queue;
use schedule::Part;
use store::{Candidate, StateError, StateStore};

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
    /// What has been taken and waits to be decided.
    queue: Queue,
    /// What has been decided and waits to be written.
    out: Output,
    /// The write under way and when the last one began.
    write: Writes,
    /// Tier moves made and the boundaries done (SPEC §10.2).
    tiers: tiers::Tiers,
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
            queue: Queue::default(),
            out: Output::default(),
            write: Writes::default(),
            tiers: tiers::Tiers::default(),
            started: (Utc::now(), Instant::now()),
            generation: 0,
            warned_split: None,
            drain_on_stop: false,
            commit_blocked: false,
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
    // Long on purpose: the loop's order (poll, revoke, take, advance, write, commit,
    // stop deadline, drain) is the pipeline's contract and reads best in one place.
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
                self.forget_partitions();
            }
            if !messages.is_empty() {
                metrics::histogram!(m::PIPELINE_BATCH_MESSAGES).record(messages.len() as f64);
            }
            self.take(messages, &shutdown).await;
            let (all, owned) = (source.partitions(), source.owned());
            self.warn_split(&all, &owned);
            let more = self.advance(all, owned, false, &shutdown).await;
            self.out.counts.flush();
            // With more already released, go on without waiting for messages.
            wait = if more { Duration::ZERO } else { idle };
            for (topic, partition, lag) in source.lag() {
                metrics::gauge!(m::PIPELINE_CONSUMER_LAG, "topic" => topic.label(), "partition" => partition.to_string())
                    .set(lag as f64);
            }
            if source.revoking().is_some() {
                self.drain_revoked(&mut *source, &shutdown).await?;
                continue;
            }
            let due = self.out.rows.len() as u64 >= self.config.batch_rows
                || self.write.last.elapsed()
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
            self.out.counts.flush();
        }
        self.write_and_commit(&mut *source, &deadline, true).await?;
        tracing::info!(
            clicks = self.queue.clicks.len(),
            conversions = self.queue.conversions.len(),
            "pipeline stopped"
        );
        Ok(())
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

    /// Forgets positions and what waits: after a rebalance every partition restarts
    /// from its committed offset (the assignor revokes them all), and what was taken
    /// of it comes again.
    fn forget_partitions(&mut self) {
        self.queue.taken.clear();
        self.queue.progress.clear();
        self.queue.clicks.clear();
        self.queue.conversions.clear();
    }

    /// Notes an event time read on a partition.
    fn saw(&mut self, part: Part, ms: i64) {
        let p = self.queue.progress.entry(part).or_default();
        p.latest_ms = Some(p.latest_ms.map_or(ms, |l| l.max(ms)));
    }

    /// The wall-clock time now, advanced by the monotonic clock since the start.
    fn now(&self) -> chrono::DateTime<Utc> {
        let (wall, at) = self.started;
        wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    //! Late arrival on the memory bus and store, on tokio's paused clock: the
    //! frontiers hold a conversion back for the grace, so a click the edge held back
    //! still counts, and one later than that does not.

    use super::counts::Counts;
    use super::emit::currency_label;
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::events::ConversionKind;
    use crate::registry::{MemoryStore, Program};
    use crate::sink::Batch;
    use rust_decimal::Decimal;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use uuid::Uuid;

    /// Rows the pipeline wrote, for assertions (unit tests only: the SPEC's sinks are
    /// tested against ClickHouse and files).
    #[derive(Default)]
    pub(super) struct Capture(pub(super) Mutex<Batch>);

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
            serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
        registry.put_program("acme", program).await.unwrap();
        let partner = crate::testkit::fixtures::partner("acme");
        registry.put_partner("alice", partner).await.unwrap();
        let link = crate::testkit::fixtures::link("alice-1", "acme", "alice");
        registry.create_link(link).await.unwrap();
        registry
    }

    fn click(id: u128, visitor: Uuid, ts: chrono::DateTime<Utc>) -> ClickEvent {
        crate::testkit::fixtures::click(id, visitor, ts)
    }

    fn sale(id: u128, click: u128, at: chrono::DateTime<Utc>) -> ConversionEvent {
        ConversionEvent {
            click_id: Some(Uuid::from_u128(click)),
            ..crate::testkit::fixtures::conversion(id, ConversionKind::Sale, "100", at)
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
            serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
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
