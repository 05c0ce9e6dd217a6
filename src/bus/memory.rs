//! The embedded default's bus: bounded in-process queues, one per topic, with one
//! consumer (the embedded pipeline). Nothing survives the process, by design.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{BusError, Delivered, EventBus, EventSource, Overflow, Position, Topic};

struct Queue {
    items: Mutex<VecDeque<Delivered>>,
    next_offset: AtomicI64,
}

impl Queue {
    fn new() -> Self {
        Queue {
            items: Mutex::new(VecDeque::new()),
            next_offset: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivered>> {
        // Each critical section is a push or a drain: data stays consistent on panic.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, topic: Topic, key: &[u8], payload: &[u8]) {
        let mut items = self.lock();
        let offset = self.next_offset.fetch_add(1, Ordering::Relaxed);
        items.push_back(Delivered {
            topic,
            partition: 0,
            offset,
            key: Some(key.to_vec()),
            payload: payload.to_vec(),
        });
    }
}

/// In-process bus with a capacity per topic.
pub struct MemoryBus {
    clicks: Queue,
    conversions: Queue,
    dlq: Queue,
    outbox: Queue,
    capacity: usize,
    notify: Notify,
    outbox_notify: Notify,
}

impl MemoryBus {
    /// A bus holding at most `capacity` unconsumed messages per topic.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemoryBus {
            clicks: Queue::new(),
            conversions: Queue::new(),
            dlq: Queue::new(),
            outbox: Queue::new(),
            capacity,
            notify: Notify::new(),
            outbox_notify: Notify::new(),
        })
    }

    /// The single consumer of clicks and conversions (the embedded pipeline).
    pub fn source(self: &Arc<Self>) -> MemorySource {
        MemorySource {
            bus: Arc::clone(self),
            outbox: false,
        }
    }

    /// The single consumer of the webhook outbox (the embedded delivery).
    pub fn outbox_source(self: &Arc<Self>) -> MemorySource {
        MemorySource {
            bus: Arc::clone(self),
            outbox: true,
        }
    }

    /// Messages published and not yet consumed (clicks and conversions).
    pub fn backlog(&self) -> usize {
        self.clicks.lock().len() + self.conversions.lock().len()
    }

    /// Messages the pipeline sent to the dead-letter topic.
    pub fn dead_letters(&self) -> Vec<Delivered> {
        self.dlq.lock().iter().cloned().collect()
    }

    /// Webhook events published to the outbox and not yet consumed.
    pub fn outbox(&self) -> Vec<Delivered> {
        self.outbox.lock().iter().cloned().collect()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn publish_click(&self, key: &[u8], payload: &[u8]) -> Result<(), Overflow> {
        if self.clicks.lock().len() >= self.capacity {
            return Err(Overflow);
        }
        self.clicks.push(Topic::Clicks, key, payload);
        self.notify.notify_one();
        Ok(())
    }

    async fn publish_conversions(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError> {
        if self.conversions.lock().len() + batch.len() > self.capacity {
            return Err(BusError::Unavailable(
                "in-process conversion queue is full".into(),
            ));
        }
        for (key, payload) in batch {
            self.conversions
                .push(Topic::Conversions, key.as_bytes(), payload);
        }
        self.notify.notify_one();
        Ok(())
    }

    async fn publish_dlq(&self, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        self.dlq.push(Topic::Dlq, key, payload);
        // Nobody consumes the embedded DLQ: keep the newest, as a bounded topic would
        // (the letters were logged when they were written).
        let mut letters = self.dlq.lock();
        while letters.len() > self.capacity {
            letters.pop_front();
        }
        Ok(())
    }

    async fn publish_outbox(&self, batch: &[(String, Vec<u8>)]) -> Result<(), BusError> {
        // Bounded: when delivery falls behind, the pipeline waits (it retries).
        if self.outbox.lock().len() + batch.len() > self.capacity {
            return Err(BusError::Unavailable(
                "in-process webhook outbox is full".into(),
            ));
        }
        for (key, payload) in batch {
            self.outbox.push(Topic::Webhooks, key.as_bytes(), payload);
        }
        self.outbox_notify.notify_one();
        Ok(())
    }

    fn buffered(&self) -> usize {
        0
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), BusError> {
        Ok(())
    }
}

/// The embedded pipeline's consumer, or the embedded delivery's (`outbox`).
pub struct MemorySource {
    bus: Arc<MemoryBus>,
    outbox: bool,
}

#[async_trait]
impl EventSource for MemorySource {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, BusError> {
        if self.outbox {
            let take = |bus: &MemoryBus| {
                let mut items = bus.outbox.lock();
                let n = items.len().min(max);
                items.drain(..n).collect::<Vec<_>>()
            };
            let batch = take(&self.bus);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let _ = tokio::time::timeout(wait, self.bus.outbox_notify.notified()).await;
            return Ok(take(&self.bus));
        }
        let take = |bus: &MemoryBus| {
            // Clicks first, so that conversions find the clicks sent before them.
            let mut out: Vec<Delivered> = Vec::new();
            for queue in [&bus.clicks, &bus.conversions] {
                let mut items = queue.lock();
                let n = items.len().min(max - out.len());
                out.extend(items.drain(..n));
            }
            out
        };
        let batch = take(&self.bus);
        if !batch.is_empty() {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(wait, self.bus.notify.notified()).await;
        Ok(take(&self.bus))
    }

    async fn commit(&mut self, _positions: &[Position]) -> Result<(), BusError> {
        Ok(())
    }

    fn assignment_generation(&self) -> u64 {
        0
    }

    fn lag(&self) -> Vec<(Topic, i32, i64)> {
        if self.outbox {
            return vec![(Topic::Webhooks, 0, self.bus.outbox.lock().len() as i64)];
        }
        vec![
            (Topic::Clicks, 0, self.bus.clicks.lock().len() as i64),
            (
                Topic::Conversions,
                0,
                self.bus.conversions.lock().len() as i64,
            ),
        ]
    }

    fn partitions(&self) -> Vec<(Topic, i32)> {
        if self.outbox {
            return vec![(Topic::Webhooks, 0)];
        }
        vec![(Topic::Clicks, 0), (Topic::Conversions, 0)]
    }

    fn owned(&self) -> Vec<((Topic, i32), bool)> {
        if self.outbox {
            return vec![((Topic::Webhooks, 0), self.bus.outbox.lock().is_empty())];
        }
        vec![
            ((Topic::Clicks, 0), self.bus.clicks.lock().is_empty()),
            (
                (Topic::Conversions, 0),
                self.bus.conversions.lock().is_empty(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_and_ordered() {
        let bus = MemoryBus::new(2);
        bus.publish_click(b"v", b"1").unwrap();
        bus.publish_click(b"v", b"2").unwrap();
        assert_eq!(bus.publish_click(b"v", b"3"), Err(Overflow));
        bus.publish_conversions(&[("k".into(), b"c".to_vec())])
            .await
            .unwrap();
        let mut src = bus.source();
        let batch = src.next_batch(10, Duration::from_millis(1)).await.unwrap();
        let payloads: Vec<&[u8]> = batch.iter().map(|d| d.payload.as_slice()).collect();
        assert_eq!(payloads, vec![b"1".as_slice(), b"2", b"c"]);
        assert_eq!(batch[1].offset, 1);
        assert!(src
            .next_batch(10, Duration::from_millis(1))
            .await
            .unwrap()
            .is_empty());
    }
}
