//! Step 5: decisions in mark order, each over the overlay of what the batch's earlier
//! conversions changed, and the decision of one conversion.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::caps;
use super::effects::direct_partners;
use super::overlay::Overlay;
use super::plan::{promo_partner, rate_reads, referral_partner, volume_read, Plan};
use super::tiers::TierBook;
use super::{Memo, Outcome};
use crate::engine::attribution::Touch;
use crate::engine::caps::Period;
use crate::engine::dedup;
use crate::engine::fraud::{Rule, Settled};
use crate::engine::lifecycle::{self, BookedRefund, Lifecycle, Standing};
use crate::engine::rewards;
use crate::engine::settle::{
    self, ConversionStatus, Credit, Customer, Decision, FirstSale, OrderRecord,
};
use crate::engine::tiers::{self, TierMove};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::{Answer, Mark, OrderSlot, Read, StateError, StateStore, StoredTouch};
use crate::registry::{Program, PromoCodePriority, Registry};

/// Decides the fresh conversions of `batch` in mark order. One that cannot be settled
/// gets its dead-letter outcome: nothing of it is stored or seen by later conversions.
pub(super) async fn in_order(
    registry: &Registry,
    tiers: &TierBook,
    state: &dyn StateStore,
    batch: &[(Mark, ConversionEvent)],
    plan: &Plan,
    outcomes: &mut [Option<Outcome>],
) -> Result<Vec<(usize, Memo)>, StateError> {
    let mut overlay = Overlay::new(batch, plan);
    let mut decided = Vec::with_capacity(plan.fresh.len());
    for (k, &i) in plan.fresh.iter().enumerate() {
        let (mark, e) = &batch[i];
        let memo = match plan.programs[k].as_deref() {
            None => Ok(Memo::uncredited(Decision::uncredited(
                ConversionStatus::Unattributed,
                Decimal::ZERO,
                "",
            ))),
            Some(program) => {
                let turn = Turn {
                    registry,
                    tiers,
                    plan,
                    k,
                    mark: *mark,
                    e,
                    program,
                };
                turn.decide(state, &mut overlay).await?
            }
        };
        match memo {
            Ok(memo) => decided.push((i, memo)),
            Err(reason) => outcomes[i] = Some(Outcome::DeadLetter(reason)),
        }
    }
    Ok(decided)
}

/// One conversion's turn in its batch: the `k`-th fresh one of the plan.
struct Turn<'a> {
    registry: &'a Registry,
    tiers: &'a TierBook,
    plan: &'a Plan,
    k: usize,
    mark: Mark,
    e: &'a ConversionEvent,
    program: &'a Program,
}

