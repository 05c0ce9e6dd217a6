//! The ledger as finance reads and moves it (SPEC §3.5, §5.7): ledger rows with their
//! current status, review of held rows, payout batches.
//!
//! The current status of a row is derived from the audit trail (`commission_status`):
//! the status of its highest step. Review and payout write the next step of each row
//! they change through the pipeline's [`Sink`], so ClickHouse (or the embedded files)
//! stays the one place the ledger lives. A lock per program in the registry store keeps
//! two edges from reviewing or paying the same rows at once; steps have deterministic
//! ids, so a request repeated after a crash writes the same rows again.

pub mod clickhouse;
pub mod disputes;
pub mod memory;
pub mod partner;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::EventBus;
use crate::engine::{LedgerKind, Status};
use crate::outbox::Outbox;
use crate::registry::{Registry, RegistryStore};
use crate::sink::rows::{DisputeRow, PayoutRow, RowKey, StatusRow, Step};
use crate::sink::{Batch, Sink, SinkError};

pub use memory::MemoryLedger;

/// Namespace of payout ids: uuid v5 of (program, up_to ms).
const PAYOUT_NS: Uuid = Uuid::from_u128(0x9d3a_5c71_e2b8_4a06_b1f4_6e28_0c9d_57a3);
/// How long a review or payout may hold its program's lock.
const LOCK_TTL: Duration = Duration::from_secs(120);
/// Most rows one listing returns.
pub const MAX_LIMIT: usize = 1000;
/// Most rows one review names.
pub const MAX_REVIEW: usize = 1000;

/// A ledger row with its current status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub commission_id: Uuid,
    pub conversion_id: Uuid,
    pub program_id: String,
    pub partner_id: String,
    pub kind: LedgerKind,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: Status,
    /// The step that gave it this status.
    pub step: u8,
    /// Why the row has its status (the lifecycle's reason).
    pub reason: String,
    /// Why the row earned what it did when not by the plan alone: `rule {name}` when a
    /// reward rule paid it, `capped` or `…, capped` when a cap clipped it (SPEC §10.1);
    /// empty otherwise.
    pub earned_reason: String,
    pub actor: String,
    #[serde(with = "crate::events::rfc3339_millis")]
    pub at: DateTime<Utc>,
    /// When its first step was written: when it was earned.
    #[serde(with = "crate::events::rfc3339_millis")]
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub payout_id: String,
}

impl Entry {
    fn from_step(r: &StatusRow) -> Option<Entry> {
        Some(Entry {
            commission_id: r.commission_id,
            conversion_id: r.conversion_id,
            program_id: r.program_id.clone(),
            partner_id: r.partner_id.clone(),
            kind: LedgerKind::parse(r.kind)?,
            amount: r.amount,
            currency: r.currency.clone(),
            status: Status::parse(r.status)?,
            step: r.step,
            reason: r.reason.clone(),
            earned_reason: String::new(),
            actor: r.actor.clone(),
            at: r.at,
            created_at: r.at,
            payout_id: r.payout_id.clone(),
        })
    }

    /// The step that gave this row its status, as written.
    fn current_step(&self) -> StatusRow {
        let mut row = self.step(self.step, self.status, &self.reason, &self.actor, self.at);
        row.payout_id = self.payout_id.clone();
        row
    }

    /// The next step of this row.
    fn next(&self, status: Status, reason: &str, actor: &str, at: DateTime<Utc>) -> StatusRow {
        self.step(self.step.saturating_add(1), status, reason, actor, at)
    }

    fn step(
        &self,
        step: u8,
        status: Status,
        reason: &str,
        actor: &str,
        at: DateTime<Utc>,
    ) -> StatusRow {
        let row = RowKey {
            commission_id: self.commission_id,
            conversion_id: self.conversion_id,
            program_id: &self.program_id,
            partner_id: &self.partner_id,
            kind: self.kind.as_str(),
            amount: self.amount,
            currency: &self.currency,
        };
        let s = Step {
            step,
            status,
            reason,
            actor,
            at,
        };
        StatusRow::step(&row, s)
    }
}

