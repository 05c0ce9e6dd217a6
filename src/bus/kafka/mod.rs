//! Kafka: the click producer, the conversion producer and topic administration; the
//! consumer-group member is in [`source`].
//!
//! Clicks go through a `ThreadedProducer` whose own bounded queue is the edge's click
//! buffer (`edge.buffer_events`): a redirect enqueues and returns, librdkafka retries
//! while the broker is away (`message.timeout.ms = 0`: never give up), and a full queue
//! is an overflow the edge counts. Conversions go through a `FutureProducer` and are
//! acknowledged before the merchant gets its 202.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    ThreadedProducer,
};
use rdkafka::ClientContext;

mod source;

pub use source::{ConsumerCtx, ConsumerState, KafkaSource};

use super::{BusError, EventBus, Overflow, Topic};
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
