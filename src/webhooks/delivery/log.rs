//! The delivery log's writer: attempts finishing together share one insert into
//! `webhook_deliveries`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::sink::{DeliveryLog, DeliveryRow};

/// How long delivery rows wait for others to share their insert.
const LOG_LINGER: Duration = Duration::from_millis(20);
pub(super) const LOG_BATCH: usize = 1000;

/// A row waiting for its insert, and who waits for it.
pub(super) type Pending = (DeliveryRow, oneshot::Sender<bool>);

/// Writes delivery rows in batches: attempts finishing together share one insert. A
/// failing log is retried until it heals, with `down` raised meanwhile so that no new
/// attempt starts: an acknowledgement that cannot be recorded must not be followed by
/// more of them. Once `stop` fires, a failing write gives up: its attempts leave their
/// queues as they are and are made again by the next process.
pub(super) async fn write_rows(
    log: Arc<dyn DeliveryLog>,
    mut rx: mpsc::Receiver<Pending>,
    down: Arc<AtomicBool>,
    stop: Shutdown,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LOG_LINGER);
        tokio::pin!(linger);
        while batch.len() < LOG_BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let rows: Vec<DeliveryRow> = batch.iter().map(|(r, _)| r.clone()).collect();
        let mut backoff = Backoff::default();
        let ok = loop {
            match log.record(&rows).await {
                Ok(()) => {
                    down.store(false, Ordering::SeqCst);
                    break true;
                }
                Err(e) if stop.is_fired() => {
                    tracing::warn!(error = %e, rows = rows.len(), "delivery log unavailable while stopping; those attempts will be made again");
                    break false;
                }
                Err(e) => {
                    down.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, rows = rows.len(), "delivery log unavailable, retrying; no new attempts meanwhile");
                    backoff.failed("clickhouse").await;
                }
            }
        };
        for (_, tx) in batch {
            let _ = tx.send(ok);
        }
    }
}
