//! The pipeline's consumer-group member (and the webhook outbox's).
//!
//! One thread polls the consumer and hands messages over a bounded channel, tagged with
//! the assignment generation they were fetched in: messages of a generation that has
//! passed are dropped, as their partitions restart from the committed offsets. Rebalance
//! callbacks run on that thread, which lets a revocation wait (as Quickwit's and
//! Vector's Kafka sources do): before the partitions go, the pipeline writes and commits
//! what it settled of them and forgets what waits, then releases the rebalance
//! ([`EventSource::revoking`]). A pipeline that does not answer within
//! [`REVOKE_PATIENCE`] is not waited for; it notices the new generation afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify};

use super::{base_config, classify, fatal, topic_name};
use crate::bus::{BusError, Delivered, EventSource, Position, Topic};
use crate::config::KafkaConfig;

/// How long a revocation waits for the pipeline to write and commit what it settled.
pub const REVOKE_PATIENCE: Duration = Duration::from_secs(10);
/// Messages fetched and not yet taken, at most.
const HANDOVER: usize = 10_000;

/// Tracks rebalances, and the lag librdkafka reports in its statistics.
pub struct ConsumerState {
    generation: AtomicU64,
    lag: Mutex<Vec<(String, i32, i64)>>,
    /// A revocation waiting for the pipeline, when this member drains on revoke.
    revokes: Option<Revokes>,
}

/// The revocation a rebalance waits on, and the pipeline's wake-up.
struct Revokes {
    names: HashMap<String, Topic>,
    waiting: Mutex<Option<Revocation>>,
    notify: Notify,
    /// The source is gone (or going): nobody will answer.
    closed: AtomicBool,
}

struct Revocation {
    partitions: Vec<(Topic, i32)>,
    done: sync_mpsc::SyncSender<()>,
}

impl Revokes {
    /// On the poll thread, inside the rebalance: waits for the pipeline to drain.
    fn wait_for_drain(&self, tpl: &TopicPartitionList) {
        let partitions: Vec<(Topic, i32)> = tpl
            .elements()
            .iter()
            .filter_map(|e| Some((*self.names.get(e.topic())?, e.partition())))
            .collect();
        if partitions.is_empty() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        let (done, drained) = sync_mpsc::sync_channel(1);
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Revocation { partitions, done });
        self.notify.notify_one();
        match drained.recv_timeout(REVOKE_PATIENCE) {
            Ok(()) => tracing::info!("revoked partitions drained before the rebalance"),
            Err(_) => {
                let unclaimed = self
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if unclaimed.is_none() {
                    // Claimed just now: the pipeline is emptying the handover, then
                    // answers; going on before that would lose what it empties.
                    let _ = drained.recv();
                    return;
                }
                tracing::warn!(
                    "the pipeline did not drain the revoked partitions in time; the \
                     rebalance goes on and their new owner replays what was not committed"
                );
            }
        }
    }
}

/// The consumer's context: a handle on the shared [`ConsumerState`].
pub struct ConsumerCtx(Arc<ConsumerState>);

impl ClientContext for ConsumerCtx {
    fn stats(&self, stats: Statistics) {
        let mut lag = Vec::new();
        for (name, topic) in stats.topics {
            for (partition, p) in topic.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    lag.push((name.clone(), partition, p.consumer_lag));
                }
            }
        }
        *self.0.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Some(revokes)) = (rebalance, &self.0.revokes) {
            revokes.wait_for_drain(tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type GroupConsumer = BaseConsumer<ConsumerCtx>;

/// What the poll thread hands over: a message with the generation it was fetched in,
/// or an error.
enum Polled {
    Message(u64, Delivered),
    Error(KafkaError),
}

/// A consumer-group member reading clicks and conversions.
pub struct KafkaSource {
    consumer: Arc<GroupConsumer>,
    state: Arc<ConsumerState>,
    /// Messages from the poll thread.
    polled: mpsc::Receiver<Polled>,
    names: HashMap<String, Topic>,
    topics: crate::config::TopicsConfig,
    partitions: Vec<(Topic, i32)>,
    /// Next offset after what this member was handed, per partition, in the
    /// assignment generation `read_generation`.
    read: HashMap<(Topic, i32), i64>,
    read_generation: u64,
    /// Ends of the owned partitions, kept fresh by a watcher thread.
    ends: Arc<Mutex<HashMap<(Topic, i32), End>>>,
    /// Stops the watcher and poll threads.
    stop: Arc<AtomicBool>,
}

/// Where an owned partition ends, and where this group starts reading it.
#[derive(Debug, Clone, Copy)]
struct End {
    high: i64,
    start: i64,
}

/// How often the watcher asks the brokers where the owned partitions end.
const END_POLL: Duration = Duration::from_millis(200);

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = &self.state.revokes {
            // The consumer's close revokes too: nobody is left to drain.
            r.closed.store(true, Ordering::SeqCst);
            if let Some(w) = r
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                let _ = w.done.try_send(());
            }
        }
    }
}