/// Which rows to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub program_id: String,
    pub partner_id: Option<String>,
    pub status: Option<Status>,
    /// Only these rows (empty: all).
    pub ids: Vec<Uuid>,
    /// Rows after this id (the listing's cursor).
    pub after: Option<Uuid>,
    /// Rows earned in `[from, to)` (their `created_at`).
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Filter {
    fn admits(&self, e: &Entry) -> bool {
        e.program_id == self.program_id
            && self.partner_id.as_ref().is_none_or(|p| *p == e.partner_id)
            && self.status.is_none_or(|s| s == e.status)
            && (self.ids.is_empty() || self.ids.contains(&e.commission_id))
            && self.after.is_none_or(|a| e.commission_id > a)
            && self.from.is_none_or(|t| e.created_at >= t)
            && self.to.is_none_or(|t| e.created_at < t)
    }
}

/// One partner's line of a payout batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PayoutLine {
    pub partner_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub rows: u32,
}

/// A payout batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payout {
    pub payout_id: Uuid,
    pub program_id: String,
    #[serde(with = "crate::events::rfc3339_millis")]
    pub up_to: DateTime<Utc>,
    pub lines: Vec<PayoutLine>,
}

impl Payout {
    /// As CSV: a header and one line per partner.
    pub fn csv(&self) -> String {
        let mut out = String::from("payout_id,program_id,up_to,partner_id,amount,currency,rows\n");
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                self.payout_id,
                self.program_id,
                self.up_to
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                l.partner_id,
                l.amount,
                l.currency,
                l.rows
            ));
        }
        out
    }
}

/// The ledger as stored: ClickHouse in the full stack, the embedded file sink's index.
#[async_trait]
pub trait LedgerView: Send + Sync + 'static {
    /// Rows with their current status that `filter` admits, by commission id, at most
    /// `filter.limit`.
    async fn entries(&self, filter: &Filter) -> Result<Vec<Entry>, SinkError>;
    /// The lines of payout `id` of `program`, none when there is no such batch.
    async fn payout_lines(&self, program: &str, id: Uuid) -> Result<Vec<PayoutRow>, SinkError>;
    /// The current version of the disputes of `program` (every program: `None`), or of
    /// dispute `id` alone, oldest first.
    async fn disputes(
        &self,
        program: Option<&str>,
        id: Option<Uuid>,
    ) -> Result<Vec<DisputeRow>, SinkError>;
    /// The partner's tier moves (`partner_tiers`), oldest first, at most
    /// [`MAX_LIMIT`].
    async fn tier_moves(&self, program: &str, partner: &str)
        -> Result<Vec<TierMoveRow>, SinkError>;
    /// The partner's figures of tier period `period` so far (`partner_tier_figures`).
    async fn tier_figures(
        &self,
        program: &str,
        partner: &str,
        period: &str,
    ) -> Result<crate::engine::tiers::Figures, SinkError>;
}

/// A tier move as the ledger holds it (SPEC §10.2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierMoveRow {
    #[serde(with = "crate::events::rfc3339_millis")]
    pub effective_at: DateTime<Utc>,
    pub tier: String,
    pub previous: String,
    /// `auto` or `manual`.
    pub source: String,
    /// What decided an automatic move: the figures of the period before.
    pub figures: crate::engine::tiers::Figures,
}

impl From<&crate::sink::TierRow> for TierMoveRow {
    fn from(t: &crate::sink::TierRow) -> Self {
        TierMoveRow {
            effective_at: t.effective_at,
            tier: t.tier.clone(),
            previous: t.previous.clone(),
            source: t.source.to_string(),
            figures: crate::engine::tiers::Figures {
                conversions: t.conversions,
                revenue: t.revenue,
                commission: t.commission,
            },
        }
    }
}

/// Why a review or payout was refused.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("another review or payout of this program is running; retry")]
    Busy,
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

impl From<SinkError> for LedgerError {
    fn from(e: SinkError) -> Self {
        LedgerError::Unavailable(e.to_string())
    }
}

impl From<crate::registry::StoreError> for LedgerError {
    fn from(e: crate::registry::StoreError) -> Self {
        LedgerError::Unavailable(e.to_string())
    }
}

/// Whether a step was made by a person reviewing (the operator or a key), not by the
/// pipeline's own lifecycle.
fn is_reviewer(actor: &str) -> bool {
    actor == "admin" || actor.starts_with("key:")
}

/// A review's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Approve,
    Reject,
}

/// What a review did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reviewed {
    /// Rows moved out of `held` by this request.
    pub changed: Vec<Uuid>,
    /// Rows that already had the requested status (a repeated request).
    pub unchanged: Vec<Uuid>,
}

