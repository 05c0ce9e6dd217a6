//! Disputes and inquiries (SPEC §9.1): a partner disputes one of its ledger rows, or
//! asks about an order it says it referred; the program accepts with an amount, which
//! books one `adjustment` row that follows the lifecycle from `approved` (and so is
//! paid with the next payout), or rejects, which books nothing. A dispute keeps its own
//! states (open, accepted, rejected) in `disputes`; the disputed row keeps its status.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Filter, Ledger, LedgerError};
use crate::engine::{LedgerKind, Status};
use crate::sink::rows::{millis, CommissionRow, DisputeRow, RowKey, StatusRow, Step};
use crate::sink::Batch;

/// Namespace of adjustment rows: uuid v5 of the dispute id, so that accepting again
/// after a crash writes the same row.
const ADJUSTMENT_NS: Uuid = Uuid::from_u128(0x2b7e_9c14_5a3d_4f80_a6c1_d09e_83f2_b517);

/// Open disputes one partner may have at once: every accepted value has a bound.
pub const MAX_OPEN_PER_PARTNER: usize = 100;

/// What a dispute is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One of the partner's ledger rows.
    Commission(Uuid),
    /// An order the partner says it referred, which earned it nothing.
    Order(String),
}

/// A partner's dispute, as opened.
#[derive(Debug, Clone)]
pub struct Opening {
    pub program: String,
    pub partner: String,
    pub currency: String,
    pub target: Target,
    pub claimed: Option<Decimal>,
    pub message: String,
}

/// The program's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Book an adjustment of this amount (program currency, rounded to its minor unit).
    Accept(Decimal),
    Reject,
}

impl Resolution {
    fn status(self) -> &'static str {
        match self {
            Resolution::Accept(_) => "accepted",
            Resolution::Reject => "rejected",
        }
    }
}

/// The adjustment amount as booked: half-even to the currency's minor unit (§5.5).
pub fn rounded(amount: Decimal, currency: &str) -> Decimal {
    crate::money::at_minor_units(amount, crate::money::minor_units(currency))
}

