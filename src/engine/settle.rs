//! The full decision for one conversion (SPEC §5.3–§5.5): attribution rows and ledger
//! rows from the credit the caller resolved (journey, referral, first sale, original
//! order), the program's rules and the registry's view of the partners.

use chrono::{DateTime, Datelike, Months, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::attribution::Touch;
use super::caps::{self, Period};
use super::commission::{self, Chosen, EarnedRow, Earning, LedgerRow, Share};
use super::conditions::Facts;
use super::rewards;
pub use super::rules::{is_active, Directory};
use super::rules::{PartnerRules, ProgramRules};
use super::tiers::{self, TierMove};
use super::{add, mul, Overflow};
use crate::events::{ConversionEvent, ConversionKind};
use crate::money;

/// What became of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversionStatus {
    Attributed,
    Unattributed,
    Duplicate,
}

impl ConversionStatus {
    /// The name stored in `conversions.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionStatus::Attributed => "attributed",
            ConversionStatus::Unattributed => "unattributed",
            ConversionStatus::Duplicate => "duplicate",
        }
    }
}

/// A customer's first attributed sale: who recurring payments credit, and with what
/// weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstSale {
    pub conversion_id: Uuid,
    #[serde(with = "crate::events::rfc3339_millis")]
    pub occurred_at: DateTime<Utc>,
    pub model: String,
    /// Partner shares, by partner id.
    pub shares: Vec<(String, Decimal)>,
    /// Each share's campaign (that of the partner's heaviest touch), for reporting.
    #[serde(default)]
    pub campaigns: Vec<String>,
}

/// What an order earned, for its refunds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub conversion_id: Uuid,
    /// Settlement amount (program currency, exact).
    pub settled_amount: Decimal,
    pub rows: Vec<EarnedRow>,
    /// Where its rows stand in their lifecycle (SPEC §5.7); orders recorded before the
    /// lifecycle existed read as approved.
    #[serde(default)]
    pub standing: super::lifecycle::Standing,
    /// Who it credited, with what weight (for the revenue its refunds take back from
    /// tier figures); empty for orders recorded before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<(String, Decimal)>,
}

impl OrderRecord {
    /// Books a refund's reversal rows on the rows they reverse.
    pub fn book(&mut self, refund: &Decision) -> Result<(), Overflow> {
        for (i, row) in refund.reverses.iter().zip(&refund.rows) {
            if let Some(earned) = self.rows.get_mut(*i) {
                earned.reversed = add(earned.reversed, row.amount)?;
            }
        }
        Ok(())
    }
}

/// Who a conversion credits, as resolved from state by the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Credit<'a> {
    /// Nothing to credit: unattributed.
    None,
    /// The journey's touchpoints, already selected ([`super::journey::select`]).
    Journey(Vec<Touch>),
    /// No touchpoint, but the referral code names a link of this partner.
    Referral(String),
    /// A promo code of this partner: one synthetic touch at `occurred_at` (SPEC §10.3).
    PromoCode(String),
    /// A recurring payment of a customer with this first sale.
    Recurring(&'a FirstSale),
    /// A refund of this order.
    Refund(&'a OrderRecord),
}

/// One row of `attributions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionLine {
    pub partner_id: String,
    /// The touch's click; `None` for a referral-code touch or an inherited share.
    pub click_id: Option<Uuid>,
    /// 1-based position in the journey.
    pub position: u16,
    pub weight: Decimal,
    /// Settlement amount × weight (program currency, exact).
    pub credited_amount: Decimal,
}

/// The outcome of settling one conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub status: ConversionStatus,
    /// amount × fx\[currency\], in the program currency (exact).
    pub settled_amount: Decimal,
    /// Settlement currency: the program's.
    pub currency: String,
    /// The attribution model that produced the weights; empty when none did.
    pub model: String,
    pub touches: u16,
    pub attributions: Vec<AttributionLine>,
    pub rows: Vec<LedgerRow>,
    /// For a refund: the index in the order's earned rows that each of `rows` reverses.
    pub reverses: Vec<usize>,
}

impl Decision {
    /// A decision that credits nobody.
    pub fn uncredited(status: ConversionStatus, settled_amount: Decimal, currency: &str) -> Self {
        Decision {
            status,
            settled_amount,
            currency: currency.to_string(),
            model: String::new(),
            touches: 0,
            attributions: Vec::new(),
            rows: Vec::new(),
            reverses: Vec::new(),
        }
    }

    /// Each credited partner's share (sum of its weights), by partner id.
    pub fn shares(&self) -> Vec<(String, Decimal)> {
        // Journeys are short: sorting a few references beats a map.
        let mut lines: Vec<(&str, Decimal)> = self
            .attributions
            .iter()
            .map(|a| (a.partner_id.as_str(), a.weight))
            .collect();
        lines.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(String, Decimal)> = Vec::with_capacity(lines.len());
        for (partner, weight) in lines {
            match out.last_mut() {
                Some((p, w)) if p == partner => *w += weight,
                _ => out.push((partner.to_string(), weight)),
            }
        }
        out.retain(|(_, w)| *w > Decimal::ZERO);
        out
    }

    /// The ledger rows as what the order earned, for later refunds.
    pub fn earned_rows(&self) -> Vec<EarnedRow> {
        self.rows
            .iter()
            .map(|r| EarnedRow {
                partner_id: r.partner_id.clone(),
                level: r.level,
                amount: r.amount,
                reversed: Decimal::ZERO,
            })
            .collect()
    }
}

