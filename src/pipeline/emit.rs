//! What a decision becomes: rows, webhook events and counters.

use rust_decimal::Decimal;

use super::counts::Counts;
use super::resolve;
use super::resolve::Memo;
use crate::engine::dedup;
use crate::engine::settle::ConversionStatus;
use crate::engine::Status;
use crate::events::{ClickEvent, ConversionEvent};
use crate::metrics as m;
use crate::money;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::sink::rows::{conversion_rows, ClickRow, RowKey, StatusRow, Step, TierFigureRow};
use crate::sink::Batch;

/// Bounded metric labels.
/// The metric label of `model`: one of the names there are, never a free string.
pub(super) fn model_label(model: &str) -> &'static str {
    crate::engine::attribution::MODEL_NAMES
        .into_iter()
        .find(|n| *n == model)
        .unwrap_or("other")
}

pub(super) fn currency_label(code: &str) -> &'static str {
    // KNOWN is sorted (money's tests); a row per commission asks.
    money::KNOWN
        .binary_search(&code)
        .map_or("other", |i| money::KNOWN[i])
}

/// What the pipeline has decided and not yet written: rows, their webhook events
/// (published once the rows are written), the hold ends whose approvals are among the
/// rows (removed from the queue once written), and the round's counter increments
/// (handed to the recorder when the round ends).
#[derive(Default)]
pub(super) struct Output {
    pub(super) rows: Batch,
    pub(super) outbox: Outbox,
    pub(super) due_done: Vec<String>,
    /// State written once the rows are (a boundary's tier moves marked done).
    pub(super) after_write: Vec<crate::pipeline::store::Write>,
    pub(super) counts: Counts,
}

impl Output {
    pub(super) fn click(&mut self, c: ClickEvent, verdict: dedup::ClickVerdict) {
        let counts = &mut self.counts;
        counts.add(
            m::PIPELINE_CLICK_DEDUP_TOTAL,
            [("result", verdict.as_str())],
            1,
        );
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "clicks"), ("result", "ok")],
            1,
        );
        self.rows.clicks.push(ClickRow::new(c, verdict));
    }

    // Long on purpose: one row builder per table of SPEC §4 from the same memo, in the
    // order the tables are written.
    pub(super) fn conversion(&mut self, registry: &Registry, e: &ConversionEvent, memo: &Memo) {
        let d = &memo.decision;
        let life = &memo.lifecycle;
        let (conversion, attributions, commissions) = conversion_rows(e, d, &memo.campaigns, life);
        let first_step = self.rows.statuses.len();
        // The lifecycle: each row's creation, and the rows a refund cancels.
        for (i, c) in commissions.iter().enumerate() {
            let (status, reason) = life.created(i);
            self.counts.add(
                m::PIPELINE_LIFECYCLE_STEPS_TOTAL,
                [("status", status.as_str())],
                1,
            );
            let row = RowKey {
                commission_id: c.commission_id,
                conversion_id: e.conversion_id,
                program_id: &e.program_id,
                partner_id: &c.partner_id,
                kind: c.kind,
                amount: c.amount,
                currency: &d.currency,
            };
            let step = Step {
                step: 0,
                status,
                reason,
                actor: "pipeline",
                at: e.received_at,
            };
            self.rows.statuses.push(StatusRow::step(&row, step));
        }
        for r in &life.cancels {
            self.counts.add(
                m::PIPELINE_LIFECYCLE_STEPS_TOTAL,
                [("status", "reversed")],
                1,
            );
            self.rows.statuses.push(resolve::step_row(
                r,
                &e.program_id,
                &d.currency,
                1,
                Status::Reversed,
                "refunded before approval",
                e.received_at,
            ));
        }
        for rule in &life.standing.held {
            self.counts
                .add(m::PIPELINE_FRAUD_FLAGS_TOTAL, [("rule", rule.as_str())], 1);
        }
        let counts = &mut self.counts;
        counts.add(
            m::PIPELINE_MESSAGES_TOTAL,
            [("topic", "conversions"), ("result", "ok")],
            1,
        );
        counts.add(
            m::PIPELINE_CONVERSIONS_TOTAL,
            [("kind", e.kind.as_str()), ("status", d.status.as_str())],
            1,
        );
        if d.status == ConversionStatus::Attributed && !d.model.is_empty() {
            counts.add(
                m::PIPELINE_ATTRIBUTIONS_TOTAL,
                [("model", model_label(&d.model))],
                1,
            );
        }
        let minor = money::minor_units(&d.currency);
        let currency = currency_label(&d.currency);
        for r in &d.rows {
            let units = (r.amount * Decimal::from(10u64.pow(minor))).trunc();
            let units = u64::try_from(units.abs().mantissa()).unwrap_or(0);
            counts.add(
                m::PIPELINE_COMMISSION_MINOR_UNITS_TOTAL,
                [("currency", currency), ("kind", r.kind.as_str())],
                units,
            );
        }
        self.outbox.conversion(
            registry,
            &conversion,
            &commissions,
            &self.rows.statuses[first_step..],
        );
        self.rows.conversions.push(conversion);
        self.rows.attributions.extend(attributions);
        self.rows.commissions.extend(commissions);
        self.rows
            .tier_figures
            .extend(memo.tiers.iter().map(|c| TierFigureRow {
                program_id: c.key.program.clone(),
                partner_id: c.key.partner.clone(),
                period: c.key.period.clone(),
                conversion_id: e.conversion_id,
                conversions: c.figures.conversions,
                revenue: c.figures.revenue,
                commission: c.figures.commission,
            }));
    }
}
