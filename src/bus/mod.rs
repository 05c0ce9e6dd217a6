//! The event bus between edge and pipeline: Kafka in the full stack, an in-process log in
//! the embedded default, behind the same two traits.

pub mod kafka;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;

/// The topics touchline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Clicks,
    Conversions,
    Dlq,
    /// The outbox of ledger events for webhook endpoints (SPEC §3.6).
    Webhooks,
}

impl Topic {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Topic::Clicks => "clicks",
            Topic::Conversions => "conversions",
            Topic::Dlq => "dlq",
            Topic::Webhooks => "webhooks",
        }
    }
}

/// A bus failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The broker did not acknowledge in time or is unreachable; worth retrying.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused for good (message too large, missing topic, …).
    #[error("broker refused: {0}")]
    Fatal(String),
}

/// The click buffer in front of the broker is full; the click was counted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("click buffer full")]
pub struct Overflow;

/// The edge's side of the bus.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Enqueues a click without waiting for the broker.
    fn publish_click(&self, key: &[u8], payload: &[u8]) -> Result<(), Overflow>;
    /// Publishes conversions and resolves once the broker acknowledged every one.
    async fn publish_conversions(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError>;
    /// Publishes one message to the dead-letter topic, acknowledged.
    async fn publish_dlq(&self, key: &[u8], payload: &[u8]) -> Result<(), BusError>;
    /// Publishes webhook events to the outbox, in order per key, and resolves once the
    /// broker acknowledged every one.
    async fn publish_outbox(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError>;
    /// Click events waiting for the broker.
    fn buffered(&self) -> usize;
    /// Is the broker reachable?
    async fn ping(&self) -> Result<(), BusError>;
    /// Waits up to `timeout` for buffered events to be delivered.
    async fn flush(&self, timeout: Duration) -> Result<(), BusError>;
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// A position to commit: the next offset to read of a topic partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: Topic,
    pub partition: i32,
    pub next_offset: i64,
}

/// The pipeline's side of the bus: a consumer-group member.
#[async_trait]
pub trait EventSource: Send + 'static {
    /// Up to `max` messages, waiting at most `wait` for the first.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BusError>;
    /// Commits positions (only ever after the rows they produced are durable).
    async fn commit(&mut self, positions: &[Position]) -> Result<(), BusError>;
    /// Partitions this member owns now; their generation changes on every rebalance.
    fn assignment_generation(&self) -> u64;
    /// Messages behind the end of each owned partition, for the lag metric.
    fn lag(&self) -> Vec<(Topic, i32, i64)>;
    /// Every partition of the click and conversion topics, owned or not.
    fn partitions(&self) -> Vec<(Topic, i32)>;
    /// The partitions this member owns now, each with whether it has been read to its
    /// end (as far as the bus knows; a stale answer must only ever be `false`, or
    /// `true` for at most a second).
    fn owned(&self) -> Vec<((Topic, i32), bool)>;
    /// The partitions a rebalance is about to take from this member while it waits
    /// for [`EventSource::release`]: meanwhile the caller writes and commits what it
    /// settled and forgets what waits. `None` when no rebalance waits.
    fn revoking(&self) -> Option<Vec<(Topic, i32)>> {
        None
    }
    /// Lets the waiting rebalance go on (nothing when none waits).
    fn release(&mut self) {}
}