impl Ledger {
    /// Opens a dispute, or returns the one the partner already has open about the same
    /// row or order (`false`): repeating the request opens nothing new.
    pub async fn open_dispute(
        &self,
        o: Opening,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<(DisputeRow, bool), LedgerError> {
        self.locked(&o.program.clone(), async {
            self.check_target(&o).await?;
            let all = self.view.disputes(Some(&o.program), None).await?;
            let open: Vec<&DisputeRow> = all
                .iter()
                .filter(|d| d.partner_id == o.partner && d.status == "open")
                .collect();
            if let Some(same) = open.iter().find(|d| same_target(d, &o.target)) {
                return Ok(((*same).clone(), false));
            }
            if open.len() >= MAX_OPEN_PER_PARTNER {
                return Err(LedgerError::Conflict(format!(
                    "the partner has {MAX_OPEN_PER_PARTNER} open disputes"
                )));
            }
            let row = DisputeRow {
                dispute_id: Uuid::now_v7(),
                version: 0,
                program_id: o.program.clone(),
                partner_id: o.partner.clone(),
                commission_id: match &o.target {
                    Target::Commission(id) => id.to_string(),
                    Target::Order(_) => String::new(),
                },
                order_id: match &o.target {
                    Target::Order(order) => order.clone(),
                    Target::Commission(_) => String::new(),
                },
                claimed_amount: o.claimed.map(|c| c.to_string()).unwrap_or_default(),
                currency: o.currency.clone(),
                message: o.message.clone(),
                status: "open".into(),
                amount: Decimal::ZERO,
                adjustment_id: String::new(),
                note: String::new(),
                actor: by.to_string(),
                opened_at: now,
                opened_at_ms: millis(now),
                at: now,
                at_ms: millis(now),
            };
            self.write_disputes(std::slice::from_ref(&row)).await?;
            Ok((row, true))
        })
        .await
    }

    /// A disputed row must be the partner's own (another's answers as missing).
    async fn check_target(&self, o: &Opening) -> Result<(), LedgerError> {
        let Target::Commission(id) = o.target else {
            return Ok(());
        };
        match self.row(&o.program, Some(&o.partner), id).await? {
            Some(_) => Ok(()),
            None => Err(LedgerError::NotFound("commission not found".into())),
        }
    }

    /// Ledger row `id` of `program` (and `partner`), with its current status.
    async fn row(
        &self,
        program: &str,
        partner: Option<&str>,
        id: Uuid,
    ) -> Result<Option<super::Entry>, LedgerError> {
        let found = self
            .view
            .entries(&Filter {
                program_id: program.to_string(),
                partner_id: partner.map(str::to_string),
                ids: vec![id],
                limit: 1,
                ..Filter::default()
            })
            .await?;
        Ok(found.into_iter().next())
    }

    /// The current version of dispute `id`, of whichever program.
    pub async fn find_dispute(&self, id: Uuid) -> Result<Option<DisputeRow>, LedgerError> {
        Ok(self.view.disputes(None, Some(id)).await?.into_iter().next())
    }

    /// The current version of dispute `id` of `program`.
    pub async fn dispute(&self, program: &str, id: Uuid) -> Result<DisputeRow, LedgerError> {
        self.view
            .disputes(Some(program), Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| LedgerError::NotFound("dispute not found".into()))
    }

    /// The disputes of `program` (of one partner, if given), oldest first.
    pub async fn disputes_of(
        &self,
        program: &str,
        partner: Option<&str>,
    ) -> Result<Vec<DisputeRow>, LedgerError> {
        let mut rows = self.view.disputes(Some(program), None).await?;
        rows.retain(|d| partner.is_none_or(|p| d.partner_id == p));
        Ok(rows)
    }

    /// Accepts or rejects an open dispute. The same decision again returns the dispute
    /// as it is and books nothing; another decision on a resolved dispute is a
    /// conflict. Accepting writes the adjustment first, then the resolution, so a
    /// request repeated after a crash completes it with the same row.
    pub async fn resolve_dispute(
        &self,
        program: &str,
        id: Uuid,
        resolution: Resolution,
        note: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<DisputeRow, LedgerError> {
        self.locked(program, async {
            let d = self.dispute(program, id).await?;
            let amount = match resolution {
                Resolution::Accept(a) => rounded(a, &d.currency),
                Resolution::Reject => Decimal::ZERO,
            };
            if d.status != "open" {
                return if d.status == resolution.status() && d.amount == amount {
                    self.republish(&d).await?;
                    Ok(d)
                } else {
                    Err(LedgerError::Conflict(format!(
                        "the dispute is already {}",
                        d.status
                    )))
                };
            }
            let mut resolved = d.clone();
            resolved.version = 1;
            resolved.status = resolution.status().into();
            resolved.amount = amount;
            resolved.note = note.to_string();
            resolved.actor = by.to_string();
            resolved.at = now;
            resolved.at_ms = millis(now);
            if let Resolution::Accept(_) = resolution {
                resolved.adjustment_id = self.book_adjustment(&d, amount, by, now).await?;
            }
            self.write_disputes(std::slice::from_ref(&resolved)).await?;
            Ok(resolved)
        })
        .await
    }

    /// Writes the adjustment row of an accepted dispute (approved at once) and
    /// publishes its creation; its id.
    async fn book_adjustment(
        &self,
        d: &DisputeRow,
        amount: Decimal,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<String, LedgerError> {
        let id = Uuid::new_v5(&ADJUSTMENT_NS, d.dispute_id.as_bytes());
        let booked = self.row(&d.program_id, None, id).await?;
        if booked.is_some_and(|e| e.amount != amount) {
            return Err(LedgerError::Conflict(
                "an adjustment of another amount is already booked for this dispute".into(),
            ));
        }
        // The disputed row's conversion; none for an inquiry about an order.
        let conversion = match d.commission_id.parse::<Uuid>() {
            Ok(c) => self
                .row(&d.program_id, None, c)
                .await?
                .map_or(Uuid::nil(), |e| e.conversion_id),
            Err(_) => Uuid::nil(),
        };
        let kind = LedgerKind::Adjustment.as_str();
        let reason = format!("dispute {}", d.dispute_id);
        let key = RowKey {
            commission_id: id,
            conversion_id: conversion,
            program_id: &d.program_id,
            partner_id: &d.partner_id,
            kind,
            amount,
            currency: &d.currency,
        };
        let step = StatusRow::step(
            &key,
            Step {
                step: 0,
                status: Status::Approved,
                reason: &reason,
                actor: by,
                at: now,
            },
        );
        let row = CommissionRow {
            commission_id: id,
            conversion_id: conversion,
            program_id: d.program_id.clone(),
            partner_id: d.partner_id.clone(),
            level: 0,
            kind,
            base_amount: amount,
            rate: Decimal::ONE,
            amount,
            currency: d.currency.clone(),
            status: Status::Approved.as_str(),
            created_at: now,
            created_at_ms: millis(now),
            occurred_at: now,
            occurred_at_ms: millis(now),
            reason: String::new(),
            customer_id: String::new(),
        };
        let batch = Batch {
            commissions: vec![row.clone()],
            statuses: vec![step.clone()],
            ..Batch::default()
        };
        self.sink.write(&batch).await?;
        self.publish(|o, r| o.commissions(r, &[row])).await?;
        Ok(id.to_string())
    }

    async fn write_disputes(&self, rows: &[DisputeRow]) -> Result<(), LedgerError> {
        self.sink
            .write(&Batch {
                disputes: rows.to_vec(),
                ..Batch::default()
            })
            .await?;
        self.publish(|o, r| o.disputes(r, rows)).await
    }

    /// The events of a resolution again: the request that made it may have stopped
    /// before publishing them.
    async fn republish(&self, d: &DisputeRow) -> Result<(), LedgerError> {
        self.publish(|o, r| o.disputes(r, std::slice::from_ref(d)))
            .await
    }
}

fn same_target(d: &DisputeRow, t: &Target) -> bool {
    match t {
        Target::Commission(id) => d.commission_id == id.to_string(),
        Target::Order(order) => d.order_id == *order,
    }
}