/// `yyyymm` of the UTC calendar month before `t`'s.
pub fn previous_month(t: DateTime<Utc>) -> u32 {
    let (y, m) = (t.year(), t.month());
    let (y, m) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    (y as u32) * 100 + m
}

/// Whole calendar months from `from` to `to` as the calendar adds them (31 Dec plus two
/// months is 28 Feb); 0 when `to` is not after `from`. A rule's `months` holds while
/// this is below it, as a recurring term does.
pub fn whole_months(from: DateTime<Utc>, to: DateTime<Utc>) -> u32 {
    if to <= from {
        return 0;
    }
    let span = (to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32;
    let mut months = span.max(0) as u32;
    // The calendar count overshoots by one when `to`'s day-of-month comes before `from`'s.
    while months > 0
        && from
            .checked_add_months(Months::new(months))
            .is_none_or(|t| t > to)
    {
        months -= 1;
    }
    months
}

/// `yyyymm` of `t`'s UTC calendar month.
pub fn month_of(t: DateTime<Utc>) -> u32 {
    (t.year() as u32) * 100 + t.month()
}

/// What reward rules may read of the conversion's customer (SPEC §10.1), as the caller
/// resolved it from state in intake order; `None` without a customer id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Customer {
    /// 1 for the customer's first attributed sale.
    pub sale_number: Option<u64>,
    /// Whole months from the customer's first attributed sale to this conversion.
    pub months_since_first_sale: Option<u32>,
}

/// What settlement reads of the history before a conversion, in intake order.
pub trait History {
    /// How many conversions were attributed to the partner in month `yyyymm`.
    fn volume(&self, partner: &str, month: u32) -> u64;
    /// What reward rules read of the conversion's customer.
    fn customer(&self) -> Customer;
    /// The partner's running total of direct commissions in the cap `period` that the
    /// conversion falls in (0 before its first).
    fn cap_total(&self, partner: &str, period: Period) -> Decimal;
    /// The partner's latest automatic tier move at or before the conversion's
    /// [`tiers::tier_time`] (SPEC §10.2).
    fn tier_move(&self, _partner: &str) -> Option<&TierMove> {
        None
    }
}

/// A history of monthly volumes only (`volume(partner, yyyymm)`): no customer facts,
/// no cap totals (the engine's tests and benches).
impl<F: Fn(&str, u32) -> u64> History for F {
    fn volume(&self, partner: &str, month: u32) -> u64 {
        self(partner, month)
    }
    fn customer(&self) -> Customer {
        Customer::default()
    }
    fn cap_total(&self, _: &str, _: Period) -> Decimal {
        Decimal::ZERO
    }
}

/// A history of nothing: no volume, no customer, no totals.
impl History for () {
    fn volume(&self, _: &str, _: u32) -> u64 {
        0
    }
    fn customer(&self) -> Customer {
        Customer::default()
    }
    fn cap_total(&self, _: &str, _: Period) -> Decimal {
        Decimal::ZERO
    }
}

/// Settles `conv` under `program` with what `history` says came before it. Every
/// operation on money is checked: [`Overflow`] when the amounts leave `Decimal`'s range.
pub fn settle(
    program: &impl ProgramRules,
    conv: &ConversionEvent,
    credit: Credit<'_>,
    directory: &impl Directory,
    history: &impl History,
) -> Result<Decision, Overflow> {
    let minor = money::minor_units(program.currency());
    let unattributed =
        |settled| Decision::uncredited(ConversionStatus::Unattributed, settled, program.currency());
    let Some(rate) = program.fx_rate(&conv.currency) else {
        // The FX table lost the currency after intake: nothing can be settled.
        return Ok(unattributed(Decimal::ZERO));
    };
    let settled = mul(conv.amount, rate)?;
    let (model, lines) = match credit {
        Credit::Refund(order) => return refund(order, settled, program.currency(), minor),
        credit => match lines(program, conv, credit, settled)? {
            Some(credited) => credited,
            None => return Ok(unattributed(settled)),
        },
    };
    let plan = program.commission();
    let earning = match conv.kind {
        ConversionKind::Sale => Earning::Sale,
        ConversionKind::Lead => Earning::Bounty(plan.lead_bounty),
        ConversionKind::Signup => Earning::Bounty(plan.signup_bounty),
        ConversionKind::Recurring => Earning::Recurring,
        // Refunds were settled above.
        ConversionKind::Refund => Earning::Recurring,
    };
    let mut decision = Decision {
        status: ConversionStatus::Attributed,
        settled_amount: settled,
        currency: program.currency().to_string(),
        model,
        touches: lines.len() as u16,
        attributions: lines,
        rows: Vec::new(),
        reverses: Vec::new(),
    };
    let bonus_month = previous_month(conv.occurred_at);
    let tier_at = tiers::tier_time(conv.occurred_at, conv.received_at);
    let customer = history.customer();
    let on = Facts {
        country: conv.country.as_deref(),
        product_id: conv.product_id.as_deref(),
        amount: settled,
        currency: &conv.currency,
        metadata: Some(&conv.metadata),
        sale_number: customer.sale_number,
        months_since_first_sale: customer.months_since_first_sale,
        ..Facts::default()
    };
    let shares: Vec<Share> = decision
        .shares()
        .into_iter()
        .map(|(partner_id, weight)| {
            let volume =
                (earning == Earning::Sale).then(|| history.volume(&partner_id, bonus_month));
            let on = (conv.kind, &on);
            let moved = history.tier_move(&partner_id);
            let held = (tier_at, moved);
            let mut share = share(plan, directory, (partner_id, weight), volume, on, held);
            share.headroom = caps::headroom(&plan.caps, |period| {
                history.cap_total(&share.partner_id, period)
            });
            share
        })
        .collect();
    decision.rows = commission::earn(plan, earning, settled, &shares, minor)?;
    Ok(decision)
}

