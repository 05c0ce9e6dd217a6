//! Kafka: the click producer, the conversion producer, the pipeline's consumer-group
//! member and topic administration.
//!
//! Clicks go through a `ThreadedProducer` whose own bounded queue is the edge's click
//! buffer (`edge.buffer_events`): a redirect enqueues and returns, librdkafka retries
//! while the broker is away (`message.timeout.ms = 0`: never give up), and a full queue
//! is an overflow the edge counts. Conversions go through a `FutureProducer` and are
//! acknowledged before the merchant gets its 202.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{BusError, Delivered, EventBus, EventSource, Overflow, Position, Topic};
use crate::config::KafkaConfig;
use crate::metrics as m;

/// Counts click deliveries; runs on librdkafka's poll thread.
pub struct ClickDeliveryContext;

impl ClientContext for ClickDeliveryContext {}

impl ProducerContext for ClickDeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => metrics::counter!(m::EDGE_CLICKS_DELIVERED_TOTAL).increment(1),
            Err((e, _)) => {
                metrics::counter!(m::EDGE_CLICK_DELIVERY_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, "click event refused by the broker");
            }
        }
    }
}

fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "touchline")
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.keepalive.enable", "true");
    c
}

/// The edge's and pipeline's producer side.
pub struct KafkaBus {
    clicks: ThreadedProducer<ClickDeliveryContext>,
    conversions: FutureProducer,
    topics: crate::config::TopicsConfig,
    ack_timeout: Duration,
}

impl KafkaBus {
    /// Connects both producers; `buffer_events` bounds the click queue.
    pub fn new(
        cfg: &KafkaConfig,
        buffer_events: usize,
        ack_timeout: Duration,
    ) -> Result<Self, BusError> {
        let clicks = base_config(cfg)
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("queue.buffering.max.messages", buffer_events.to_string())
            // Bytes are bounded too (1 GiB ceiling), so only the message count binds.
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "0")
            .set("acks", "all")
            .set("batch.num.messages", "10000")
            .create_with_context(ClickDeliveryContext)
            .map_err(fatal)?;
        let conversions = base_config(cfg)
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                ack_timeout.as_millis().max(1).to_string(),
            )
            .set("acks", "all")
            .create()
            .map_err(fatal)?;
        Ok(KafkaBus {
            clicks,
            conversions,
            topics: cfg.topics.clone(),
            ack_timeout,
        })
    }

    async fn publish_acked(&self, topic: &str, batch: &[(&[u8], &[u8])]) -> Result<(), BusError> {
        // Enqueue in order, then await every delivery together.
        let mut pending = Vec::with_capacity(batch.len());
        for (key, payload) in batch {
            let record = FutureRecord::to(topic).key(*key).payload(*payload);
            match self.conversions.send_result(record) {
                Ok(f) => pending.push(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(BusError::Unavailable("producer queue full".into()))
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
        for f in pending {
            match tokio::time::timeout(self.ack_timeout + Duration::from_secs(1), f).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => return Err(classify(e)),
                Ok(Err(_)) => {
                    return Err(BusError::Unavailable(
                        "producer dropped the delivery".into(),
                    ))
                }
                Err(_) => return Err(BusError::Unavailable("no acknowledgement in time".into())),
            }
        }
        Ok(())
    }
}

fn fatal(e: KafkaError) -> BusError {
    BusError::Fatal(e.to_string())
}

/// Timeouts and transport errors are worth a retry; the rest is final.
fn classify(e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::QueueFull
            | RDKafkaErrorCode::NotEnoughReplicas
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition,
        ) => BusError::Unavailable(e.to_string()),
        _ => BusError::Fatal(e.to_string()),
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn publish_click(&self, key: &[u8], payload: &[u8]) -> Result<(), Overflow> {
        let record = BaseRecord::to(&self.topics.clicks)
            .key(key)
            .payload(payload);
        match self.clicks.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(Overflow),
            Err((e, _)) => {
                // Not a full queue (a local error such as an oversized message): the
                // click is lost for good; count it where losses are counted.
                metrics::counter!(m::EDGE_CLICK_DELIVERY_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %e, "click event could not be enqueued");
                Ok(())
            }
        }
    }

    async fn publish_conversions(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError> {
        let refs: Vec<(&[u8], &[u8])> = batch
            .iter()
            .map(|(k, p)| (k.as_bytes(), p.as_slice()))
            .collect();
        self.publish_acked(&self.topics.conversions, &refs).await
    }

    async fn publish_dlq(&self, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        self.publish_acked(&self.topics.dlq, &[(key, payload)])
            .await
    }

    async fn publish_outbox(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError> {
        let refs: Vec<(&[u8], &[u8])> = batch
            .iter()
            .map(|(k, p)| (k.as_bytes(), p.as_slice()))
            .collect();
        self.publish_acked(&self.topics.webhooks, &refs).await
    }

    fn buffered(&self) -> usize {
        usize::try_from(self.clicks.in_flight_count()).unwrap_or(0)
    }

    async fn ping(&self) -> Result<(), BusError> {
        let client = self.conversions.clone();
        let topic = self.topics.conversions.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| BusError::Unavailable(e.to_string()))
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }

    async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Poll the queue instead of a blocking flush, so the runtime is not held.
        while self.clicks.in_flight_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.clicks.in_flight_count();
        if left > 0 {
            return Err(BusError::Unavailable(format!(
                "{left} click events still buffered"
            )));
        }
        Ok(())
    }
}

