//! The batch overlay: what earlier conversions of a batch decided, seen by the later
//! ones on top of what was read as of each mark.

use std::collections::HashMap;

use rust_decimal::Decimal;
use uuid::Uuid;

use super::effects::{booked, first_sale, order_record, order_slot, tallies, Booked};
use super::plan::Plan;
use super::Memo;
use crate::engine::lifecycle::BookedRefund;
use crate::engine::settle::{ConversionStatus, FirstSale, OrderRecord};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::{Answer, CapKey, Mark, OrderSlot, Read, Tally};
use crate::registry::Program;

/// State of one order while a batch is resolved.
#[derive(Clone, Default)]
pub(super) struct OrderState {
    /// The record a refund reverses; its reversals are in `refunds`.
    pub(super) slot: OrderSlot,
    record: Option<OrderRecord>,
    /// Refunds booked, with their marks.
    refunds: Vec<(Mark, Booked)>,
}

impl OrderState {
    /// The refunds booked before `mark`.
    pub(super) fn before(&self, mark: Mark) -> Vec<BookedRefund> {
        self.refunds
            .iter()
            .filter(|(m, _)| *m < mark)
            .map(|(m, booked)| BookedRefund {
                received_ms: m.ms,
                conversion_id: Uuid::from_u128(m.id),
                rows: booked.clone(),
            })
            .collect()
    }

    /// The order as a refund at `mark` sees it: what refunds before it took back.
    pub(super) fn as_of(&self, mark: Mark) -> Option<OrderRecord> {
        let mut record = self.record.clone()?;
        for (m, booked) in &self.refunds {
            if *m < mark {
                for (i, amount) in booked {
                    if let Some(row) = record.rows.get_mut(*i) {
                        row.reversed += *amount;
                    }
                }
            }
        }
        Some(record)
    }
}

/// What the batch's conversions decided so far changed, for the later ones to see:
/// claims, tallies, first sales and orders, over what was read as of each mark.
#[derive(Default)]
pub(super) struct Overlay {
    claims: HashMap<String, Uuid>,
    tallied: HashMap<Tally, Vec<Mark>>,
    first_sales: HashMap<(String, String), (Mark, FirstSale)>,
    /// Cap totals the batch's conversions left, with their marks.
    cap_totals: HashMap<CapKey, Vec<(Mark, Decimal)>>,
    /// The marks of each customer's attributed sales in this batch.
    customer_sales: HashMap<(String, String), Vec<Mark>>,
    /// The stored orders refunds reverse, before this batch's conversions add theirs
    /// (the overlay keeps to the order of slots: a sale's record comes before a lead's).
    pub(super) orders: HashMap<(String, String), OrderState>,
}

impl Overlay {
    /// The overlay before any decision: the orders the plan read.
    pub(super) fn new(batch: &[(Mark, ConversionEvent)], plan: &Plan) -> Overlay {
        let mut overlay = Overlay::default();
        for (k, &i) in plan.fresh.iter().enumerate() {
            let e = &batch[i].1;
            let (Some(original), Some(answer)) = (&e.original_order_id, plan.order(k)) else {
                continue;
            };
            if let Answer::Order {
                slot,
                record,
                refunds,
            } = answer
            {
                overlay
                    .orders
                    .entry((e.program_id.clone(), original.clone()))
                    .or_insert_with(|| OrderState {
                        slot: *slot,
                        record: record.as_deref().and_then(|j| serde_json::from_str(j).ok()),
                        refunds: refunds
                            .iter()
                            .filter_map(|(m, j)| Some((*m, serde_json::from_str(j).ok()?)))
                            .collect(),
                    });
            }
        }
        overlay
    }

    /// The holder of a conversion key claimed by an earlier conversion of the batch.
    pub(super) fn claim(&self, key: &str) -> Option<Uuid> {
        self.claims.get(key).copied()
    }

