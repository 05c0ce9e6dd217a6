//! Where the pipeline's rows go: ClickHouse in the full stack, `JSONEachRow` files in the
//! embedded default, behind one trait.

pub mod clickhouse;
pub mod file;
pub mod rows;

use async_trait::async_trait;

pub use rows::{
    AttributionRow, AuditRow, ClickRow, CommissionRow, ConversionRow, DeliveryRow, DisputeRow,
    PayoutRow, RowKey, StatusRow, Step, TierFigureRow, TierRow,
};

/// The tables the pipeline and the review, payout and dispute API write, in the order
/// they are written: a ledger row before its steps, a payout's steps before its lines
/// (a payout found is complete).
pub const TABLES: [&str; 9] = [
    "clicks",
    "conversions",
    "attributions",
    "commissions",
    "commission_status",
    "payouts",
    "disputes",
    "partner_tiers",
    "partner_tier_figures",
];

/// Rows of one processing round, written together before offsets are committed.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub clicks: Vec<ClickRow>,
    pub conversions: Vec<ConversionRow>,
    pub attributions: Vec<AttributionRow>,
    pub commissions: Vec<CommissionRow>,
    pub statuses: Vec<StatusRow>,
    pub payouts: Vec<PayoutRow>,
    pub disputes: Vec<DisputeRow>,
    pub tiers: Vec<TierRow>,
    pub tier_figures: Vec<TierFigureRow>,
}

impl Batch {
    /// Rows in all tables.
    pub fn len(&self) -> usize {
        self.clicks.len()
            + self.conversions.len()
            + self.attributions.len()
            + self.commissions.len()
            + self.statuses.len()
            + self.payouts.len()
            + self.disputes.len()
            + self.tiers.len()
            + self.tier_figures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves `other`'s rows into this batch.
    pub fn append(&mut self, other: &mut Batch) {
        self.clicks.append(&mut other.clicks);
        self.conversions.append(&mut other.conversions);
        self.attributions.append(&mut other.attributions);
        self.commissions.append(&mut other.commissions);
        self.statuses.append(&mut other.statuses);
        self.payouts.append(&mut other.payouts);
        self.disputes.append(&mut other.disputes);
        self.tiers.append(&mut other.tiers);
        self.tier_figures.append(&mut other.tier_figures);
    }
}

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the server is unreachable, overloaded or timed out.
    #[error("sink unavailable: {0}")]
    Transient(String),
    /// Retrying cannot help (schema mismatch, bad data): the pipeline stops.
    #[error("sink refused the rows: {0}")]
    Fatal(String),
}

/// Durable storage for the pipeline's rows.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Writes every row of `batch` durably; only then may offsets be committed.
    /// Writing the same rows again must not change what queries return.
    async fn write(&self, batch: &Batch) -> Result<(), SinkError>;
    /// Is the sink reachable?
    async fn ping(&self) -> Result<(), SinkError>;
}

/// Where webhook delivery attempts are recorded (`webhook_deliveries`, SPEC §3.6).
#[async_trait]
pub trait DeliveryLog: Send + Sync + 'static {
    /// Writes the rows durably. Writing a final row again collapses under FINAL.
    async fn record(&self, rows: &[DeliveryRow]) -> Result<(), SinkError>;
}

/// Where the keyed API's writes are recorded (`api_audit`, SPEC §9).
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends the rows durably.
    async fn audit(&self, rows: &[AuditRow]) -> Result<(), SinkError>;
}
