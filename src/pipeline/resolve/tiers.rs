//! Tier moves (SPEC §10.2) in resolution: the moves a conversion's partners are paid
//! under, and what a settled conversion counts toward its partners' tier figures
//! (remembered in its memo, written as effects).

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::settle::{ConversionStatus, Decision, OrderRecord};
use crate::engine::tiers::{self, Figures, TierMove};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::TierKey;
use crate::registry::Program;

/// The automatic moves made so far, by program and partner, oldest first. Moves are
/// made only at boundaries, by every instance before it settles anything past one
/// (set once in the state, so all hold the same), and so a book of them in process
/// is what the state holds for every conversion it settles.
#[derive(Debug, Default, Clone)]
pub struct TierBook {
    moves: HashMap<String, HashMap<String, Vec<TierMove>>>,
}

impl TierBook {
    /// The partner's moves, oldest first.
    pub fn moves(&self, program: &str, partner: &str) -> &[TierMove] {
        self.moves
            .get(program)
            .and_then(|p| p.get(partner))
            .map_or(&[], Vec::as_slice)
    }

    /// The partner's latest move at or before `t`.
    pub fn latest(
        &self,
        program: &str,
        partner: &str,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<&TierMove> {
        tiers::latest_move(self.moves(program, partner), t)
    }

    /// Adds a move (once per boundary), keeping the partner's moves in order.
    pub fn record(&mut self, program: &str, partner: &str, m: TierMove) {
        let moves = self
            .moves
            .entry(program.to_string())
            .or_default()
            .entry(partner.to_string())
            .or_default();
        if moves.iter().all(|e| e.from != m.from) {
            moves.push(m);
            moves.sort_by_key(|e| e.from);
        }
    }
}

/// What one conversion counts toward one partner's figures of one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    pub key: TierKey,
    pub figures: Figures,
}

/// What a settled conversion counts toward the figures of the partners it pays, in the
/// period of its later clock ([`tiers::counted_at`]): an attributed sale, lead or signup
/// one conversion and its credited revenue to each credited partner; every row its
/// amount to its partner's commission; a refund minus the refunded revenue of each
/// partner the order credited (orders recorded before their shares were have none).
pub(super) fn counted(
    program: &Program,
    e: &ConversionEvent,
    d: &Decision,
    order: Option<&OrderRecord>,
) -> Vec<Counted> {
    let Some(rules) = &program.tier_rules else {
        return Vec::new();
    };
    if d.status != ConversionStatus::Attributed {
        return Vec::new();
    }
    let mut by_partner: Vec<(String, Figures)> = Vec::new();
    let mut add =
        |partner: &str, f: Figures| match by_partner.iter_mut().find(|(p, _)| p == partner) {
            Some((_, sum)) => *sum = sum.plus(f),
            None => by_partner.push((partner.to_string(), f)),
        };
    if e.kind.is_journey_kind() {
        for (partner, weight) in d.shares() {
            let revenue = revenue(d.settled_amount, weight);
            add(
                &partner,
                Figures {
                    conversions: 1,
                    revenue,
                    commission: Decimal::ZERO,
                },
            );
        }
    }
    if let (ConversionKind::Refund, Some(order)) = (e.kind, order) {
        for (partner, weight) in &order.shares {
            let revenue = -revenue(d.settled_amount, *weight);
            add(
                partner,
                Figures {
                    conversions: 0,
                    revenue,
                    commission: Decimal::ZERO,
                },
            );
        }
    }
    for row in &d.rows {
        let commission = row.amount;
        add(
            &row.partner_id,
            Figures {
                commission,
                ..Figures::default()
            },
        );
    }
    let period = rules
        .period
        .key(tiers::counted_at(e.occurred_at, e.received_at));
    let mut out: Vec<Counted> = by_partner
        .into_iter()
        .filter(|(_, f)| !f.is_zero())
        .map(|(partner, figures)| Counted {
            key: TierKey {
                program: e.program_id.clone(),
                partner,
                period: period.clone(),
            },
            figures,
        })
        .collect();
    out.sort_by(|a, b| a.key.partner.cmp(&b.key.partner));
    out
}

/// A partner's share of a settled amount, to the ledger's 4 decimals (half even): what
/// the figures add is what `partner_tier_figures` shows, to the last digit.
fn revenue(settled: Decimal, weight: Decimal) -> Decimal {
    settled
        .checked_mul(weight)
        .unwrap_or_default()
        .round_dp_with_strategy(
            crate::money::AMOUNT_SCALE,
            rust_decimal::RoundingStrategy::MidpointNearestEven,
        )
}
