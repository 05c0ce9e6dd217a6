//! The embedded default's ledger: the steps, payout lines and disputes the file sink
//! wrote, indexed in memory and rebuilt from its files at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use uuid::Uuid;

use super::{Entry, Filter, LedgerView, TierMoveRow};
use crate::engine::tiers::Figures;
use crate::sink::file::FileSink;
use crate::sink::rows::{DisputeRow, PayoutRow};
use crate::sink::{Batch, Sink, SinkError};

/// The ledger of the embedded default: an index of the steps the file sink wrote,
/// rebuilt from its files at start.
#[derive(Default)]
pub struct MemoryLedger {
    inner: Mutex<MemoryInner>,
}

/// One partner's tier moves by (effective ms, source).
type MovesByTime = BTreeMap<(i64, &'static str), TierMoveRow>;

#[derive(Default)]
struct MemoryInner {
    rows: BTreeMap<Uuid, Entry>,
    /// Each row's `earned_reason`, from its row of `commissions`, where not empty.
    earned: HashMap<Uuid, String>,
    payouts: HashMap<Uuid, Vec<PayoutRow>>,
    disputes: BTreeMap<Uuid, DisputeRow>,
    /// Tier moves by (program, partner), keyed by their time and source.
    tier_moves: HashMap<(String, String), MovesByTime>,
    /// Tier figures by (program, partner, period), one entry per conversion.
    tier_figures: HashMap<(String, String, String), HashMap<Uuid, Figures>>,
}

impl MemoryLedger {
    /// Notes rows' `earned_reason`s read back from the files.
    pub fn note_earned(&self, reasons: Vec<(Uuid, String)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.earned.extend(reasons);
    }

    /// Notes what a batch wrote.
    pub fn record(&self, batch: &Batch) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for c in batch.commissions.iter().filter(|c| !c.reason.is_empty()) {
            inner.earned.insert(c.commission_id, c.reason.clone());
        }
        for s in &batch.statuses {
            let Some(entry) = Entry::from_step(s) else {
                continue;
            };
            match inner.rows.get_mut(&s.commission_id) {
                Some(e) if e.step >= s.step => e.created_at = e.created_at.min(entry.created_at),
                Some(e) => {
                    let created_at = e.created_at.min(entry.created_at);
                    *e = Entry {
                        created_at,
                        ..entry
                    };
                }
                None => {
                    inner.rows.insert(s.commission_id, entry);
                }
            }
        }
        for p in &batch.payouts {
            let lines = inner.payouts.entry(p.payout_id).or_default();
            if !lines.iter().any(|l| l.partner_id == p.partner_id) {
                lines.push(p.clone());
            }
        }
        for t in &batch.tiers {
            inner
                .tier_moves
                .entry((t.program_id.clone(), t.partner_id.clone()))
                .or_default()
                .insert((t.effective_at.timestamp_millis(), t.source), t.into());
        }
        for f in &batch.tier_figures {
            let key = (f.program_id.clone(), f.partner_id.clone(), f.period.clone());
            let figures = Figures {
                conversions: f.conversions,
                revenue: f.revenue,
                commission: f.commission,
            };
            inner
                .tier_figures
                .entry(key)
                .or_default()
                .insert(f.conversion_id, figures);
        }
        for d in &batch.disputes {
            match inner.disputes.get(&d.dispute_id) {
                Some(seen) if seen.version >= d.version => {}
                _ => {
                    inner.disputes.insert(d.dispute_id, d.clone());
                }
            }
        }
    }
}

#[async_trait]
impl LedgerView for MemoryLedger {
    async fn entries(&self, filter: &Filter) -> Result<Vec<Entry>, SinkError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .rows
            .values()
            .filter(|e| filter.admits(e))
            .take(filter.limit)
            .map(|e| Entry {
                earned_reason: inner
                    .earned
                    .get(&e.commission_id)
                    .cloned()
                    .unwrap_or_default(),
                ..e.clone()
            })
            .collect())
    }

    async fn payout_lines(&self, program: &str, id: Uuid) -> Result<Vec<PayoutRow>, SinkError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .payouts
            .get(&id)
            .map(|l| {
                l.iter()
                    .filter(|p| p.program_id == program)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn disputes(
        &self,
        program: Option<&str>,
        id: Option<Uuid>,
    ) -> Result<Vec<DisputeRow>, SinkError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<DisputeRow> = inner
            .disputes
            .values()
            .filter(|d| program.is_none_or(|p| d.program_id == p))
            .filter(|d| id.is_none_or(|i| d.dispute_id == i))
            .cloned()
            .collect();
        rows.sort_by_key(|d| (d.opened_at, d.dispute_id));
        Ok(rows)
    }

    async fn tier_moves(
        &self,
        program: &str,
        partner: &str,
    ) -> Result<Vec<TierMoveRow>, SinkError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner
            .tier_moves
            .get(&(program.to_string(), partner.to_string()))
            .map(|m| m.values().take(super::MAX_LIMIT).cloned().collect())
            .unwrap_or_default())
    }

    async fn tier_figures(
        &self,
        program: &str,
        partner: &str,
        period: &str,
    ) -> Result<Figures, SinkError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (program.to_string(), partner.to_string(), period.to_string());
        Ok(inner
            .tier_figures
            .get(&key)
            .map(|m| m.values().fold(Figures::default(), |a, f| a.plus(*f)))
            .unwrap_or_default())
    }
}

/// A sink whose rows, once durable, are visible to the ledger API through a
/// [`MemoryLedger`].
pub struct Indexed {
    inner: Arc<dyn Sink>,
    index: Arc<MemoryLedger>,
}

#[async_trait]
impl Sink for Indexed {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        self.inner.write(batch).await?;
        // Durable first, then visible to the API.
        self.index.record(batch);
        Ok(())
    }

    async fn ping(&self) -> Result<(), SinkError> {
        self.inner.ping().await
    }
}

/// The file sink's ledger: the sink to write through and the index it keeps, loaded
/// with what the files already hold.
pub fn over_files(file: Arc<FileSink>) -> std::io::Result<(Arc<Indexed>, Arc<MemoryLedger>)> {
    let index = Arc::new(MemoryLedger::default());
    index.record(&file.ledger_rows()?);
    index.note_earned(file.earned_reasons()?);
    let sink = Arc::new(Indexed {
        inner: file,
        index: index.clone(),
    });
    Ok((sink, index))
}