/// Asks the brokers, until stopped, where each owned partition ends (its high
/// watermark, by ListOffsets) and where the group resumes it (its committed offset):
/// what tells a partition read to its end. The fetch responses' own watermarks are not
/// relied on: every broker must answer ListOffsets exactly.
fn watch_ends(
    consumer: Arc<GroupConsumer>,
    names: HashMap<String, Topic>,
    ends: Arc<Mutex<HashMap<(Topic, i32), End>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(END_POLL);
        let Ok(assignment) = consumer.assignment() else {
            continue;
        };
        let committed = consumer
            .committed_offsets(assignment.clone(), Duration::from_secs(2))
            .ok();
        let mut fresh = HashMap::new();
        for e in assignment.elements() {
            let Some(topic) = names.get(e.topic()) else {
                continue;
            };
            let Ok((low, high)) =
                consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
            else {
                continue;
            };
            let resumed = committed
                .as_ref()
                .and_then(|c| c.find_partition(e.topic(), e.partition()))
                .and_then(|p| match p.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low);
            fresh.insert(
                (*topic, e.partition()),
                End {
                    high,
                    start: resumed.max(low),
                },
            );
        }
        *ends.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

impl KafkaSource {
    /// Joins `group_id` (as static member `instance_id` unless empty) and subscribes to
    /// the click and conversion topics, whose partitions are `partitions`
    /// ([`super::partitions_of`]). A revocation waits for the pipeline's drain.
    pub fn new(
        cfg: &KafkaConfig,
        group_id: &str,
        instance_id: &str,
        partitions: Vec<(Topic, i32)>,
    ) -> Result<Self, BusError> {
        let topics = [Topic::Clicks, Topic::Conversions];
        let names = names(cfg, &topics);
        let revokes = Revokes {
            names: names.clone(),
            waiting: Mutex::new(None),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        };
        Self::subscribe(
            cfg,
            (group_id, instance_id),
            names,
            partitions,
            Some(revokes),
        )
    }

    /// Joins `group_id` reading the webhook outbox (SPEC §3.6). Its revocations do not
    /// wait: delivery commits only what the queues hold, at any time.
    pub fn outbox(cfg: &KafkaConfig, group_id: &str, instance_id: &str) -> Result<Self, BusError> {
        let names = names(cfg, &[Topic::Webhooks]);
        Self::subscribe(cfg, (group_id, instance_id), names, Vec::new(), None)
    }

    fn subscribe(
        cfg: &KafkaConfig,
        (group_id, instance_id): (&str, &str),
        names: HashMap<String, Topic>,
        partitions: Vec<(Topic, i32)>,
        revokes: Option<Revokes>,
    ) -> Result<Self, BusError> {
        let state = Arc::new(ConsumerState {
            generation: AtomicU64::new(0),
            lag: Mutex::new(Vec::new()),
            revokes,
        });
        let mut config = base_config(cfg);
        if !instance_id.is_empty() {
            config.set("group.instance.id", instance_id);
        }
        let consumer: GroupConsumer = config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("statistics.interval.ms", "5000")
            .set("fetch.wait.max.ms", "50")
            .create_with_context(ConsumerCtx(Arc::clone(&state)))
            .map_err(fatal)?;
        let subscribed: Vec<&str> = names.keys().map(String::as_str).collect();
        consumer.subscribe(&subscribed).map_err(fatal)?;
        let consumer = Arc::new(consumer);
        let ends = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, polled) = mpsc::channel(HANDOVER);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| BusError::Fatal(format!("cannot start thread {name}: {e}")))
        };
        let watcher = (
            Arc::clone(&consumer),
            names.clone(),
            Arc::clone(&ends),
            Arc::clone(&stop),
        );
        spawn(
            "touchline-ends",
            Box::new(move || watch_ends(watcher.0, watcher.1, watcher.2, watcher.3)),
        )?;
        let poller = (Arc::clone(&consumer), names.clone(), Arc::clone(&stop));
        spawn(
            "touchline-poll",
            Box::new(move || poll(&poller.0, &poller.1, &tx, &poller.2)),
        )?;
        Ok(KafkaSource {
            consumer,
            state,
            polled,
            names,
            topics: cfg.topics.clone(),
            partitions,
            read: HashMap::new(),
            read_generation: 0,
            ends,
            stop,
        })
    }

    fn topic_name(&self, t: Topic) -> &str {
        topic_name(&self.topics, t)
    }

    /// A message of this generation, or `None` for one fetched before a rebalance.
    fn current(&self, polled: Polled) -> Result<Option<Delivered>, KafkaError> {
        match polled {
            Polled::Message(generation, d) => {
                Ok((generation == self.assignment_generation()).then_some(d))
            }
            Polled::Error(e) => Err(e),
        }
    }
}