/// Review and payouts over a ledger.
pub struct Ledger {
    pub view: Arc<dyn LedgerView>,
    pub sink: Arc<dyn Sink>,
    pub locks: Arc<dyn RegistryStore>,
    /// Where webhook events of review and payout steps go (SPEC §3.6); none in the
    /// demo and in tests of the ledger alone.
    pub outbox: Option<LedgerOutbox>,
}

/// The registry that says who subscribes, and the bus whose outbox topic carries them.
pub struct LedgerOutbox {
    pub registry: Arc<Registry>,
    pub bus: Arc<dyn EventBus>,
}

impl Ledger {
    /// Runs `f` holding the program's lock.
    async fn locked<T, F>(&self, program: &str, f: F) -> Result<T, LedgerError>
    where
        F: std::future::Future<Output = Result<T, LedgerError>>,
    {
        let name = format!("ledger:{program}");
        let token = Uuid::new_v4().to_string();
        if !self.locks.try_lock(&name, &token, LOCK_TTL).await? {
            return Err(LedgerError::Busy);
        }
        let out = f.await;
        if let Err(e) = self.locks.unlock(&name, &token).await {
            // It expires on its own.
            tracing::warn!(error = %e, lock = %name, "ledger lock not released");
        }
        out
    }

    /// Publishes the webhook events `fill` gathers, acknowledged, before the request is
    /// answered. Events are derived from what is written, after it is: a request
    /// repeated after a failure publishes them again from the ledger, with the same ids.
    /// Tier moves made by hand: their rows, then their events.
    pub async fn record_tiers(&self, rows: &[crate::sink::TierRow]) -> Result<(), LedgerError> {
        self.sink
            .write(&Batch {
                tiers: rows.to_vec(),
                ..Batch::default()
            })
            .await?;
        self.publish(|o, r| o.tier_moves(r, rows)).await
    }

    async fn publish(&self, fill: impl FnOnce(&mut Outbox, &Registry)) -> Result<(), LedgerError> {
        let Some(o) = &self.outbox else {
            return Ok(());
        };
        let mut outbox = Outbox::default();
        fill(&mut outbox, &o.registry);
        if outbox.is_empty() {
            return Ok(());
        }
        o.bus
            .publish_outbox(&outbox.take())
            .await
            .map_err(|e| LedgerError::Unavailable(format!("webhook outbox: {e}")))
    }

    /// Every row of the program (with `status`, if given) that `keep` admits, a page
    /// at a time.
    async fn all(
        &self,
        program: &str,
        status: Option<Status>,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<Vec<Entry>, LedgerError> {
        const PAGE: usize = 100_000;
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .view
                .entries(&Filter {
                    program_id: program.to_string(),
                    status,
                    after,
                    limit: PAGE,
                    ..Filter::default()
                })
                .await?;
            let full = page.len() == PAGE;
            after = page.last().map(|e| e.commission_id);
            rows.extend(page.into_iter().filter(|e| keep(e)));
            if !full {
                return Ok(rows);
            }
        }
    }

    /// Writes review or payout steps, all to `status`, and counts them.
    async fn write_steps(&self, status: Status, steps: Vec<StatusRow>) -> Result<(), LedgerError> {
        if steps.is_empty() {
            return Ok(());
        }
        metrics::counter!(crate::metrics::EDGE_LIFECYCLE_STEPS_TOTAL, "status" => status.as_str())
            .increment(steps.len() as u64);
        self.sink
            .write(&Batch {
                statuses: steps,
                ..Batch::default()
            })
            .await?;
        Ok(())
    }