impl Turn<'_> {
    /// Its memo (or why it cannot be settled), added to the overlay.
    async fn decide(
        &self,
        state: &dyn StateStore,
        overlay: &mut Overlay,
    ) -> Result<Result<Memo, String>, StateError> {
        let e = self.e;
        let key = dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id);
        let holder = self.plan.holder(self.k).or_else(|| overlay.claim(&key));
        if holder.is_some_and(|h| h != e.conversion_id) {
            return Ok(self.duplicate());
        }
        let first_sale = self.first_sale(overlay);
        let stored = self.counts(state, first_sale.as_ref()).await?;
        let order_state = e
            .original_order_id
            .as_ref()
            .and_then(|o| overlay.orders.get(&(e.program_id.clone(), o.clone())));
        let order = order_state.and_then(|o| o.as_of(self.mark));
        let earlier = order_state.map_or_else(Vec::new, |o| o.before(self.mark));
        let count = |read: &Read| overlay.count(&stored, read);
        let customer = self.customer(overlay, first_sale.as_ref());
        let totals = self.cap_totals(state, overlay, first_sale.as_ref()).await?;
        let memo = decide(
            self.registry,
            self.program,
            e,
            &self.plan.selected[self.k],
            first_sale.as_ref(),
            order
                .as_ref()
                .zip(order_state)
                .map(|(o, state)| (o, earlier.as_slice(), state.slot)),
            &AsOf {
                e,
                mark: self.mark,
                count,
                customer,
                totals,
                tiers: self.tiers,
            },
        );
        if let Ok(memo) = &memo {
            overlay.add(key, self.program, (self.mark, e), memo);
        }
        Ok(memo)
    }

    /// A conversion whose key another conversion holds: it credits nobody.
    fn duplicate(&self) -> Result<Memo, String> {
        let (e, program) = (self.e, self.program);
        match program
            .fx
            .get(&e.currency)
            .map(|r| e.amount.checked_mul(*r))
        {
            Some(None) => Err(OUT_OF_RANGE.to_string()),
            settled => Ok(Memo::uncredited(Decision::uncredited(
                ConversionStatus::Duplicate,
                settled.flatten().unwrap_or_default(),
                &program.currency,
            ))),
        }
    }

    /// The customer's first sale (for a recurring payment, or a sale whose rules read
    /// the customer): the earlier of the stored one and the batch's.
    fn first_sale(&self, overlay: &Overlay) -> Option<FirstSale> {
        let e = self.e;
        let wanted = match e.kind {
            ConversionKind::Recurring => true,
            ConversionKind::Sale => rewards::read_customer(&self.program.commission.rules),
            _ => false,
        };
        let customer = e.customer_id.as_ref().filter(|_| wanted)?;
        let stored = self.plan.first_sale(self.k);
        let in_batch = overlay.first_sale(&e.program_id, customer, self.mark);
        match (stored, in_batch) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a.1 } else { b.1 }),
            (a, b) => a.or(b).map(|(_, f)| f),
        }
    }

    /// What reward rules read of the customer as of this conversion (SPEC §10.1): its
    /// sale number and the months since its first sale. A sale with no earlier one is
    /// the customer's first; nothing without a customer id, or when no rule reads it.
    fn customer(&self, overlay: &Overlay, first_sale: Option<&FirstSale>) -> Customer {
        let e = self.e;
        let Some(customer) = &e.customer_id else {
            return Customer::default();
        };
        if !rewards::read_customer(&self.program.commission.rules) {
            return Customer::default();
        }
        let earlier = self.plan.customer_sales(self.k)
            + overlay.customer_sales(&e.program_id, customer, self.mark);
        let months = first_sale.map(|f| settle::whole_months(f.occurred_at, e.occurred_at));
        match e.kind {
            ConversionKind::Sale => Customer {
                sale_number: Some(earlier + 1),
                months_since_first_sale: Some(months.unwrap_or(0)),
            },
            ConversionKind::Recurring => Customer {
                sale_number: Some(earlier),
                months_since_first_sale: months,
            },
            _ => Customer::default(),
        }
    }

    /// The cap totals of every partner the conversion may credit as of its mark: the
    /// later of what was read (in step 4, or here for the partners of a first sale of
    /// this batch) and what the batch settled before it.
    async fn cap_totals(
        &self,
        state: &dyn StateStore,
        overlay: &Overlay,
        first_sale: Option<&FirstSale>,
    ) -> Result<Vec<caps::Total>, StateError> {
        let (e, program) = (self.e, self.program);
        let mut stored = self.plan.cap_totals(self.k);
        if program.commission.caps.is_empty() || e.kind == ConversionKind::Refund {
            return Ok(Vec::new());
        }
        if let (Some(f), ConversionKind::Recurring) = (first_sale, e.kind) {
            let partners: Vec<String> = f.shares.iter().map(|(p, _)| p.clone()).collect();
            let missing: Vec<Read> = caps::reads(program, e, &partners, self.mark)
                .into_iter()
                .filter(|r| matches!(r, Read::CapTotal { key, .. } if !stored.contains_key(key)))
                .collect();
            if !missing.is_empty() {
                for (read, answer) in missing.iter().zip(state.read(&missing).await?) {
                    if let Read::CapTotal { key, .. } = read {
                        stored.insert(key.clone(), caps::answer(&answer));
                    }
                }
            }
        }
        let periods: Vec<(String, Period)> = program
            .commission
            .caps
            .iter()
            .map(|c| (c.period.key(e.occurred_at), c.period))
            .collect();
        Ok(stored
            .into_iter()
            .filter_map(|(key, read)| {
                let (_, period) = periods.iter().find(|(k, _)| *k == key.period)?;
                let total = caps::later(read, overlay.cap_total(&key, self.mark));
                Some((key, *period, total))
            })
            .collect())
    }

    /// The tallies read in step 4, and those of the partners of a first sale of this
    /// batch, read here: who they are is known only once that sale is decided, so this
    /// one read stays in the loop (only for recurring payments under `refund_rate`).
    async fn counts(
        &self,
        state: &dyn StateStore,
        first_sale: Option<&FirstSale>,
    ) -> Result<HashMap<Read, u64>, StateError> {
        let mut stored = self.plan.counts(self.k);
        let rate_partners: Vec<String> = match (first_sale, self.program.fraud.refund_rate) {
            (Some(f), Some(_)) if self.e.kind == ConversionKind::Recurring => {
                f.shares.iter().map(|(p, _)| p.clone()).collect()
            }
            _ => Vec::new(),
        };
        let missing: Vec<Read> = rate_partners
            .iter()
            .flat_map(|p| rate_reads(self.e, p, self.mark))
            .filter(|r| !stored.contains_key(r))
            .collect();
        if !missing.is_empty() {
            for (read, answer) in missing.iter().zip(state.read(&missing).await?) {
                if let Answer::Count(n) = answer {
                    stored.insert(read.clone(), n);
                }
            }
        }
        Ok(stored)
    }
}

