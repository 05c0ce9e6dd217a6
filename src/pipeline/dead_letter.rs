//! Dead letters (schemas/events/dlq.schema.json): a message that cannot be decided is
//! published with its original bytes and the reason, and its offset committed with the
//! batch; a letter the broker did not take blocks every later commit.

use chrono::Utc;
use serde::Serialize;

use super::Pipeline;
use crate::bus::{Delivered, Topic};
use crate::metrics as m;
use crate::shutdown::Shutdown;

/// A dead letter (schemas/events/dlq.schema.json).
#[derive(Serialize)]
pub(super) struct DeadLetter<'a> {
    v: u8,
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'a str,
    original_base64: String,
    failed_at: String,
}

/// The message a dead letter carries: where it was read and its original bytes.
pub(super) struct Letter<'a> {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

impl<'a> From<&'a Delivered> for Letter<'a> {
    fn from(msg: &'a Delivered) -> Self {
        Letter {
            topic: msg.topic,
            partition: msg.partition,
            offset: msg.offset,
            payload: &msg.payload,
        }
    }
}

impl Pipeline {
    /// Publishes a dead letter; when stopping before the broker took it, nothing more
    /// is committed.
    pub(super) async fn dead_letter(&mut self, msg: Letter<'_>, reason: &str, shutdown: &Shutdown) {
        use base64::Engine;
        let Letter {
            topic,
            partition,
            offset,
            payload,
        } = msg;
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
}