/// Topic names to topics.
fn names(cfg: &KafkaConfig, topics: &[Topic]) -> HashMap<String, Topic> {
    topics
        .iter()
        .map(|t| (topic_name(&cfg.topics, *t).to_string(), *t))
        .collect()
}

/// The poll thread: fetches, serves the rebalance callbacks, and hands messages over
/// until stopped or the source is gone. A full channel waits: the pipeline is behind.
fn poll(
    consumer: &GroupConsumer,
    names: &HashMap<String, Topic>,
    tx: &mpsc::Sender<Polled>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let polled = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => Polled::Error(e),
            Some(Ok(msg)) => {
                let Some(topic) = names.get(msg.topic()) else {
                    continue;
                };
                let generation = consumer.context().0.generation.load(Ordering::SeqCst);
                Polled::Message(
                    generation,
                    Delivered {
                        topic: *topic,
                        partition: msg.partition(),
                        offset: msg.offset(),
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    },
                )
            }
        };
        if tx.blocking_send(polled).is_err() {
            return;
        }
    }
}

#[async_trait]
impl EventSource for KafkaSource {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BusError> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        let state = Arc::clone(&self.state);
        // The first message of this generation, unless a revocation comes first.
        while out.is_empty() && self.revoking().is_none() {
            let revoked = async {
                match &state.revokes {
                    Some(r) => r.notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            let polled = tokio::select! {
                p = self.polled.recv() => p,
                _ = revoked => break,
                _ = tokio::time::sleep_until(deadline) => return Ok(out),
            };
            let polled = polled
                .ok_or_else(|| BusError::Fatal("the consumer's poll thread stopped".into()))?;
            out.extend(self.current(polled).map_err(classify)?);
        }
        // Take what is already there without waiting again.
        while out.len() < max {
            let Ok(polled) = self.polled.try_recv() else {
                break;
            };
            match self.current(polled) {
                Ok(d) => out.extend(d),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            }
        }
        let generation = self.assignment_generation();
        if generation != self.read_generation {
            // A rebalance restarts partitions from their committed offsets.
            self.read.clear();
            self.read_generation = generation;
        }
        for d in &out {
            let next = self.read.entry((d.topic, d.partition)).or_insert(0);
            *next = (*next).max(d.offset + 1);
        }
        Ok(out)
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), BusError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(
                self.topic_name(p.topic),
                p.partition,
                Offset::Offset(p.next_offset),
            )
            .map_err(fatal)?;
        }
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
            .map_err(classify)
    }

    fn assignment_generation(&self) -> u64 {
        self.state.generation.load(Ordering::SeqCst)
    }

    fn lag(&self) -> Vec<(Topic, i32, i64)> {
        let lag = self.state.lag.lock().unwrap_or_else(|e| e.into_inner());
        lag.iter()
            .filter_map(|(name, p, l)| self.names.get(name).map(|t| (*t, *p, *l)))
            .collect()
    }

    fn partitions(&self) -> Vec<(Topic, i32)> {
        self.partitions.clone()
    }

    fn owned(&self) -> Vec<((Topic, i32), bool)> {
        let Ok(assignment) = self.consumer.assignment() else {
            return Vec::new();
        };
        let ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        let same_generation = self.read_generation == self.assignment_generation();
        assignment
            .elements()
            .iter()
            .filter_map(|e| {
                let part = (*self.names.get(e.topic())?, e.partition());
                let at_end = ends.get(&part).is_some_and(|end| {
                    let read = self.read.get(&part).copied().filter(|_| same_generation);
                    read.unwrap_or(end.start).max(end.start) >= end.high
                });
                Some((part, at_end))
            })
            .collect()
    }

    fn revoking(&self) -> Option<Vec<(Topic, i32)>> {
        let revokes = self.state.revokes.as_ref()?;
        let waiting = revokes
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        waiting.as_ref().map(|w| w.partitions.clone())
    }

    fn release(&mut self) {
        let Some(revokes) = &self.state.revokes else {
            return;
        };
        let claimed = revokes
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(revocation) = claimed {
            // The poll thread waits in the rebalance: what is still here was fetched
            // before it, and its partitions restart from the committed offsets.
            while self.polled.try_recv().is_ok() {}
            // The assignment read under ends here, before the consumer gives it up: what
            // was read of it no longer says a partition is read to its end, so nothing
            // is released past the work just dropped while the old assignment lingers.
            self.state.generation.fetch_add(1, Ordering::SeqCst);
            let _ = revocation.done.try_send(());
        }
    }
}
