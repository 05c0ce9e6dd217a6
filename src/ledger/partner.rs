//! The ledger as one partner reads it (SPEC §9.1): its rows, its balance by status and
//! its payouts, derived from the same entries finance reads, so the two always agree.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use super::{Entry, Filter, Ledger, LedgerError};
use crate::engine::Status;

/// A partner's balance in the program currency, per status of its rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub pending: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub held: Decimal,
    /// Approved and unpaid, clawbacks netted: what the next payout would pay when
    /// positive.
    #[serde(with = "rust_decimal::serde::str")]
    pub approved: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    /// Approved reversals beyond what is approved and unpaid: a negative balance carried
    /// into the next payout, shown as a positive amount (0 when there is none).
    #[serde(with = "rust_decimal::serde::str")]
    pub carried_clawback: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub rejected: Decimal,
    /// Rows in each of the figures above.
    pub rows: u64,
}

impl Balance {
    /// Sums `entries` (one partner's, in one currency) by status.
    pub fn of(currency: &str, entries: &[Entry]) -> Balance {
        let mut b = Balance {
            currency: currency.to_string(),
            pending: Decimal::ZERO,
            held: Decimal::ZERO,
            approved: Decimal::ZERO,
            paid: Decimal::ZERO,
            carried_clawback: Decimal::ZERO,
            rejected: Decimal::ZERO,
            rows: entries.len() as u64,
        };
        for e in entries {
            let slot = match e.status {
                Status::Pending => &mut b.pending,
                Status::Held => &mut b.held,
                Status::Approved => &mut b.approved,
                Status::Paid => &mut b.paid,
                Status::Rejected => &mut b.rejected,
                // A cancelled row and its reversals net to zero: nothing is owed.
                Status::Reversed => continue,
            };
            *slot += e.amount;
        }
        if b.approved < Decimal::ZERO {
            b.carried_clawback = -b.approved;
        }
        // Rows are exact to the minor unit; shown at it ("10.00", "0.00"), whatever
        // scale the store answered with.
        let units = crate::money::minor_units(currency);
        for d in [
            &mut b.pending,
            &mut b.held,
            &mut b.approved,
            &mut b.paid,
            &mut b.carried_clawback,
            &mut b.rejected,
        ] {
            d.rescale(units);
        }
        b
    }
}

/// One payout as a partner sees it: its own line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartnerPayout {
    pub payout_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub rows: u32,
    #[serde(with = "crate::events::rfc3339_millis")]
    pub paid_at: DateTime<Utc>,
}

/// The partner's payouts from its paid rows, newest first.
pub fn payouts_of(entries: &[Entry]) -> Vec<PartnerPayout> {
    let mut by_id: BTreeMap<&str, PartnerPayout> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.status == Status::Paid) {
        let p = by_id
            .entry(e.payout_id.as_str())
            .or_insert_with(|| PartnerPayout {
                payout_id: e.payout_id.clone(),
                amount: Decimal::ZERO,
                currency: e.currency.clone(),
                rows: 0,
                paid_at: e.at,
            });
        p.amount += e.amount;
        p.rows += 1;
        p.paid_at = p.paid_at.min(e.at);
    }
    let mut out: Vec<PartnerPayout> = by_id.into_values().collect();
    for p in &mut out {
        p.amount.rescale(crate::money::minor_units(&p.currency));
    }
    out.sort_by(|a, b| (b.paid_at, &b.payout_id).cmp(&(a.paid_at, &a.payout_id)));
    out
}

impl Ledger {
    /// Every row of one partner of `program`, a page at a time.
    pub async fn partner_entries(
        &self,
        program: &str,
        partner: &str,
    ) -> Result<Vec<Entry>, LedgerError> {
        const PAGE: usize = 100_000;
        let mut rows = Vec::new();
        let mut after: Option<Uuid> = None;
        loop {
            let page = self
                .view
                .entries(&Filter {
                    program_id: program.to_string(),
                    partner_id: Some(partner.to_string()),
                    after,
                    limit: PAGE,
                    ..Filter::default()
                })
                .await?;
            let full = page.len() == PAGE;
            after = page.last().map(|e| e.commission_id);
            rows.extend(page);
            if !full {
                return Ok(rows);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LedgerKind;

    fn entry(n: u128, amount: &str, status: Status, payout: &str) -> Entry {
        Entry {
            commission_id: Uuid::from_u128(n),
            conversion_id: Uuid::from_u128(100 + n),
            program_id: "acme".into(),
            partner_id: "alice".into(),
            kind: LedgerKind::Direct,
            amount: amount.parse().unwrap(),
            currency: "USD".into(),
            status,
            step: 1,
            reason: String::new(),
            earned_reason: String::new(),
            actor: "pipeline".into(),
            at: DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap(),
            created_at: DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap(),
            payout_id: payout.into(),
        }
    }

    #[test]
    fn the_balance_adds_each_status_and_carries_a_clawback() {
        let rows = [
            entry(1, "10.00", Status::Pending, ""),
            entry(2, "2.50", Status::Held, ""),
            entry(3, "4.00", Status::Approved, ""),
            entry(4, "-7.25", Status::Approved, ""),
            entry(5, "30.00", Status::Paid, "p1"),
            entry(6, "5.00", Status::Reversed, ""),
            entry(7, "1.00", Status::Rejected, ""),
        ];
        let b = Balance::of("USD", &rows);
        assert_eq!(b.pending, "10.00".parse().unwrap());
        assert_eq!(b.pending.to_string(), "10.00");
        assert_eq!(Balance::of("USD", &[]).held.to_string(), "0.00");
        assert_eq!(b.held, "2.50".parse().unwrap());
        assert_eq!(b.approved, "-3.25".parse().unwrap());
        assert_eq!(b.carried_clawback, "3.25".parse().unwrap());
        assert_eq!(b.paid, "30.00".parse().unwrap());
        assert_eq!(b.rejected, "1.00".parse().unwrap());
        assert_eq!(b.rows, 7);
    }

    #[test]
    fn payouts_are_the_paid_rows_by_batch() {
        let rows = [
            entry(1, "10.00", Status::Paid, "p1"),
            entry(2, "-2.00", Status::Paid, "p1"),
            entry(9, "5.00", Status::Paid, "p2"),
            entry(4, "1.00", Status::Approved, ""),
        ];
        let p = payouts_of(&rows);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].payout_id.as_str(), p[0].rows), ("p2", 1));
        assert_eq!(p[1].amount, "8.00".parse().unwrap());
        assert_eq!(p[1].rows, 2);
    }
}