    /// Approves or rejects held rows (SPEC §3.5). All or nothing: a row that is not
    /// held and not already so decided is a conflict, and nothing is written.
    pub async fn review(
        &self,
        program: &str,
        ids: &[Uuid],
        action: Action,
        note: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Reviewed, LedgerError> {
        self.locked(program, async {
            let found = self
                .view
                .entries(&Filter {
                    program_id: program.to_string(),
                    ids: ids.to_vec(),
                    limit: ids.len().max(1),
                    ..Filter::default()
                })
                .await?;
            let by_id: HashMap<Uuid, &Entry> = found.iter().map(|e| (e.commission_id, e)).collect();
            let target = match action {
                Action::Approve => Status::Approved,
                Action::Reject => Status::Rejected,
            };
            let mut out = Reviewed {
                changed: Vec::new(),
                unchanged: Vec::new(),
            };
            let mut steps = Vec::new();
            let mut steps_before = Vec::new();
            for id in ids {
                let Some(e) = by_id.get(id) else {
                    return Err(LedgerError::NotFound(format!(
                        "commission {id} not found in program {program}"
                    )));
                };
                match e.status {
                    Status::Held => {
                        steps.push(e.next(target, note, by, now));
                        out.changed.push(*id);
                    }
                    s if s == target && is_reviewer(&e.actor) => {
                        // Its events again: the request that made it may have stopped
                        // before publishing them.
                        steps_before.push(e.current_step());
                        out.unchanged.push(*id);
                    }
                    s => {
                        return Err(LedgerError::Conflict(format!(
                            "commission {id} is {}, only held rows are reviewed",
                            s.as_str()
                        )))
                    }
                }
            }
            self.write_steps(target, steps.clone()).await?;
            self.publish(|o, r| {
                o.steps(r, &steps_before);
                o.steps(r, &steps);
            })
            .await?;
            Ok(out)
        })
        .await
    }

    /// The id of the payout of `program` up to `up_to`.
    pub fn payout_id(program: &str, up_to: DateTime<Utc>) -> Uuid {
        Uuid::new_v5(
            &PAYOUT_NS,
            format!("{program}\n{}", up_to.timestamp_millis()).as_bytes(),
        )
    }

    /// Creates the payout batch of `program` up to `up_to`, or returns the one made
    /// before (SPEC §3.5): for every partner whose approved, unpaid balance up to that
    /// instant (clawbacks netted) reaches `min_payout` and is positive, one line, and
    /// its rows become `paid`. The others roll over.
    // Long on purpose: one locked transaction (lock, read, cut, write lines, step rows,
    // audit, unlock) whose steps must stay in this order to be idempotent.
    pub async fn payout(
        &self,
        program: &str,
        currency: &str,
        min_payout: Decimal,
        up_to: DateTime<Utc>,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Payout, LedgerError> {
        let id = Self::payout_id(program, up_to);
        self.locked(program, async {
            let made = self.view.payout_lines(program, id).await?;
            if !made.is_empty() {
                if self.outbox.is_some() {
                    // Made before: its events again, from the ledger (the request that
                    // made it may have stopped before publishing them).
                    let paid: Vec<StatusRow> = self
                        .all(program, Some(Status::Paid), |e| {
                            e.payout_id == id.to_string()
                        })
                        .await?
                        .iter()
                        .map(Entry::current_step)
                        .collect();
                    self.publish(|o, r| {
                        o.steps(r, &paid);
                        o.payouts(r, &made);
                    })
                    .await?;
                }
                return Ok(payout_of(id, program, up_to, &made));
            }
            // Approved by then and unpaid, or paid by this very batch (a request that
            // stopped between its steps and its lines).
            let rows = self
                .all(program, None, |e| {
                    (e.status == Status::Approved && e.at <= up_to)
                        || (e.status == Status::Paid && e.payout_id == id.to_string())
                })
                .await?;
            let mut by_partner: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
            for e in &rows {
                by_partner.entry(e.partner_id.as_str()).or_default().push(e);
            }
            let mut steps = Vec::new();
            let mut steps_before = Vec::new();
            let mut lines = Vec::new();
            for (partner, entries) in by_partner {
                let amount: Decimal = entries.iter().map(|e| e.amount).sum();
                if amount <= Decimal::ZERO || amount < min_payout {
                    continue;
                }
                for e in entries.iter() {
                    if e.status == Status::Approved {
                        let mut step = e.next(Status::Paid, "payout", by, now);
                        step.payout_id = id.to_string();
                        steps.push(step);
                    } else if e.status == Status::Paid {
                        // Paid by this batch in a request that stopped before its lines.
                        steps_before.push(e.current_step());
                    }
                }
                lines.push(PayoutRow {
                    payout_id: id,
                    program_id: program.to_string(),
                    up_to,
                    partner_id: partner.to_string(),
                    amount,
                    currency: currency.to_string(),
                    rows: u32::try_from(entries.len()).unwrap_or(u32::MAX),
                    created_at: now,
                });
            }
            if !lines.is_empty() {
                // The steps before the lines: a batch found is a batch complete.
                self.write_steps(Status::Paid, steps.clone()).await?;
                self.sink
                    .write(&Batch {
                        payouts: lines.clone(),
                        ..Batch::default()
                    })
                    .await?;
                self.publish(|o, r| {
                    o.steps(r, &steps_before);
                    o.steps(r, &steps);
                    o.payouts(r, &lines);
                })
                .await?;
            }
            Ok(payout_of(id, program, up_to, &lines))
        })
        .await
    }

    /// Payout `id` of `program`.
    pub async fn get_payout(&self, program: &str, id: Uuid) -> Result<Payout, LedgerError> {
        let lines = self.view.payout_lines(program, id).await?;
        let Some(first) = lines.first() else {
            return Err(LedgerError::NotFound(format!("payout {id} not found")));
        };
        Ok(payout_of(id, program, first.up_to, &lines))
    }
}

fn payout_of(id: Uuid, program: &str, up_to: DateTime<Utc>, rows: &[PayoutRow]) -> Payout {
    let mut lines: Vec<PayoutLine> = rows
        .iter()
        .map(|r| PayoutLine {
            partner_id: r.partner_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            rows: r.rows,
        })
        .collect();
    lines.sort_by(|a, b| a.partner_id.cmp(&b.partner_id));
    lines.dedup_by(|a, b| a.partner_id == b.partner_id);
    Payout {
        payout_id: id,
        program_id: program.to_string(),
        up_to,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryStore;
    use chrono::TimeZone;
    use std::str::FromStr;

    /// A sink that feeds a memory ledger, as the embedded file sink does.
    struct Recording(Arc<MemoryLedger>);

    #[async_trait]
    impl Sink for Recording {
        async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
            self.0.record(batch);
            Ok(())
        }
        async fn ping(&self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
    }

    fn ledger() -> (Ledger, Arc<MemoryLedger>) {
        let view = Arc::new(MemoryLedger::default());
        let ledger = Ledger {
            view: view.clone(),
            sink: Arc::new(Recording(view.clone())),
            locks: Arc::new(MemoryStore::new()),
            outbox: None,
        };
        (ledger, view)
    }

    /// A row created by the pipeline with `status`, on `day`.
    fn row(
        view: &MemoryLedger,
        n: u128,
        partner: &str,
        amount: &str,
        status: Status,
        day: u32,
    ) -> Uuid {
        let id = Uuid::from_u128(n);
        view.record(&Batch {
            statuses: vec![StatusRow::step(
                &RowKey {
                    commission_id: id,
                    conversion_id: Uuid::from_u128(1000 + n),
                    program_id: "acme",
                    partner_id: partner,
                    kind: if amount.starts_with('-') {
                        "reversal"
                    } else {
                        "direct"
                    },
                    amount: d(amount),
                    currency: "USD",
                },
                Step {
                    step: 0,
                    status,
                    reason: "test",
                    actor: "pipeline",
                    at: at(day),
                },
            )],
            ..Batch::default()
        });
        id
    }

    async fn status(view: &MemoryLedger, id: Uuid) -> Status {
        view.entries(&Filter {
            program_id: "acme".into(),
            ids: vec![id],
            limit: 1,
            ..Filter::default()
        })
        .await
        .unwrap()[0]
            .status
    }

    #[tokio::test]
    async fn a_span_selects_rows_by_when_they_were_earned() {
        let (ledger, view) = ledger();
        let early = row(&view, 1, "alice", "90.00", Status::Held, 1);
        row(&view, 2, "alice", "15.00", Status::Pending, 5);
        // Reviewed on day 9: still earned on day 1.
        ledger
            .review("acme", &[early], Action::Approve, "", "admin", at(9))
            .await
            .unwrap();
        let span = |from: Option<u32>, to: Option<u32>| Filter {
            program_id: "acme".into(),
            from: from.map(at),
            to: to.map(at),
            limit: 10,
            ..Filter::default()
        };
        let ids = |rows: Vec<Entry>| rows.iter().map(|e| e.commission_id.as_u128()).collect();
        let got: Vec<u128> = ids(view.entries(&span(Some(1), Some(5))).await.unwrap());
        assert_eq!(got, vec![1]);
        let got: Vec<u128> = ids(view.entries(&span(Some(2), None)).await.unwrap());
        assert_eq!(got, vec![2]);
        let got: Vec<u128> = ids(view.entries(&span(None, Some(9))).await.unwrap());
        assert_eq!(got, vec![1, 2]);
        let first = view.entries(&span(None, None)).await.unwrap();
        assert_eq!((first[0].created_at, first[0].at), (at(1), at(9)));
    }

    #[tokio::test]
    async fn review_moves_held_rows_once_and_refuses_others() {
        let (ledger, view) = ledger();
        let held = row(&view, 1, "alice", "90.00", Status::Held, 1);
        let pending = row(&view, 2, "alice", "15.00", Status::Pending, 1);
        let r = ledger
            .review("acme", &[held], Action::Approve, "checked", "admin", at(2))
            .await
            .unwrap();
        assert_eq!(r.changed, vec![held]);
        assert_eq!(status(&view, held).await, Status::Approved);
        // Again: nothing new. Rejecting it now, or reviewing a pending row: conflicts.
        let again = ledger
            .review("acme", &[held], Action::Approve, "checked", "admin", at(2))
            .await
            .unwrap();
        assert_eq!((again.changed.len(), again.unchanged), (0, vec![held]));
        assert!(matches!(
            ledger
                .review("acme", &[held], Action::Reject, "", "admin", at(2))
                .await,
            Err(LedgerError::Conflict(_))
        ));
        assert!(matches!(
            ledger
                .review("acme", &[pending], Action::Approve, "", "admin", at(2))
                .await,
            Err(LedgerError::Conflict(_))
        ));
        assert!(matches!(
            ledger
                .review(
                    "acme",
                    &[Uuid::from_u128(77)],
                    Action::Approve,
                    "",
                    "admin",
                    at(2)
                )
                .await,
            Err(LedgerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn payouts_net_clawbacks_roll_over_small_balances_and_never_pay_twice() {
        let (ledger, view) = ledger();
        // alice: 15.00 and 9.00 approved, a −1.50 clawback approved: 22.50.
        let a1 = row(&view, 1, "alice", "15.00", Status::Approved, 1);
        row(&view, 2, "alice", "9.00", Status::Approved, 2);
        row(&view, 3, "alice", "-1.50", Status::Approved, 3);
        // bob: 4.00 approved, below the 5.00 minimum: rolls over.
        let b1 = row(&view, 4, "bob", "4.00", Status::Approved, 1);
        // carol: approved after the cut-off, pending, held: none of it is paid.
        row(&view, 5, "carol", "50.00", Status::Approved, 20);
        row(&view, 6, "carol", "50.00", Status::Pending, 1);
        row(&view, 7, "carol", "50.00", Status::Held, 1);
        let p = ledger
            .payout("acme", "USD", d("5"), at(10), "admin", at(11))
            .await
            .unwrap();
        assert_eq!(
            p.lines,
            vec![PayoutLine {
                partner_id: "alice".into(),
                amount: d("22.50"),
                currency: "USD".into(),
                rows: 3
            }]
        );
        assert_eq!(status(&view, a1).await, Status::Paid);
        assert_eq!(status(&view, b1).await, Status::Approved);
        // The same request: the same batch, nothing paid twice.
        let again = ledger
            .payout("acme", "USD", d("5"), at(10), "admin", at(12))
            .await
            .unwrap();
        assert_eq!(again, p);
        // A refund after payout: a clawback netted in the next payout.
        row(&view, 8, "alice", "-6.00", Status::Approved, 12);
        row(&view, 9, "alice", "20.00", Status::Approved, 12);
        let next = ledger
            .payout("acme", "USD", d("5"), at(15), "admin", at(16))
            .await
            .unwrap();
        assert_ne!(next.payout_id, p.payout_id);
        let alice = next.lines.iter().find(|l| l.partner_id == "alice").unwrap();
        assert_eq!((alice.amount, alice.rows), (d("14.00"), 2));
        assert!(next.lines.iter().all(|l| l.partner_id != "bob"));
        assert!(p
            .csv()
            .starts_with("payout_id,program_id,up_to,partner_id,amount,currency,rows\n"));
        assert!(p.csv().contains(",alice,22.50,USD,3\n"));
        assert_eq!(ledger.get_payout("acme", p.payout_id).await.unwrap(), p);
    }

    #[tokio::test]
    async fn a_held_lock_makes_others_wait() {
        let (ledger, _) = ledger();
        assert!(ledger
            .locks
            .try_lock("ledger:acme", "someone", Duration::from_secs(60))
            .await
            .unwrap());
        assert!(matches!(
            ledger
                .payout("acme", "USD", Decimal::ZERO, at(1), "admin", at(2))
                .await,
            Err(LedgerError::Busy)
        ));
    }
}
