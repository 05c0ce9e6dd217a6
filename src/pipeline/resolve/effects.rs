//! What a settled conversion changes in the state, all idempotent: its claim, its
//! order's record and hold end, the tallies it adds to, a first sale, a refund's
//! reversals. The batch overlay records the same for later conversions of the batch.

use rust_decimal::Decimal;

use super::{DueEntry, Memo};
use crate::engine::dedup;
use crate::engine::rewards;
use crate::engine::settle::{self, ConversionStatus, Decision, FirstSale, OrderRecord};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::{Mark, OrderSlot, Tally, Write};
use crate::registry::{Program, Registry};

/// The reversals a refund booked on its order: earned row index and (negative) amount.
pub(super) type Booked = Vec<(usize, Decimal)>;

/// The state changes a settled conversion implies, all idempotent.
// Long on purpose: one arm per kind of conversion, each listing its writes; the list
// is what a reader checks for idempotence.
pub(super) fn effects(
    registry: &Registry,
    mark: Mark,
    e: &ConversionEvent,
    memo: &Memo,
) -> Vec<Write> {
    let d = &memo.decision;
    let mut out = Vec::new();
    if d.status == ConversionStatus::Duplicate {
        return out;
    }
    out.push(Write::Claim {
        key: dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id),
        holder: e.conversion_id.to_string(),
    });
    if let Some(slot) = order_slot(e.kind) {
        // Every settled order is recorded, earning or not: its refunds find it.
        if let Ok(json) = serde_json::to_string(&order_record(e, memo)) {
            out.push(Write::Order {
                program: e.program_id.clone(),
                order: e.order_id.clone(),
                slot,
                json,
            });
        }
        // Its hold ends in event time; the pipeline approves it once every conversion
        // received before then is settled.
        if let Some(due_ms) = memo
            .lifecycle
            .standing
            .due_ms
            .filter(|_| !d.rows.is_empty())
        {
            let entry = DueEntry {
                due_ms,
                conversion_id: e.conversion_id,
                program_id: e.program_id.clone(),
                order_id: e.order_id.clone(),
                currency: d.currency.clone(),
                slot,
            };
            if let Ok(json) = serde_json::to_string(&entry) {
                out.push(Write::Due { due_ms, json });
            }
        }
    }
    out.extend(memo.caps.iter().map(|c| Write::CapTotal {
        key: c.key.clone(),
        mark,
        total: c.total,
    }));
    out.extend(memo.tiers.iter().filter_map(|c| {
        Some(Write::TierFigures {
            key: c.key.clone(),
            conversion_id: e.conversion_id,
            json: serde_json::to_string(&c.figures).ok()?,
        })
    }));
    let program = registry.program(&e.program_id);
    out.extend(
        tallies(program.as_deref(), e, memo)
            .into_iter()
            .map(|tally| Write::Tally { tally, mark }),
    );
    if d.status != ConversionStatus::Attributed {
        return out;
    }
    if let (ConversionKind::Sale, Some(customer)) = (e.kind, &e.customer_id) {
        // Lifetime plans, and rules that read the customer's history, need its sales
        // for good; others the first sale until the recurring term ends.
        let ttl = program
            .as_deref()
            .filter(|p| !rewards::read_customer(&p.commission.rules))
            .and_then(|p| p.commission.recurring.months)
            .map(|m| std::time::Duration::from_secs(u64::from(m + 1) * 31 * 86_400));
        if let Ok(json) = serde_json::to_string(&first_sale(e, memo)) {
            out.push(Write::FirstSale {
                program: e.program_id.clone(),
                customer: customer.clone(),
                mark,
                json,
                ttl,
            });
        }
    }
    if let (ConversionKind::Refund, Some(original)) = (e.kind, &e.original_order_id) {
        if !d.rows.is_empty() {
            if let Ok(json) = serde_json::to_string(&booked(d)) {
                out.push(Write::Refund {
                    program: e.program_id.clone(),
                    order: original.clone(),
                    slot: memo.reversed,
                    mark,
                    json,
                });
            }
        }
    }
    out
}

/// The tallies a settled conversion adds to (at its mark): volumes of the partners of
/// an attributed sale, lead or signup; with `refund_rate` on, the sales and first
/// refunds of the partners credited directly.
pub(super) fn tallies(program: Option<&Program>, e: &ConversionEvent, memo: &Memo) -> Vec<Tally> {
    let d = &memo.decision;
    let mut out = Vec::new();
    if d.status != ConversionStatus::Attributed {
        return out;
    }
    if e.kind.is_journey_kind() {
        let month = settle::month_of(e.occurred_at);
        out.extend(d.shares().into_iter().map(|(partner, _)| Tally::Volume {
            program: e.program_id.clone(),
            partner,
            month,
        }));
    }
    if program.is_some_and(|p| p.fraud.refund_rate.is_some()) {
        let rate = match e.kind {
            ConversionKind::Sale => Some(true),
            ConversionKind::Refund if memo.first_refund => Some(false),
            _ => None,
        };
        if let Some(sale) = rate {
            out.extend(direct_partners(d).into_iter().map(|partner| {
                let program = e.program_id.clone();
                if sale {
                    Tally::Sales { program, partner }
                } else {
                    Tally::Refunds { program, partner }
                }
            }));
        }
    }
    out
}

/// The partners a decision credits directly (its level-0 rows), each once.
pub(super) fn direct_partners(d: &Decision) -> Vec<String> {
    let mut out: Vec<String> = d
        .rows
        .iter()
        .filter(|r| r.level == 0)
        .map(|r| r.partner_id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The record of its order a conversion keeps (refunds keep none).
pub(super) fn order_slot(kind: ConversionKind) -> Option<OrderSlot> {
    match kind {
        ConversionKind::Sale => Some(OrderSlot::Sale),
        ConversionKind::Recurring => Some(OrderSlot::Recurring),
        ConversionKind::Lead => Some(OrderSlot::Lead),
        ConversionKind::Signup => Some(OrderSlot::Signup),
        ConversionKind::Refund => None,
    }
}

pub(super) fn order_record(e: &ConversionEvent, memo: &Memo) -> OrderRecord {
    let d = &memo.decision;
    OrderRecord {
        conversion_id: e.conversion_id,
        settled_amount: d.settled_amount,
        rows: d.earned_rows(),
        standing: memo.lifecycle.standing.clone(),
        shares: d.shares(),
    }
}

pub(super) fn booked(d: &Decision) -> Booked {
    d.reverses
        .iter()
        .zip(&d.rows)
        .map(|(i, r)| (*i, r.amount))
        .collect()
}

pub(super) fn first_sale(e: &ConversionEvent, memo: &Memo) -> FirstSale {
    let d = &memo.decision;
    let shares = d.shares();
    let campaigns = shares
        .iter()
        .map(|(p, _)| heaviest_campaign(memo, p))
        .collect();
    FirstSale {
        conversion_id: e.conversion_id,
        occurred_at: e.occurred_at,
        model: d.model.clone(),
        shares,
        campaigns,
    }
}

/// The campaign of the partner's heaviest touch (the latest among equals).
pub(super) fn heaviest_campaign(memo: &Memo, partner: &str) -> String {
    memo.decision
        .attributions
        .iter()
        .zip(&memo.campaigns)
        .filter(|(a, _)| a.partner_id == partner)
        .max_by(|(a, _), (b, _)| a.weight.cmp(&b.weight).then(a.position.cmp(&b.position)))
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}