/// A refund of `order`: its rows reversed in proportion (an order that earned nothing
/// has nothing to reverse, and the refund credits nobody).
fn refund(
    order: &OrderRecord,
    settled: Decimal,
    currency: &str,
    minor: u32,
) -> Result<Decision, Overflow> {
    let status = if order.rows.is_empty() {
        ConversionStatus::Unattributed
    } else {
        ConversionStatus::Attributed
    };
    let mut d = Decision::uncredited(status, settled, currency);
    (d.reverses, d.rows) = commission::reverse(&order.rows, settled, order.settled_amount, minor)?
        .into_iter()
        .unzip();
    Ok(d)
}

/// The attribution lines a credit makes and the model that made them; `None` when it
/// credits nobody (no touch, or a recurring payment outside its term).
fn lines(
    program: &impl ProgramRules,
    conv: &ConversionEvent,
    credit: Credit<'_>,
    settled: Decimal,
) -> Result<Option<(String, Vec<AttributionLine>)>, Overflow> {
    let line = |i: usize, partner_id: String, click_id, weight: Decimal| {
        Ok(AttributionLine {
            partner_id,
            click_id,
            position: (i + 1) as u16,
            weight,
            credited_amount: mul(settled, weight)?,
        })
    };
    Ok(Some(match credit {
        Credit::None | Credit::Refund(_) => return Ok(None),
        Credit::Journey(touches) => {
            let weights = program.attribution().weights(&touches);
            let lines = touches
                .into_iter()
                .zip(weights)
                .enumerate()
                .map(|(i, (t, w))| line(i, t.partner_id, Some(t.click_id), w))
                .collect::<Result<_, Overflow>>()?;
            (program.attribution().name().to_string(), lines)
        }
        Credit::Referral(partner_id) => (
            super::attribution::REFERRAL_CODE.to_string(),
            vec![line(0, partner_id, None, Decimal::ONE)?],
        ),
        Credit::PromoCode(partner_id) => (
            super::attribution::PROMO_CODE.to_string(),
            vec![line(0, partner_id, None, Decimal::ONE)?],
        ),
        Credit::Recurring(first) => {
            if !in_term(program.commission().recurring.months, first, conv) {
                return Ok(None);
            }
            let lines = first
                .shares
                .iter()
                .enumerate()
                .map(|(i, (p, w))| line(i, p.clone(), None, *w))
                .collect::<Result<_, Overflow>>()?;
            (first.model.clone(), lines)
        }
    }))
}

/// Whether a recurring payment falls within `months` of the customer's first sale
/// (forever when unbounded), and not before it.
fn in_term(months: Option<u32>, first: &FirstSale, conv: &ConversionEvent) -> bool {
    let within = match months {
        None => true,
        Some(m) => first
            .occurred_at
            .checked_add_months(Months::new(m))
            .is_some_and(|end| conv.occurred_at < end),
    };
    within && conv.occurred_at >= first.occurred_at
}