pub(super) const OUT_OF_RANGE: &str = "amounts beyond the ledger's range";

/// The decision for an original (not duplicate) conversion; an error when its amounts
/// do not fit the ledger (the registry's bounds keep that from happening; this is the
/// net under them).
pub(super) fn decide(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    selected: &[StoredTouch],
    first_sale: Option<&FirstSale>,
    order: Option<(&OrderRecord, &[BookedRefund], OrderSlot)>,
    as_of: &AsOf<'_, impl Fn(&Read) -> u64>,
) -> Result<Memo, String> {
    let (credit, campaigns) = credit_of(registry, program, e, selected, first_sale, order);
    let last_touch_ms = match &credit {
        Credit::Journey(touches) => touches.iter().map(|t| t.ts.timestamp_millis()).max(),
        _ => None,
    };
    let decision = settle::settle(program, e, credit, registry, as_of)
        .map_err(|why| format!("{OUT_OF_RANGE}: {why}"))?;
    // Within Decimal's range is not yet within the ledger's columns.
    crate::sink::rows::fits(e, &decision).map_err(|why| format!("{OUT_OF_RANGE}: {why}"))?;
    let lifecycle = lifecycle_of(registry, program, e, &decision, order, last_touch_ms, as_of);
    let first_refund = e.kind == ConversionKind::Refund
        && !decision.rows.is_empty()
        && order.is_some_and(|(_, earlier, _)| earlier.is_empty());
    Ok(Memo {
        caps: caps::after(program, e, &decision, &as_of.totals),
        tiers: super::tiers::counted(program, e, &decision, order.map(|(o, _, _)| o)),
        decision,
        campaigns,
        lifecycle,
        first_refund,
        reversed: match (e.kind, order) {
            (ConversionKind::Refund, Some((_, _, slot))) => slot,
            _ => OrderSlot::Sale,
        },
    })
}

/// Whom a conversion credits, with the campaigns of what credits it.
fn credit_of<'a>(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    selected: &[StoredTouch],
    first_sale: Option<&'a FirstSale>,
    order: Option<(&'a OrderRecord, &[BookedRefund], OrderSlot)>,
) -> (Credit<'a>, Vec<String>) {
    let mut campaigns = Vec::new();
    let credit = match e.kind {
        ConversionKind::Sale | ConversionKind::Lead | ConversionKind::Signup => {
            let promo = promo_partner(registry, program, e);
            let over_clicks = program.promo_code_priority == PromoCodePriority::OverClicks;
            if let Some(partner) = promo.filter(|_| over_clicks || selected.is_empty()) {
                // A synthetic touch at occurred_at: the code's partner takes it all.
                campaigns = vec![String::new()];
                Credit::PromoCode(partner)
            } else if !selected.is_empty() {
                campaigns = selected.iter().map(|t| t.campaign.clone()).collect();
                Credit::Journey(
                    selected
                        .iter()
                        .map(|t| Touch {
                            click_id: t.click_id,
                            partner_id: t.partner_id.clone(),
                            ts: t.ts,
                        })
                        .collect(),
                )
            } else if let Some(partner) = referral_partner(registry, program, e) {
                campaigns = vec![e
                    .referral_code
                    .as_deref()
                    .and_then(|c| registry.link(c))
                    .and_then(|l| l.link.campaign.clone())
                    .unwrap_or_default()];
                Credit::Referral(partner)
            } else {
                Credit::None
            }
        }
        ConversionKind::Recurring => match first_sale {
            Some(f) => {
                campaigns = f.campaigns.clone();
                Credit::Recurring(f)
            }
            None => Credit::None,
        },
        ConversionKind::Refund => order
            .map(|(o, _, _)| Credit::Refund(o))
            .unwrap_or(Credit::None),
    };
    (credit, campaigns)
}

