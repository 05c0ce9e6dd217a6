//! Writing the rows, then publishing their events, then committing offsets, never past
//! a click or conversion still waiting; one write in flight at a time.

use std::sync::Arc;

use tokio::time::Instant;

use super::{store, Pipeline, PipelineError};
use crate::bus::{BusError, EventSource, Position};
use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::sink::SinkError;

/// A write under way: the sink's rows, their webhook events, the hold ends they
/// approve. Its offsets are committed once it answers `true` (written); rows, events
/// and the queue's removals are idempotent, so a crash at any point only replays.
pub(super) struct Flight {
    task: tokio::task::JoinHandle<Result<bool, PipelineError>>,
    positions: Vec<Position>,
    /// Hold ends whose approvals it writes: not approved again meanwhile.
    pub(super) due: Vec<String>,
}

/// The pipeline's writes: the one under way, and when the last one began (a round
/// writes once enough rows wait or enough time has passed).
pub(super) struct Writes {
    pub(super) flight: Option<Flight>,
    pub(super) last: Instant,
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            flight: None,
            last: Instant::now(),
        }
    }
}

impl Pipeline {
    /// A rebalance waits on this member: writes and commits what is settled while the
    /// partitions are still its own, forgets what waits (their next owner reads it from
    /// the committed offsets), then lets the rebalance go on.
    pub(super) async fn drain_revoked(
        &mut self,
        source: &mut dyn EventSource,
        shutdown: &Shutdown,
    ) -> Result<(), PipelineError> {
        self.write_and_commit(source, shutdown, true).await?;
        self.forget_partitions();
        metrics::counter!(m::PIPELINE_REVOCATIONS_DRAINED_TOTAL).increment(1);
        source.release();
        Ok(())
    }

    /// Writes the pending rows and commits the offsets they cover, stopping short of
    /// any click or conversion still waiting. The write runs in the background while
    /// the pipeline goes on ([`Flight`]); its offsets are committed when the next write
    /// starts, or here with `wait`.
    pub(super) async fn write_and_commit(
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
    pub(super) fn launch(&mut self, shutdown: &Shutdown) {
        let rows = std::mem::take(&mut self.out.rows);
        self.write.last = Instant::now();
        let events = self.out.outbox.take();
        let due = std::mem::take(&mut self.out.due_done);
        let mut done: Vec<store::Write> = due
            .iter()
            .map(|json| store::Write::DueDone { json: json.clone() })
            .collect();
        done.append(&mut self.out.after_write);
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
                    tracing::warn!(error = %e, "hold ends or tier boundaries left to do again; they make the same rows");
                }
            }
            Ok(true)
        });
        self.write.flight = Some(Flight {
            task,
            positions,
            due,
        });
    }

    /// Waits for the write under way and commits the offsets it covers.
    pub(super) async fn land(&mut self, source: &mut dyn EventSource) -> Result<(), PipelineError> {
        let Some(flight) = self.write.flight.take() else {
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
    pub(super) fn positions(&self) -> Vec<Position> {
        self.queue
            .taken
            .iter()
            .map(|(&part, &next)| {
                let waiting = [
                    self.queue.clicks.first_offset_of(part),
                    self.queue.conversions.first_offset_of(part),
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
