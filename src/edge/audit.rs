//! The `api_audit` trail (SPEC §9): every write through the keyed API becomes a row,
//! written in batches off the request's path. A failing log is retried; rows that
//! arrive while the buffer is full are counted, never silently lost.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use super::routes::Route;
use crate::access::Principal;
use crate::metrics as m;
use crate::sink::{AuditLog, AuditRow};

/// Rows waiting to be written, at most.
const BUFFER: usize = 10_000;
/// Rows per write, at most.
const BATCH: usize = 1_000;

/// The sender side of the trail.
pub(crate) struct AuditTrail {
    /// Taken at shutdown: the writer drains what is buffered, then ends.
    tx: Mutex<Option<mpsc::Sender<AuditRow>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl AuditTrail {
    /// A trail writing to `log`; none (nothing recorded) where there is no sink.
    pub fn start(log: Option<Arc<dyn AuditLog>>) -> Self {
        let Some(log) = log else {
            return AuditTrail {
                tx: Mutex::new(None),
                task: Mutex::new(None),
            };
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(write(log, rx));
        AuditTrail {
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Records one write made by `who` on `route`, answered with `status`.
    pub fn record(&self, who: &Principal, route: &'static Route, status: u16) {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else { return };
        let now = Utc::now();
        let key = who.key();
        let row = AuditRow {
            at: now,
            at_ms: crate::sink::rows::millis(now),
            key_id: key.map_or_else(|| "admin".to_string(), |k| k.id.clone()),
            role: who.role().as_str(),
            program_id: key.map(|k| k.program_id.clone()).unwrap_or_default(),
            partner_id: key.and_then(|k| k.partner_id.clone()).unwrap_or_default(),
            method: route.method.as_str(),
            route: route.template,
            status,
        };
        if tx.try_send(row).is_err() {
            metrics::counter!(m::EDGE_AUDIT_DROPPED_TOTAL).increment(1);
            tracing::error!(
                route = route.template,
                "api_audit buffer full: a row is lost"
            );
        }
    }

    /// Writes what is buffered, waiting at most `deadline`.
    pub async fn close(&self, deadline: Duration) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if tokio::time::timeout(deadline, task).await.is_err() {
                tracing::warn!("api_audit rows left unwritten at shutdown");
            }
        }
    }
}

/// Takes rows in batches and writes each until the log takes it.
async fn write(log: Arc<dyn AuditLog>, mut rx: mpsc::Receiver<AuditRow>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut backoff = crate::retry::Backoff::default();
        while let Err(e) = log.audit(&batch).await {
            tracing::warn!(error = %e, rows = batch.len(), "api_audit write failed; retrying");
            backoff.wait().await;
        }
        batch.clear();
    }
}