/// A credited partner's share with what its rate depends on: its tier in force at `at`
/// (the registry's then, or the automatic move `moved` after it), the reward rule
/// that pays it most for a `kind` conversion `on` those facts, the volume bonus for
/// `volume` (sales only) and its ancestors for overrides.
fn share(
    plan: &super::commission::CommissionPlan,
    directory: &impl Directory,
    (partner_id, weight): (String, Decimal),
    volume: Option<u64>,
    (kind, on): (ConversionKind, &Facts<'_>),
    (at, moved): (DateTime<Utc>, Option<&TierMove>),
) -> Share {
    let partner = directory.partner(&partner_id);
    let tier = partner
        .as_ref()
        .and_then(|p| tiers::in_force(p.held_at(at), moved));
    let tier_rate = plan.tier_rate(tier);
    let rule = if plan.rules.is_empty() {
        None
    } else {
        // An unknown tier is paid as the default tier, and reads as it.
        let tier = tier.filter(|t| plan.tiers.contains_key(*t));
        let facts = Facts {
            partner_tier: Some(tier.unwrap_or(&plan.default_tier)),
            partner_id: &partner_id,
            ..*on
        };
        rewards::best(&plan.rules, kind, &facts).map(|(index, r)| Chosen {
            index,
            pays: r.pays,
        })
    };
    let volume_bonus = volume.map_or(Decimal::ZERO, |v| plan.volume_bonus(v));
    let ancestors = ancestors(directory, partner.as_ref(), plan.overrides.len());
    Share {
        partner_id,
        weight,
        tier_rate,
        volume_bonus,
        ancestors,
        rule,
        headroom: None,
    }
}

/// The partner's ancestors up to `levels`: `Some(id)` when active, `None` when not (it
/// earns nothing, but its own parent keeps its level). Stops at the top of the chain;
/// the registry refuses cycles, and `levels` bounds the walk regardless.
fn ancestors<D: Directory>(
    directory: &D,
    partner: Option<&D::Partner>,
    levels: usize,
) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(levels);
    let mut next = partner.and_then(|p| p.parent_id().map(str::to_string));
    while out.len() < levels {
        let Some(id) = next else { break };
        match directory.partner(&id) {
            Some(p) => {
                next = p.parent_id().map(str::to_string);
                out.push(p.is_active().then_some(id));
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AttributionModel;
    use chrono::{Duration, TimeZone};
    use std::collections::HashMap;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// A program's rules as plain values: the engine needs no registry.
    struct Rules {
        fx: HashMap<String, Decimal>,
        attribution: AttributionModel,
        commission: crate::engine::CommissionPlan,
    }

    impl ProgramRules for Rules {
        fn currency(&self) -> &str {
            "USD"
        }
        fn fx_rate(&self, currency: &str) -> Option<Decimal> {
            self.fx.get(currency).copied()
        }
        fn attribution(&self) -> &AttributionModel {
            &self.attribution
        }
        fn commission(&self) -> &crate::engine::CommissionPlan {
            &self.commission
        }
    }

    fn program(model: AttributionModel) -> Rules {
        let commission: crate::engine::CommissionPlan = serde_json::from_value(serde_json::json!({
            "tiers": {"bronze": "0.15", "silver": "0.20", "gold": "0.25"},
            "default_tier": "bronze", "lead_bounty": "5.00", "signup_bounty": "50.00",
            "recurring": {"rate": "0.10", "months": 12},
            "volume_bonuses": [{"min_conversions": 2, "bonus": "0.05"}],
            "overrides": ["0.10", "0.05", "0.02"]
        }))
        .unwrap();
        commission.validate().unwrap();
        Rules {
            fx: HashMap::from([
                ("USD".to_string(), d("1")),
                ("EUR".to_string(), d("1.0837")),
                ("JPY".to_string(), d("0.006571")),
            ]),
            attribution: model,
            commission,
        }
    }

    /// A history as plain values: last month's volumes, the customer, cap totals.
    struct Past<F> {
        volume: F,
        customer: Customer,
        totals: HashMap<(String, Period), Decimal>,
    }

    impl<F: Fn(&str, u32) -> u64> History for Past<F> {
        fn volume(&self, partner: &str, month: u32) -> u64 {
            (self.volume)(partner, month)
        }
        fn customer(&self) -> Customer {
            self.customer
        }
        fn cap_total(&self, partner: &str, period: Period) -> Decimal {
            let key = (partner.to_string(), period);
            self.totals.get(&key).copied().unwrap_or_default()
        }
    }

    fn past<F: Fn(&str, u32) -> u64>(volume: F, customer: Customer) -> Past<F> {
        Past {
            volume,
            customer,
            totals: HashMap::new(),
        }
    }

    #[derive(Clone)]
    struct Partner {
        tier: String,
        parent: Option<String>,
        active: bool,
    }

    impl PartnerRules for Partner {
        fn tier(&self) -> Option<&str> {
            Some(&self.tier)
        }
        fn parent_id(&self) -> Option<&str> {
            self.parent.as_deref()
        }
        fn is_active(&self) -> bool {
            self.active
        }
    }

    fn partner(id: &str, tier: &str, parent: Option<&str>, active: bool) -> (String, Partner) {
        (
            id.to_string(),
            Partner {
                tier: tier.into(),
                parent: parent.map(str::to_string),
                active,
            },
        )
    }

    fn directory() -> HashMap<String, Partner> {
        HashMap::from([
            partner("root", "gold", None, true),
            partner("mid", "silver", Some("root"), true),
            partner("leaf", "gold", Some("mid"), true),
            partner("solo", "bronze", None, true),
        ])
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 0).unwrap()
    }

    fn conv(kind: ConversionKind, amount: &str, currency: &str) -> ConversionEvent {
        ConversionEvent {
            order_id: "INV-1".into(),
            currency: currency.into(),
            customer_id: Some("c-1".into()),
            ..crate::testkit::fixtures::conversion(42, kind, amount, at())
        }
    }

    fn touch(id: u128, partner: &str, days_before: i64) -> Touch {
        Touch {
            click_id: Uuid::from_u128(id),
            partner_id: partner.into(),
            ts: at() - Duration::days(days_before),
        }
    }

    fn rows(dec: &Decision) -> Vec<(String, u8, &'static str, Decimal)> {
        dec.rows
            .iter()
            .map(|r| (r.partner_id.clone(), r.level, r.kind.as_str(), r.amount))
            .collect()
    }

    #[test]
    fn eur_sale_last_touch_with_volume_bonus_and_overrides() {
        // A = 129.99 EUR × 1.0837 = 140.870163 USD. Last touch: leaf (gold 0.25) with a
        // 5% bonus (3 conversions last month ≥ 2): direct = 140.870163 × 0.2625
        // = 36.9784177875; mid 10% = 3.69784177875; root 5% = 1.848920889375.
        // Exact sum 42.525180455625 → 42.53; truncated 36.97 + 3.69 + 1.84 = 42.50;
        // three cents to the remainders .0084177875 (0), .00784177875 (1), .008920889375 (2).
        let p = program(AttributionModel::LastTouch);
        let dec = settle(
            &p,
            &conv(ConversionKind::Sale, "129.99", "EUR"),
            Credit::Journey(vec![touch(1, "solo", 3), touch(2, "leaf", 1)]),
            &directory(),
            &past(
                |partner, month| {
                    if partner == "leaf" && month == 202610 {
                        3
                    } else {
                        0
                    }
                },
                Customer::default(),
            ),
        )
        .unwrap();
        assert_eq!(dec.status, ConversionStatus::Attributed);
        assert_eq!(dec.settled_amount, d("140.870163"));
        assert_eq!(dec.model, "last_touch");
        assert_eq!(dec.touches, 2);
        assert_eq!(dec.attributions[0].weight, d("0"));
        assert_eq!(dec.attributions[1].credited_amount, d("140.870163"));
        assert_eq!(
            rows(&dec),
            vec![
                ("leaf".into(), 0, "direct", d("36.98")),
                ("mid".into(), 1, "override", d("3.70")),
                ("root".into(), 2, "override", d("1.85")),
            ]
        );
        // solo has weight 0: no row.
        assert_eq!(dec.shares(), vec![("leaf".to_string(), d("1"))]);
    }

    #[test]
    fn jpy_sale_into_usd_program() {
        // ¥12,999 × 0.006571 = 85.416429 USD; bronze 15% = 12.81246435 → 12.81.
        let p = program(AttributionModel::LastTouch);
        let dec = settle(
            &p,
            &conv(ConversionKind::Sale, "12999", "JPY"),
            Credit::Journey(vec![touch(1, "solo", 1)]),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(rows(&dec), vec![("solo".into(), 0, "direct", d("12.81"))]);
    }

    #[test]
    fn lead_bounty_split_linear_between_partners() {
        // Linear over solo, leaf, solo: solo 2/3, leaf 1/3 of the 5.00 bounty.
        // solo 0.666666666667 × 5 = 3.333333333335, leaf 0.333333333333 × 5 = 1.666666666665
        // leaf's parents: mid 10% = 0.1666666666665, root 5% = 0.08333333333325
        // exact sum 5.24999999999975 → 5.25; truncated 3.33 + 1.66 + 0.16 + 0.08 = 5.23;
        // two cents to leaf (.006666) and mid (.006666...) - largest remainders.
        let p = program(AttributionModel::Linear);
        let dec = settle(
            &p,
            &conv(ConversionKind::Lead, "0", "USD"),
            Credit::Journey(vec![
                touch(1, "solo", 3),
                touch(2, "leaf", 2),
                touch(3, "solo", 1),
            ]),
            &directory(),
            &past(|_, _| 99, Customer::default()),
        )
        .unwrap();
        assert_eq!(
            rows(&dec),
            vec![
                ("leaf".into(), 0, "direct", d("1.67")),
                ("mid".into(), 1, "override", d("0.17")),
                ("root".into(), 2, "override", d("0.08")),
                ("solo".into(), 0, "direct", d("3.33")),
            ]
        );
        assert_eq!(
            dec.rows.iter().map(|r| r.amount).sum::<Decimal>(),
            d("5.25")
        );
    }

    #[test]
    fn referral_code_credit_is_one_synthetic_touch() {
        let p = program(AttributionModel::Linear);
        let dec = settle(
            &p,
            &conv(ConversionKind::Signup, "0", "USD"),
            Credit::Referral("solo".into()),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(dec.model, "referral_code");
        assert_eq!(dec.attributions.len(), 1);
        assert_eq!(dec.attributions[0].click_id, None);
        assert_eq!(rows(&dec), vec![("solo".into(), 0, "direct", d("50.00"))]);
    }

    #[test]
    fn recurring_within_and_past_the_month_limit() {
        let p = program(AttributionModel::LastTouch);
        let first = FirstSale {
            conversion_id: Uuid::from_u128(7),
            occurred_at: Utc.with_ymd_and_hms(2025, 11, 20, 10, 15, 1).unwrap(),
            model: "last_touch".into(),
            shares: vec![("leaf".into(), d("1"))],
            campaigns: vec![String::new()],
        };
        // 11 months 30 days later: still within 12 months. 49.99 × 0.10 = 4.999;
        // mid 0.4999, root 0.24995 → exact 5.74885 → 5.75; truncated 4.99 + 0.49 + 0.24.
        let dec = settle(
            &p,
            &conv(ConversionKind::Recurring, "49.99", "USD"),
            Credit::Recurring(&first),
            &directory(),
            &past(|_, _| 500, Customer::default()),
        )
        .unwrap();
        assert_eq!(
            rows(&dec),
            vec![
                ("leaf".into(), 0, "direct", d("5.00")),
                ("mid".into(), 1, "override", d("0.50")),
                ("root".into(), 2, "override", d("0.25")),
            ]
        );
        // Exactly 12 months after the first sale: past the limit.
        let mut late = first.clone();
        late.occurred_at = Utc.with_ymd_and_hms(2025, 11, 20, 10, 15, 0).unwrap();
        let dec = settle(
            &p,
            &conv(ConversionKind::Recurring, "49.99", "USD"),
            Credit::Recurring(&late),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(dec.status, ConversionStatus::Unattributed);
        assert!(dec.rows.is_empty());
    }

    #[test]
    fn paused_ancestor_earns_nothing_and_unknown_currency_settles_nothing() {
        let p = program(AttributionModel::LastTouch);
        let mut dir = directory();
        dir.insert(
            "mid".into(),
            partner("mid", "silver", Some("root"), false).1,
        );
        let dec = settle(
            &p,
            &conv(ConversionKind::Sale, "100", "USD"),
            Credit::Journey(vec![touch(1, "leaf", 1)]),
            &dir,
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(
            rows(&dec),
            vec![
                ("leaf".into(), 0, "direct", d("25.00")),
                ("root".into(), 2, "override", d("1.25"))
            ]
        );
        let dec = settle(
            &p,
            &conv(ConversionKind::Sale, "100", "GBP"),
            Credit::Journey(vec![touch(1, "leaf", 1)]),
            &dir,
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(dec.status, ConversionStatus::Unattributed);
    }

    #[test]
    fn refund_reverses_the_order_in_proportion() {
        let p = program(AttributionModel::LastTouch);
        let sale = settle(
            &p,
            &conv(ConversionKind::Sale, "200", "USD"),
            Credit::Journey(vec![touch(1, "leaf", 1)]),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        // 50.00 direct, 5.00 and 2.50 overrides.
        let order = OrderRecord {
            conversion_id: Uuid::from_u128(42),
            settled_amount: sale.settled_amount,
            rows: sale.earned_rows(),
            standing: Default::default(),
            shares: Vec::new(),
        };
        let mut refund = conv(ConversionKind::Refund, "50", "USD");
        refund.original_order_id = Some("INV-1".into());
        // 50 of 200 = 25% of each row: -12.5, -1.25, -0.625; exact sum -14.375 rounds
        // half-even to -14.38; truncated -14.37, so the cent goes to root's -0.625.
        let dec = settle(
            &p,
            &refund,
            Credit::Refund(&order),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(
            rows(&dec),
            vec![
                ("leaf".into(), 0, "reversal", d("-12.50")),
                ("mid".into(), 1, "reversal", d("-1.25")),
                ("root".into(), 2, "reversal", d("-0.63")),
            ]
        );
        assert_eq!(
            dec.rows.iter().map(|r| r.amount).sum::<Decimal>(),
            d("-14.38")
        );
        // Booked, a second refund of the rest takes exactly what is left.
        let mut order = order;
        order.book(&dec).unwrap();
        refund.amount = d("150");
        let rest = settle(
            &p,
            &refund,
            Credit::Refund(&order),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        order.book(&rest).unwrap();
        assert_eq!(
            rest.rows.iter().map(|r| r.amount).sum::<Decimal>(),
            d("-43.12")
        );
        assert!(order
            .rows
            .iter()
            .all(|r| r.amount + r.reversed == Decimal::ZERO));
    }

    #[test]
    fn refund_of_an_order_that_earned_nothing_credits_nobody() {
        let p = program(AttributionModel::LastTouch);
        let order = OrderRecord {
            conversion_id: Uuid::from_u128(1),
            settled_amount: d("100"),
            rows: vec![],
            standing: Default::default(),
            shares: Vec::new(),
        };
        let mut refund = conv(ConversionKind::Refund, "50", "USD");
        refund.original_order_id = Some("INV-1".into());
        let dec = settle(
            &p,
            &refund,
            Credit::Refund(&order),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(dec.status, ConversionStatus::Unattributed);
        assert!(dec.rows.is_empty());
    }

    /// The hostile programs: amounts past Decimal's range are an error, never a
    /// panic.
    #[test]
    fn arithmetic_beyond_decimal_is_an_error_not_a_panic() {
        let mut p = program(AttributionModel::LastTouch);
        p.fx.insert("EUR".into(), Decimal::MAX);
        let sale = conv(ConversionKind::Sale, "1000", "EUR");
        assert_eq!(
            settle(
                &p,
                &sale,
                Credit::Referral("leaf".into()),
                &directory(),
                &past(|_, _| 0, Customer::default())
            ),
            Err(Overflow)
        );
        let mut p = program(AttributionModel::LastTouch);
        p.commission.lead_bounty = Decimal::MAX;
        let lead = conv(ConversionKind::Lead, "0", "USD");
        assert_eq!(
            settle(
                &p,
                &lead,
                Credit::Referral("leaf".into()),
                &directory(),
                &past(|_, _| 0, Customer::default())
            ),
            Err(Overflow)
        );
    }

    #[test]
    fn months() {
        assert_eq!(previous_month(at()), 202610);
        assert_eq!(
            previous_month(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            202512
        );
        assert_eq!(month_of(at()), 202611);
    }

    fn with_rules(model: AttributionModel, rules: serde_json::Value) -> Rules {
        let mut p = program(model);
        p.commission.rules = serde_json::from_value(rules).unwrap();
        p.commission.validate().unwrap();
        p
    }

    fn geo_rules() -> serde_json::Value {
        serde_json::json!([
            {"name": "eu-enterprise", "when": {"all": [
                {"field": "country", "op": "in", "value": ["DE", "FR"]},
                {"field": "product_id", "op": "eq", "value": "enterprise"}]},
             "kinds": ["sale", "recurring"], "rate": "0.35"},
            {"name": "new-customers", "when": {"field": "customer.sale_number", "op": "eq", "value": 1},
             "kinds": ["sale"], "rate": "0.30", "months": 3},
            {"name": "low-margin", "when": {"field": "metadata.margin", "op": "eq", "value": "low"},
             "kinds": ["sale"], "rate": "0.05"},
            {"name": "gold-leads", "when": {"field": "partner.tier", "op": "eq", "value": "gold"},
             "kinds": ["lead"], "bounty": "8.00"}])
    }

    #[test]
    fn the_best_matching_rule_pays_in_place_of_the_tier_with_bonus_and_overrides_on_top() {
        // Linear over solo (bronze) and leaf (gold, parent mid, grandparent root): each
        // half of 200.00. eu-enterprise (0.35) and new-customers (0.30) both match: the
        // higher wins for both partners, whatever their tiers. leaf has last month's
        // bonus of 5 %: 100 × 0.35 × 1.05 = 36.75; overrides 3.675 and 1.8375 on top.
        // Exact sum 77.2625 → 77.26: truncated 77.25, the cent to root's larger remainder.
        let p = with_rules(AttributionModel::Linear, geo_rules());
        let mut c = conv(ConversionKind::Sale, "200.00", "USD");
        c.country = Some("DE".into());
        c.product_id = Some("enterprise".into());
        let journey = Credit::Journey(vec![touch(1, "solo", 3), touch(2, "leaf", 1)]);
        let first = Customer {
            sale_number: Some(1),
            months_since_first_sale: Some(0),
        };
        let volume = |p: &str, _| if p == "leaf" { 2 } else { 0 };
        let dec = settle(&p, &c, journey.clone(), &directory(), &past(volume, first)).unwrap();
        let rows: Vec<(&str, u8, String, String)> = dec
            .rows
            .iter()
            .map(|r| {
                (
                    r.partner_id.as_str(),
                    r.level,
                    r.amount.to_string(),
                    r.reason.clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("leaf", 0, "36.75".into(), "rule eu-enterprise".into()),
                ("mid", 1, "3.67".into(), String::new()),
                ("root", 2, "1.84".into(), String::new()),
                ("solo", 0, "35.00".into(), "rule eu-enterprise".into()),
            ]
        );
        // Outside the EU, the first sale pays new-customers; a later one the tier rate.
        c.country = Some("US".into());
        let dec = settle(
            &p,
            &c,
            journey.clone(),
            &directory(),
            &past(|_, _| 0, first),
        )
        .unwrap();
        assert_eq!(dec.rows[0].reason, "rule new-customers");
        assert_eq!(dec.rows[0].rate, d("0.30"));
        let second = Customer {
            sale_number: Some(2),
            ..first
        };
        let dec = settle(
            &p,
            &c,
            journey.clone(),
            &directory(),
            &past(|_, _| 0, second),
        )
        .unwrap();
        assert_eq!(
            (dec.rows[0].rate, dec.rows[0].reason.as_str()),
            (d("0.25"), "")
        );
        // A rule may pay less than the tier: it still takes the tier's place.
        c.metadata.insert("margin".into(), "low".into());
        let dec = settle(&p, &c, journey, &directory(), &past(|_, _| 0, second)).unwrap();
        assert_eq!(
            (dec.rows[0].rate, dec.rows[0].reason.as_str()),
            (d("0.05"), "rule low-margin")
        );
    }

    #[test]
    fn bounty_and_recurring_rules_follow_the_partner() {
        let p = with_rules(AttributionModel::Linear, geo_rules());
        let lead = conv(ConversionKind::Lead, "0", "USD");
        let journey = Credit::Journey(vec![touch(1, "solo", 3), touch(2, "leaf", 1)]);
        let dec = settle(
            &p,
            &lead,
            journey,
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        let direct: Vec<(&str, String, &str)> = dec
            .rows
            .iter()
            .filter(|r| r.level == 0)
            .map(|r| {
                (
                    r.partner_id.as_str(),
                    r.amount.to_string(),
                    r.reason.as_str(),
                )
            })
            .collect();
        // gold leaf: half of 8.00; bronze solo: half of the plan's 5.00.
        assert_eq!(
            direct,
            [
                ("leaf", "4.00".into(), "rule gold-leads"),
                ("solo", "2.50".into(), "")
            ]
        );
        let first = FirstSale {
            conversion_id: Uuid::from_u128(1),
            occurred_at: at() - Duration::days(40),
            model: "last_touch".into(),
            shares: vec![("solo".into(), Decimal::ONE)],
            campaigns: vec![String::new()],
        };
        let mut rec = conv(ConversionKind::Recurring, "50.00", "USD");
        rec.country = Some("fr".into());
        rec.product_id = Some("enterprise".into());
        let dec = settle(
            &p,
            &rec,
            Credit::Recurring(&first),
            &directory(),
            &past(|_, _| 0, Customer::default()),
        )
        .unwrap();
        assert_eq!(
            (dec.rows[0].amount, dec.rows[0].reason.as_str()),
            (d("17.50"), "rule eu-enterprise")
        );
    }

    #[test]
    fn whole_months_count_as_the_calendar_adds_them() {
        let t = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
        assert_eq!(whole_months(t(2026, 12, 31), t(2026, 12, 31)), 0);
        assert_eq!(whole_months(t(2026, 12, 31), t(2026, 12, 1)), 0);
        assert_eq!(whole_months(t(2026, 12, 31), t(2027, 1, 30)), 0);
        assert_eq!(whole_months(t(2026, 12, 31), t(2027, 1, 31)), 1);
        assert_eq!(whole_months(t(2026, 12, 31), t(2027, 2, 28)), 2);
        assert_eq!(whole_months(t(2026, 1, 15), t(2027, 1, 14)), 11);
        assert_eq!(whole_months(t(2026, 1, 15), t(2027, 1, 15)), 12);
    }

    fn with_caps(rules: serde_json::Value, caps: serde_json::Value) -> Rules {
        let mut p = with_rules(AttributionModel::LastTouch, rules);
        p.commission.caps = serde_json::from_value(caps).unwrap();
        caps::validate(&p.commission.caps, 2).unwrap();
        p
    }

    #[test]
    fn a_cap_clips_the_direct_row_and_overrides_follow_the_clipped_amount() {
        // leaf (gold 0.25, parent mid, grandparent root) on 100.00: 25.00 uncapped.
        let p = with_caps(
            serde_json::json!([]),
            serde_json::json!([{"period": "day", "max": "40.00"}, {"period": "month", "max": "100"}]),
        );
        let c = conv(ConversionKind::Sale, "100.00", "USD");
        let journey = Credit::Journey(vec![touch(1, "leaf", 1)]);
        let totals = |day: &str, month: &str| Past {
            totals: HashMap::from([
                (("leaf".to_string(), Period::Day), d(day)),
                (("leaf".to_string(), Period::Month), d(month)),
            ]),
            ..past(|_, _| 0, Customer::default())
        };
        let rows = |h: &Past<_>| -> Vec<(String, String)> {
            settle(&p, &c, journey.clone(), &directory(), h)
                .unwrap()
                .rows
                .iter()
                .map(|r| (r.amount.to_string(), r.reason.clone()))
                .collect()
        };
        let s = |a: &str, r: &str| (a.to_string(), r.to_string());
        // Room for it all: nothing clipped.
        assert_eq!(
            rows(&totals("0", "0")),
            [s("25.00", ""), s("2.50", ""), s("1.25", "")]
        );
        // 30 of the day's 40 earned: clipped to 10.00, overrides 1.00 and 0.50 of it.
        assert_eq!(
            rows(&totals("30.00", "30.00")),
            [s("10.00", "capped"), s("1.00", ""), s("0.50", "")]
        );
        // The month is the tighter: 3.33 left.
        assert_eq!(
            rows(&totals("0", "96.67")),
            [s("3.33", "capped"), s("0.33", ""), s("0.17", "")]
        );
        // Nothing left: the row stays, earning nothing, and says why.
        assert_eq!(
            rows(&totals("40.00", "40.00")),
            [s("0.00", "capped"), s("0.00", ""), s("0.00", "")]
        );
        // A rule's rate is clipped the same way, and both reasons show.
        let p = with_caps(
            geo_rules(),
            serde_json::json!([{"period": "lifetime", "max": "10"}]),
        );
        let mut de = conv(ConversionKind::Sale, "100.00", "USD");
        de.country = Some("DE".into());
        de.product_id = Some("enterprise".into());
        let dec = settle(&p, &de, journey, &directory(), &|_: &str, _: u32| 0).unwrap();
        assert_eq!(dec.rows[0].amount, d("10.00"));
        assert_eq!(dec.rows[0].reason, "rule eu-enterprise, capped");
    }

    mod cap_props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A run of sales by one partner under a day and a month cap, totals kept
            /// as the pipeline keeps them: no period total passes its cap, every
            /// conversion's rows add up to the half-even rounding of their exact sum,
            /// a clipped row leaves its tightest cap exactly full, and what a cap cut
            /// plus what was paid is what the row would have earned.
            #[test]
            fn caps_are_never_passed_and_no_cent_is_lost(
                sales in proptest::collection::vec((1i64..2_000_000, 0i64..3), 1..30),
                day_max in 0i64..50_000,
                month_max in 0i64..200_000,
            ) {
                let caps = serde_json::json!([
                    {"period": "day", "max": Decimal::new(day_max, 2).to_string()},
                    {"period": "month", "max": Decimal::new(month_max, 2).to_string()}]);
                let p = with_caps(serde_json::json!([]), caps);
                let (day_cap, month_cap) = (Decimal::new(day_max, 2), Decimal::new(month_max, 2));
                let mut day_totals: HashMap<u32, Decimal> = HashMap::new();
                let mut month_total = Decimal::ZERO;
                for (i, (cents, day)) in sales.iter().enumerate() {
                    let mut c = conv(ConversionKind::Sale, &Decimal::new(*cents, 2).to_string(), "EUR");
                    c.occurred_at = at() + Duration::days(*day);
                    let day = *day as u32;
                    let before_day = day_totals.get(&day).copied().unwrap_or_default();
                    let h = Past {
                        totals: HashMap::from([
                            (("leaf".to_string(), Period::Day), before_day),
                            (("leaf".to_string(), Period::Month), month_total),
                        ]),
                        ..past(|_, _| 0, Customer::default())
                    };
                    let journey = Credit::Journey(vec![touch(i as u128 + 1, "leaf", 0)]);
                    let dec = settle(&p, &c, journey, &directory(), &h).unwrap();
                    let direct = &dec.rows[0];
                    let exact_sum: Decimal = dec.rows.iter().map(|r| r.exact).sum();
                    let paid_sum: Decimal = dec.rows.iter().map(|r| r.amount).sum();
                    prop_assert_eq!(paid_sum, exact_sum.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven));
                    let uncapped = direct.base_amount * direct.rate;
                    let left = (day_cap - before_day).min(month_cap - month_total);
                    if direct.reason == "capped" {
                        prop_assert!(uncapped > left);
                        prop_assert_eq!(direct.exact, left);
                        prop_assert_eq!(direct.amount, left);
                        // Cut plus paid is the uncapped amount, exactly.
                        prop_assert_eq!((uncapped - direct.exact) + direct.amount, uncapped);
                    } else {
                        prop_assert_eq!(direct.exact, uncapped);
                    }
                    *day_totals.entry(day).or_default() += direct.amount;
                    month_total += direct.amount;
                    prop_assert!(day_totals[&day] <= day_cap);
                    prop_assert!(month_total <= month_cap);
                    if direct.reason == "capped" {
                        prop_assert!(day_totals[&day] == day_cap || month_total == month_cap);
                    }
                }
            }
        }
    }
}