/// The lifecycle of a decision's rows (SPEC §5.7): a refund's steps on its order's rows,
/// or each new row's status from the fraud rules and the hold.
fn lifecycle_of(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    decision: &Decision,
    order: Option<(&OrderRecord, &[BookedRefund], OrderSlot)>,
    last_touch_ms: Option<i64>,
    as_of: &AsOf<'_, impl Fn(&Read) -> u64>,
) -> Lifecycle {
    match (e.kind, order) {
        (ConversionKind::Refund, Some((order, earlier, _))) => {
            let reverses: Vec<(usize, Decimal)> = decision
                .reverses
                .iter()
                .zip(&decision.rows)
                .map(|(i, r)| (*i, r.amount))
                .collect();
            let steps = lifecycle::refund_steps(
                order.conversion_id,
                &order.rows,
                &order.standing,
                earlier,
                e.received_at.timestamp_millis(),
                &reverses,
            );
            Lifecycle {
                standing: Standing::default(),
                created: steps.created,
                cancels: steps.cancels,
            }
        }
        _ if decision.rows.is_empty() => Lifecycle::default(),
        _ => {
            let flags = flags(registry, program, e, decision, last_touch_ms, |p| {
                as_of.refund_rate(program, e, p)
            });
            let standing = Standing::new(
                flags,
                program.hold_days,
                e.occurred_at.timestamp_millis(),
                e.received_at.timestamp_millis(),
            );
            let at = e.received_at.timestamp_millis();
            let created =
                vec![(standing.status_at(at), standing.reason_at(at)); decision.rows.len()];
            Lifecycle {
                standing,
                created,
                cancels: Vec::new(),
            }
        }
    }
}

/// The history as the conversion `e` at `mark` sees it: tallies (`count` answers
/// [`Read::Count`]s), what rules read of its customer, and its partners' cap totals.
pub(super) struct AsOf<'a, F> {
    e: &'a ConversionEvent,
    mark: Mark,
    count: F,
    customer: Customer,
    totals: Vec<caps::Total>,
    tiers: &'a TierBook,
}

impl<F: Fn(&Read) -> u64> settle::History for AsOf<'_, F> {
    fn volume(&self, partner: &str, _month: u32) -> u64 {
        // The month is the conversion's previous one, which the read names itself.
        AsOf::volume(self, self.e, partner)
    }

    fn customer(&self) -> Customer {
        self.customer
    }

    fn cap_total(&self, partner: &str, period: Period) -> Decimal {
        caps::total_of(&self.totals, partner, period)
    }

    fn tier_move(&self, partner: &str) -> Option<&TierMove> {
        let at = tiers::tier_time(self.e.occurred_at, self.e.received_at);
        self.tiers.latest(&self.e.program_id, partner, at)
    }
}

impl<F: Fn(&Read) -> u64> AsOf<'_, F> {
    /// The partner's conversions in the month before the conversion's (volume tiers).
    pub(super) fn volume(&self, e: &ConversionEvent, partner: &str) -> u64 {
        (self.count)(&volume_read(e, partner, self.mark))
    }

    /// Whether the partner's refunded share of recent sales is above the program's rate.
    pub(super) fn refund_rate(
        &self,
        program: &Program,
        e: &ConversionEvent,
        partner: &str,
    ) -> bool {
        let [sales, refunds] = rate_reads(e, partner, self.mark);
        program
            .fraud
            .refund_rate((self.count)(&sales), (self.count)(&refunds))
    }
}

/// The fraud rules (SPEC §5.8) a conversion that earns commissions trips, with the
/// credited partners' e-mail hashes from the registry.
pub(super) fn flags(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    d: &Decision,
    last_touch_ms: Option<i64>,
    refund_rate: impl Fn(&str) -> bool,
) -> Vec<Rule> {
    let direct = direct_partners(d);
    let emails: Vec<Option<String>> = direct
        .iter()
        .map(|p| registry.partner(p).and_then(|p| p.email_sha256.clone()))
        .collect();
    let settled = Settled {
        kind: e.kind,
        occurred_ms: e.occurred_at.timestamp_millis(),
        last_touch_ms,
        settled_amount: d.settled_amount,
        customer_email_sha256: e.customer_email_sha256.as_deref(),
        partners: direct
            .iter()
            .zip(&emails)
            .map(|(p, m)| (p.as_str(), m.as_deref()))
            .collect(),
    };
    program.fraud.flags(&settled, refund_rate)
}