    /// A first sale of the batch before `mark` of the customer.
    pub(super) fn first_sale(
        &self,
        program: &str,
        customer: &str,
        mark: Mark,
    ) -> Option<(Mark, FirstSale)> {
        self.first_sales
            .get(&(program.to_string(), customer.to_string()))
            .filter(|(m, _)| *m < mark)
            .cloned()
    }

    /// The latest cap total the batch left before `mark`.
    pub(super) fn cap_total(&self, key: &CapKey, mark: Mark) -> Option<(Mark, Decimal)> {
        self.cap_totals
            .get(key)?
            .iter()
            .filter(|(m, _)| *m < mark)
            .max_by_key(|(m, _)| *m)
            .copied()
    }

    /// How many attributed sales of the customer this batch settled before `mark`.
    pub(super) fn customer_sales(&self, program: &str, customer: &str, mark: Mark) -> u64 {
        self.customer_sales
            .get(&(program.to_string(), customer.to_string()))
            .map_or(0, |marks| {
                marks.iter().filter(|m| **m < mark).count() as u64
            })
    }

    /// A [`Read::Count`] as of its mark: `stored` (read as of the mark) plus what this
    /// batch added before it.
    pub(super) fn count(&self, stored: &HashMap<Read, u64>, read: &Read) -> u64 {
        let Read::Count {
            tally,
            from_ms,
            before,
        } = read
        else {
            return 0;
        };
        let batch = self.tallied.get(tally).map_or(0, |marks| {
            marks
                .iter()
                .filter(|m| m.ms >= *from_ms && *m < before)
                .count() as u64
        });
        stored.get(read).copied().unwrap_or(0) + batch
    }

    /// Records what `memo`, decided for `e` (conversion key `key`) at `mark`, changes
    /// for later conversions.
    pub(super) fn add(
        &mut self,
        key: String,
        program: &Program,
        (mark, e): (Mark, &ConversionEvent),
        memo: &Memo,
    ) {
        self.claims.insert(key, e.conversion_id);
        self.record(program, e, mark, memo);
    }

    /// Orders, tallies and first sales as `memo` changes them.
    fn record(&mut self, program: &Program, e: &ConversionEvent, mark: Mark, memo: &Memo) {
        let (tallied, first_sales, orders) =
            (&mut self.tallied, &mut self.first_sales, &mut self.orders);
        let customer_sales = &mut self.customer_sales;
        for c in &memo.caps {
            let totals = self.cap_totals.entry(c.key.clone()).or_default();
            totals.push((mark, c.total));
        }
        let d = &memo.decision;
        if d.status == ConversionStatus::Duplicate {
            return;
        }
        if let Some(slot) = order_slot(e.kind) {
            let state = orders
                .entry((e.program_id.clone(), e.order_id.clone()))
                .or_insert_with(|| OrderState {
                    slot,
                    ..OrderState::default()
                });
            // Each slot keeps its first record; refunds reverse the first slot recorded.
            if state.record.is_none() || slot.rank() < state.slot.rank() {
                if state.slot != slot {
                    // Reversals booked on another slot's record are not this one's.
                    state.refunds.clear();
                }
                state.slot = slot;
                state.record = Some(order_record(e, memo));
            }
        }
        for tally in tallies(Some(program), e, memo) {
            tallied.entry(tally).or_default().push(mark);
        }
        if d.status != ConversionStatus::Attributed {
            return;
        }
        if let (ConversionKind::Sale, Some(customer)) = (e.kind, &e.customer_id) {
            customer_sales
                .entry((e.program_id.clone(), customer.clone()))
                .or_default()
                .push(mark);
            let slot = first_sales.entry((e.program_id.clone(), customer.clone()));
            let first = first_sale(e, memo);
            slot.and_modify(|(m, f)| {
                if mark < *m {
                    (*m, *f) = (mark, first.clone());
                }
            })
            .or_insert((mark, first));
        }
        if let (ConversionKind::Refund, Some(original)) = (e.kind, &e.original_order_id) {
            if !d.rows.is_empty() {
                orders
                    .entry((e.program_id.clone(), original.clone()))
                    .or_default()
                    .refunds
                    .push((mark, booked(d)));
            }
        }
    }
}
