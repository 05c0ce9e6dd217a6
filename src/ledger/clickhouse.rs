//! The ledger as ClickHouse holds it (SPEC §3.5): current statuses from the audit trail
//! `commission_status`, payout lines, disputes. Reads only; the rows are written by the
//! sink.

use async_trait::async_trait;
use clickhouse::Client;

use super::{Entry, Filter, LedgerView, TierMoveRow};
use crate::config::ClickHouseConfig;
use crate::engine::tiers::Figures;
use crate::engine::{LedgerKind, Status};
use crate::sink::clickhouse::{classify, client};
use crate::sink::{DisputeRow, PayoutRow, SinkError};

/// Reads the ledger's tables.
pub struct ClickHouseLedger {
    client: Client,
}

impl ClickHouseLedger {
    pub fn new(cfg: &ClickHouseConfig) -> Self {
        ClickHouseLedger {
            client: client(cfg),
        }
    }
}

/// A ledger row's current status as ClickHouse answers it: text columns, parsed here
/// (18.16 has no typed RowBinary header to check against).
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct EntryText {
    commission_id: String,
    conversion_id: String,
    program_id: String,
    partner_id: String,
    kind: String,
    amount: String,
    currency: String,
    status: String,
    step: u8,
    reason: String,
    actor: String,
    at_ms: i64,
    payout_id: String,
    created_ms: i64,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct PayoutText {
    partner_id: String,
    amount: String,
    currency: String,
    rows: u32,
    up_to: u32,
    created_at: u32,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct DisputeText {
    dispute_id: String,
    version: u32,
    program_id: String,
    partner_id: String,
    commission_id: String,
    order_id: String,
    claimed_amount: String,
    currency: String,
    message: String,
    status: String,
    amount: String,
    adjustment_id: String,
    note: String,
    actor: String,
    opened_at: u32,
    opened_at_ms: u16,
    at: u32,
    at_ms: u16,
}

impl DisputeText {
    fn row(self) -> Result<DisputeRow, SinkError> {
        let time = |secs: u32, ms: u16| {
            chrono::DateTime::from_timestamp(i64::from(secs), u32::from(ms) * 1_000_000)
                .ok_or_else(|| corrupt("dispute time"))
        };
        Ok(DisputeRow {
            dispute_id: self.dispute_id.parse().map_err(|_| corrupt("dispute id"))?,
            version: self.version,
            opened_at: time(self.opened_at, self.opened_at_ms)?,
            at: time(self.at, self.at_ms)?,
            amount: self.amount.parse().map_err(|_| corrupt("dispute amount"))?,
            program_id: self.program_id,
            partner_id: self.partner_id,
            commission_id: self.commission_id,
            order_id: self.order_id,
            claimed_amount: self.claimed_amount,
            currency: self.currency,
            message: self.message,
            status: self.status,
            adjustment_id: self.adjustment_id,
            note: self.note,
            actor: self.actor,
            opened_at_ms: self.opened_at_ms,
            at_ms: self.at_ms,
        })
    }
}

fn corrupt(what: &str) -> SinkError {
    SinkError::Transient(format!("unreadable {what} in ClickHouse"))
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ReasonText {
    id: String,
    earned: String,
}

impl ClickHouseLedger {
    /// Sets each entry's `earned_reason` from its row of `commissions` (the status
    /// trail does not carry it).
    async fn add_earned_reasons(
        &self,
        program: &str,
        entries: &mut [Entry],
    ) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Formatted from parsed uuids: nothing but hex digits and dashes.
        let ids: Vec<String> = entries
            .iter()
            .map(|e| format!("'{}'", e.commission_id))
            .collect();
        let sql = format!(
            "SELECT toString(commission_id) AS id, any(reason) AS earned FROM commissions \
             WHERE program_id = ? AND reason != '' AND toString(commission_id) IN ({}) \
             GROUP BY commission_id",
            ids.join(",")
        );
        let rows: Vec<ReasonText> = self
            .client
            .query(&sql)
            .bind(program)
            .fetch_all()
            .await
            .map_err(classify)?;
        let by_id: std::collections::HashMap<String, String> =
            rows.into_iter().map(|r| (r.id, r.earned)).collect();
        for e in entries {
            if let Some(r) = by_id.get(&e.commission_id.to_string()) {
                e.earned_reason = r.clone();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LedgerView for ClickHouseLedger {
    // Long on purpose: the SQL and its bound parameters side by side, filter by filter.
    async fn entries(&self, f: &Filter) -> Result<Vec<Entry>, SinkError> {
        // The current status is that of the highest step; a step written twice is the
        // same row, so argMax needs no FINAL.
        let mut sql = String::from(
            "SELECT toString(commission_id) AS id, toString(argMax(conversion_id, step)), \
             argMax(program_id, step), argMax(partner_id, step), argMax(kind, step), \
             toString(argMax(amount, step)), argMax(currency, step), argMax(status, step) AS st, \
             max(step), argMax(reason, step), argMax(actor, step), \
             toInt64(toUInt32(argMax(at, step))) * 1000 + argMax(at_ms, step), \
             argMax(payout_id, step), \
             toInt64(toUInt32(argMin(at, step))) * 1000 + argMin(at_ms, step) AS created_ms \
             FROM commission_status WHERE program_id = ?",
        );
        if f.partner_id.is_some() {
            sql.push_str(" AND partner_id = ?");
        }
        if !f.ids.is_empty() {
            // Formatted from parsed uuids: nothing but hex digits and dashes.
            let ids: Vec<String> = f.ids.iter().map(|u| format!("'{u}'")).collect();
            sql.push_str(&format!(
                " AND toString(commission_id) IN ({})",
                ids.join(",")
            ));
        }
        sql.push_str(" GROUP BY commission_id HAVING 1");
        if f.status.is_some() {
            sql.push_str(" AND st = ?");
        }
        if f.after.is_some() {
            sql.push_str(" AND id > ?");
        }
        if f.from.is_some() {
            sql.push_str(" AND created_ms >= ?");
        }
        if f.to.is_some() {
            sql.push_str(" AND created_ms < ?");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit));
        let mut q = self.client.query(&sql).bind(f.program_id.as_str());
        if let Some(p) = &f.partner_id {
            q = q.bind(p.as_str());
        }
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some(a) = f.after {
            q = q.bind(a.to_string());
        }
        for t in [f.from, f.to].into_iter().flatten() {
            q = q.bind(t.timestamp_millis());
        }
        let rows: Vec<EntryText> = q.fetch_all().await.map_err(classify)?;
        let mut entries: Vec<Entry> = rows
            .into_iter()
            .map(|r| {
                Ok(Entry {
                    commission_id: r
                        .commission_id
                        .parse()
                        .map_err(|_| corrupt("commission_id"))?,
                    conversion_id: r
                        .conversion_id
                        .parse()
                        .map_err(|_| corrupt("conversion_id"))?,
                    program_id: r.program_id,
                    partner_id: r.partner_id,
                    kind: LedgerKind::parse(&r.kind).ok_or_else(|| corrupt("kind"))?,
                    amount: r.amount.parse().map_err(|_| corrupt("amount"))?,
                    currency: r.currency,
                    status: Status::parse(&r.status).ok_or_else(|| corrupt("status"))?,
                    step: r.step,
                    reason: r.reason,
                    earned_reason: String::new(),
                    actor: r.actor,
                    at: chrono::DateTime::from_timestamp_millis(r.at_ms)
                        .ok_or_else(|| corrupt("at"))?,
                    created_at: chrono::DateTime::from_timestamp_millis(r.created_ms)
                        .ok_or_else(|| corrupt("created_at"))?,
                    payout_id: r.payout_id,
                })
            })
            .collect::<Result<_, SinkError>>()?;
        self.add_earned_reasons(&f.program_id, &mut entries).await?;
        Ok(entries)
    }

    async fn payout_lines(
        &self,
        program: &str,
        id: uuid::Uuid,
    ) -> Result<Vec<PayoutRow>, SinkError> {
        let rows: Vec<PayoutText> = self
            .client
            .query(
                "SELECT partner_id, toString(any(amount)), any(currency), any(rows), \
                 toUInt32(any(up_to)), toUInt32(any(created_at)) \
                 FROM payouts WHERE program_id = ? AND toString(payout_id) = ? \
                 GROUP BY partner_id ORDER BY partner_id",
            )
            .bind(program)
            .bind(id.to_string())
            .fetch_all()
            .await
            .map_err(classify)?;
        let time = |s: u32| chrono::DateTime::from_timestamp(i64::from(s), 0).unwrap_or_default();
        rows.into_iter()
            .map(|r| {
                Ok(PayoutRow {
                    payout_id: id,
                    program_id: program.to_string(),
                    up_to: time(r.up_to),
                    partner_id: r.partner_id,
                    amount: r.amount.parse().map_err(|_| corrupt("amount"))?,
                    currency: r.currency,
                    rows: r.rows,
                    created_at: time(r.created_at),
                })
            })
            .collect()
    }

    async fn disputes(
        &self,
        program: Option<&str>,
        id: Option<uuid::Uuid>,
    ) -> Result<Vec<DisputeRow>, SinkError> {
        let mut sql = String::from(
            "SELECT toString(dispute_id), version, program_id, partner_id, commission_id, \
             order_id, claimed_amount, currency, message, status, toString(amount), \
             adjustment_id, note, actor, toUInt32(opened_at), opened_at_ms, toUInt32(at), \
             at_ms FROM disputes FINAL WHERE 1",
        );
        if program.is_some() {
            sql.push_str(" AND program_id = ?");
        }
        if id.is_some() {
            sql.push_str(" AND toString(dispute_id) = ?");
        }
        sql.push_str(" ORDER BY opened_at, opened_at_ms, dispute_id");
        let mut q = self.client.query(&sql);
        if let Some(p) = program {
            q = q.bind(p);
        }
        if let Some(i) = id {
            q = q.bind(i.to_string());
        }
        let rows: Vec<DisputeText> = q.fetch_all().await.map_err(classify)?;
        rows.into_iter().map(DisputeText::row).collect()
    }

    async fn tier_moves(
        &self,
        program: &str,
        partner: &str,
    ) -> Result<Vec<TierMoveRow>, SinkError> {
        let rows: Vec<TierText> = self
            .client
            .query(
                "SELECT toUInt32(effective_at), effective_at_ms, tier, previous, source, \
                 conversions, toString(revenue), toString(commission) FROM partner_tiers FINAL \
                 WHERE program_id = ? AND partner_id = ? \
                 ORDER BY effective_at, effective_at_ms, source LIMIT ?",
            )
            .bind(program)
            .bind(partner)
            .bind(super::MAX_LIMIT as u64)
            .fetch_all()
            .await
            .map_err(classify)?;
        rows.into_iter().map(TierText::row).collect()
    }

    async fn tier_figures(
        &self,
        program: &str,
        partner: &str,
        period: &str,
    ) -> Result<Figures, SinkError> {
        let rows: Vec<FiguresText> = self
            .client
            .query(
                "SELECT sum(conversions), toString(sum(revenue)), toString(sum(commission)) \
                 FROM partner_tier_figures FINAL \
                 WHERE program_id = ? AND partner_id = ? AND period = ?",
            )
            .bind(program)
            .bind(partner)
            .bind(period)
            .fetch_all()
            .await
            .map_err(classify)?;
        let Some(f) = rows.into_iter().next() else {
            return Ok(Figures::default());
        };
        let amount = |s: &str| s.parse().map_err(|_| corrupt("tier figures"));
        Ok(Figures {
            conversions: f.conversions,
            revenue: amount(&f.revenue)?,
            commission: amount(&f.commission)?,
        })
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TierText {
    effective_at: u32,
    effective_at_ms: u16,
    tier: String,
    previous: String,
    source: String,
    conversions: u64,
    revenue: String,
    commission: String,
}

impl TierText {
    fn row(self) -> Result<TierMoveRow, SinkError> {
        let amount = |s: &str| s.parse().map_err(|_| corrupt("tier move"));
        Ok(TierMoveRow {
            effective_at: chrono::DateTime::from_timestamp(
                i64::from(self.effective_at),
                u32::from(self.effective_at_ms) * 1_000_000,
            )
            .ok_or_else(|| corrupt("tier move time"))?,
            figures: Figures {
                conversions: self.conversions,
                revenue: amount(&self.revenue)?,
                commission: amount(&self.commission)?,
            },
            tier: self.tier,
            previous: self.previous,
            source: self.source,
        })
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct FiguresText {
    conversions: u64,
    revenue: String,
    commission: String,
}
