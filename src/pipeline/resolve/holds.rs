//! Hold ends (SPEC §5.7): orders queued until their hold is over, and the approval
//! steps of their rows once the settled frontier passes it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::lifecycle::{self, BookedRefund, RowRef, Status};
use crate::engine::settle::OrderRecord;
use crate::engine::LedgerKind;
use crate::pipeline::store::{Answer, OrderSlot, Read, StateError, StateStore};
use crate::sink::rows::{commission_id, RowKey, StatusRow, Step};

/// An order whose hold ends at `due_ms`, queued until the settled frontier passes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DueEntry {
    pub due_ms: i64,
    pub conversion_id: Uuid,
    pub program_id: String,
    pub order_id: String,
    pub currency: String,
    /// The conversion's record of the order (absent: a sale's, as in entries queued
    /// before slots existed).
    #[serde(default, skip_serializing_if = "OrderSlot::is_sale")]
    pub slot: OrderSlot,
}

/// The approvals of queued hold ends (`Write::Due` members) whose time has come: for
/// each order, every row not reversed in full before its hold ended, with the pending
/// reversals booked on it (SPEC §5.7). Steps of rows created pending, so step 1.
/// Undecodable entries approve nothing (they are removed with the rest).
pub async fn approvals(
    state: &dyn StateStore,
    entries: &[String],
) -> Result<Vec<StatusRow>, StateError> {
    let due: Vec<DueEntry> = entries
        .iter()
        .filter_map(|j| match serde_json::from_str(j) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::error!(error = %err, entry = %j, "undecodable hold end, skipped");
                None
            }
        })
        .collect();
    let reads: Vec<Read> = due
        .iter()
        .map(|d| Read::Order {
            program: d.program_id.clone(),
            order: d.order_id.clone(),
            slot: Some(d.slot),
        })
        .collect();
    let answers = state.read(&reads).await?;
    let mut rows = Vec::new();
    for (d, answer) in due.iter().zip(answers) {
        let Answer::Order {
            record, refunds, ..
        } = answer
        else {
            continue;
        };
        let Some(record) = record.and_then(|j| serde_json::from_str::<OrderRecord>(&j).ok()) else {
            tracing::error!(order = %d.order_id, "hold end of an order not recorded, skipped");
            continue;
        };
        if record.conversion_id != d.conversion_id {
            // Stored before each kind kept its own record: another conversion's rows.
            tracing::error!(order = %d.order_id, conversion = %d.conversion_id,
                "hold end of a conversion whose order record is another's, skipped");
            continue;
        }
        let booked: Vec<BookedRefund> = refunds
            .iter()
            .filter_map(|(m, j)| {
                Some(BookedRefund {
                    received_ms: m.ms,
                    conversion_id: Uuid::from_u128(m.id),
                    rows: serde_json::from_str(j).ok()?,
                })
            })
            .collect();
        let at = chrono::DateTime::from_timestamp_millis(d.due_ms).unwrap_or_default();
        for r in lifecycle::approvals(record.conversion_id, &record.rows, &booked, d.due_ms) {
            rows.push(step_row(
                &r,
                &d.program_id,
                &d.currency,
                1,
                Status::Approved,
                "hold period over",
                at,
            ));
        }
    }
    Ok(rows)
}

/// A pipeline step of a ledger row.
pub fn step_row(
    r: &RowRef,
    program_id: &str,
    currency: &str,
    step: u8,
    status: Status,
    reason: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> StatusRow {
    let kind = match (r.reversal, r.level) {
        (true, _) => LedgerKind::Reversal,
        (false, 0) => LedgerKind::Direct,
        (false, _) => LedgerKind::Override,
    };
    let row = RowKey {
        commission_id: commission_id(r.conversion_id, r.index),
        conversion_id: r.conversion_id,
        program_id,
        partner_id: &r.partner_id,
        kind: kind.as_str(),
        amount: r.amount,
        currency,
    };
    let step = Step {
        step,
        status,
        reason,
        actor: "pipeline",
        at,
    };
    StatusRow::step(&row, step)
}