/// Checks that every topic exists, naming the first missing one.
pub async fn check_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), BusError> {
    let client: BaseConsumer = base_config(cfg).create().map_err(fatal)?;
    let wanted: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let brokers = cfg.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let md = client
            .fetch_metadata(None, timeout)
            .map_err(|e| BusError::Unavailable(format!("no answer from brokers {brokers}: {e}")))?;
        for t in &wanted {
            let found = md
                .topics()
                .iter()
                .any(|mt| mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty());
            if !found {
                return Err(BusError::Fatal(format!(
                    "topic {t} does not exist on {brokers}; run `touchline migrate`"
                )));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| BusError::Unavailable(e.to_string()))?
}

/// Every partition of the click and conversion topics, from the brokers' metadata.
pub async fn partitions_of(
    cfg: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<(Topic, i32)>, BusError> {
    let client: BaseConsumer = base_config(cfg).create().map_err(fatal)?;
    let wanted = [
        (cfg.topics.clicks.clone(), Topic::Clicks),
        (cfg.topics.conversions.clone(), Topic::Conversions),
    ];
    tokio::task::spawn_blocking(move || {
        let md = client
            .fetch_metadata(None, timeout)
            .map_err(|e| BusError::Unavailable(format!("no metadata from the brokers: {e}")))?;
        let mut out = Vec::new();
        for (name, topic) in &wanted {
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| BusError::Fatal(format!("topic {name} does not exist")))?;
            out.extend(t.partitions().iter().map(|p| (*topic, p.id())));
        }
        Ok(out)
    })
    .await
    .map_err(|e| BusError::Unavailable(e.to_string()))?
}

/// Creates the topics that do not exist yet; idempotent.
pub async fn create_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg).create().map_err(fatal)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.partitions_for(t),
                TopicReplication::Fixed(cfg.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &opts).await.map_err(classify)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(BusError::Fatal(format!(
                    "cannot create topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

fn topic_name(topics: &crate::config::TopicsConfig, t: Topic) -> &str {
    match t {
        Topic::Clicks => &topics.clicks,
        Topic::Conversions => &topics.conversions,
        Topic::Dlq => &topics.dlq,
        Topic::Webhooks => &topics.webhooks,
    }
}

/// Tracks rebalances, and the lag and read positions librdkafka reports in its
/// statistics.
pub struct ConsumerState {
    generation: AtomicU64,
    lag: Mutex<Vec<(String, i32, i64)>>,
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

/// A consumer-group member reading clicks and conversions.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<ConsumerCtx>>,
    state: Arc<ConsumerState>,
    names: HashMap<String, Topic>,
    topics: crate::config::TopicsConfig,
    partitions: Vec<(Topic, i32)>,
    /// Next offset after what this member was handed, per partition, in the
    /// assignment generation `read_generation`.
    read: HashMap<(Topic, i32), i64>,
    read_generation: u64,
    /// Ends of the owned partitions, kept fresh by a watcher thread.
    ends: Arc<Mutex<HashMap<(Topic, i32), End>>>,
    stop_watcher: Arc<std::sync::atomic::AtomicBool>,
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
        self.stop_watcher.store(true, Ordering::SeqCst);
    }
}

/// Asks the brokers, until stopped, where each owned partition ends (its high
/// watermark, by ListOffsets) and where the group resumes it (its committed offset):
/// what tells a partition read to its end. The fetch responses' own watermarks are not
/// relied on: every broker must answer ListOffsets exactly.
fn watch_ends(
    consumer: Arc<StreamConsumer<ConsumerCtx>>,
    names: HashMap<String, Topic>,
    ends: Arc<Mutex<HashMap<(Topic, i32), End>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
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
    /// ([`partitions_of`]).
    pub fn new(
        cfg: &KafkaConfig,
        group_id: &str,
        instance_id: &str,
        partitions: Vec<(Topic, i32)>,
    ) -> Result<Self, BusError> {
        Self::subscribe(
            cfg,
            group_id,
            instance_id,
            &[Topic::Clicks, Topic::Conversions],
            partitions,
        )
    }

    /// Joins `group_id` reading the webhook outbox (SPEC §3.6).
    pub fn outbox(cfg: &KafkaConfig, group_id: &str, instance_id: &str) -> Result<Self, BusError> {
        Self::subscribe(cfg, group_id, instance_id, &[Topic::Webhooks], Vec::new())
    }

    fn subscribe(
        cfg: &KafkaConfig,
        group_id: &str,
        instance_id: &str,
        topics: &[Topic],
        partitions: Vec<(Topic, i32)>,
    ) -> Result<Self, BusError> {
        let state = Arc::new(ConsumerState {
            generation: AtomicU64::new(0),
            lag: Mutex::new(Vec::new()),
        });
        let mut config = base_config(cfg);
        if !instance_id.is_empty() {
            config.set("group.instance.id", instance_id);
        }
        let consumer: StreamConsumer<ConsumerCtx> = config
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
        let names: HashMap<String, Topic> = topics
            .iter()
            .map(|t| (topic_name(&cfg.topics, *t).to_string(), *t))
            .collect();
        let subscribed: Vec<&str> = names.keys().map(String::as_str).collect();
        consumer.subscribe(&subscribed).map_err(fatal)?;
        let consumer = Arc::new(consumer);
        let ends = Arc::new(Mutex::new(HashMap::new()));
        let stop_watcher = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (consumer, names, ends, stop) = (
                Arc::clone(&consumer),
                names.clone(),
                Arc::clone(&ends),
                Arc::clone(&stop_watcher),
            );
            std::thread::Builder::new()
                .name("touchline-ends".into())
                .spawn(move || watch_ends(consumer, names, ends, stop))
                .map_err(|e| BusError::Fatal(format!("cannot start the watcher thread: {e}")))?;
        }
        Ok(KafkaSource {
            consumer,
            state,
            names,
            topics: cfg.topics.clone(),
            partitions,
            read: HashMap::new(),
            read_generation: 0,
            ends,
            stop_watcher,
        })
    }

    fn topic_name(&self, t: Topic) -> &str {
        topic_name(&self.topics, t)
    }

    fn convert(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Delivered> {
        let topic = *self.names.get(msg.topic())?;
        Some(Delivered {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }
}

#[async_trait]
impl EventSource for KafkaSource {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BusError> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(r) => r,
        };
        match first {
            Ok(msg) => out.extend(self.convert(&msg)),
            Err(e) => return Err(classify(e)),
        }
        // Take what is already there without waiting again.
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(msg)) => out.extend(self.convert(&msg)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
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
}
