//! The commission plan (SPEC §5.5): what a partner earns for a conversion, what its
//! parents earn on top, and what a refund takes back.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use num_rational::BigRational;
use num_traits::One;

use super::caps::Cap;
use super::rewards::{Pays, RewardRule};
use super::rounding::{mul_is_exact, ratio, round_exactly, round_jointly, Roundable};
use super::{add, mul, Overflow};

/// The commission plan of SPEC §5.5 as JSON, the plan the demo, the synthetic stream,
/// the tests and the benches use.
pub const EXAMPLE_PLAN_JSON: &str = r#"{
  "tiers": {"bronze": "0.15", "silver": "0.20", "gold": "0.25", "platinum": "0.30"},
  "default_tier": "bronze",
  "lead_bounty": "5.00", "signup_bounty": "50.00",
  "recurring": {"rate": "0.10", "months": 12},
  "volume_bonuses": [{"min_conversions": 50, "bonus": "0.05"}, {"min_conversions": 100, "bonus": "0.10"}],
  "overrides": ["0.10", "0.05", "0.02"]
}"#;

/// [`EXAMPLE_PLAN_JSON`] as a JSON value, to embed in a program.
pub fn example_plan() -> serde_json::Value {
    serde_json::from_str(EXAMPLE_PLAN_JSON).expect("the example plan is valid JSON")
}

/// Most override levels a plan may have.
pub const MAX_OVERRIDE_LEVELS: usize = 5;

/// A program's commission plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommissionPlan {
    /// Rate of a sale's settlement amount, by partner tier.
    pub tiers: BTreeMap<String, Decimal>,
    /// Tier of partners without one.
    pub default_tier: String,
    /// Paid per attributed lead, split by weight.
    #[serde(default)]
    pub lead_bounty: Decimal,
    /// Paid per attributed signup, split by weight.
    #[serde(default)]
    pub signup_bounty: Decimal,
    #[serde(default)]
    pub recurring: RecurringPlan,
    /// Bonus on the tier rate by the previous calendar month's attributed conversions.
    #[serde(default)]
    pub volume_bonuses: Vec<VolumeBonus>,
    /// Override rates paid to the parent, grandparent, … of a partner on its direct rows.
    #[serde(default)]
    pub overrides: Vec<Decimal>,
    /// Conditional rewards in place of the tier rate or bounty (SPEC §10.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RewardRule>,
    /// The most a partner's direct rows may earn per period (SPEC §10.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<Cap>,
}

/// Commission on recurring payments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurringPlan {
    #[serde(default)]
    pub rate: Decimal,
    /// Months after the first sale during which recurring payments earn; `None`: lifetime.
    #[serde(default)]
    pub months: Option<u32>,
}

/// One step of the volume bonus ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeBonus {
    pub min_conversions: u64,
    pub bonus: Decimal,
}

impl Default for CommissionPlan {
    /// A plan that tracks but pays nothing.
    fn default() -> Self {
        CommissionPlan {
            tiers: BTreeMap::from([("standard".to_string(), Decimal::ZERO)]),
            default_tier: "standard".into(),
            lead_bounty: Decimal::ZERO,
            signup_bounty: Decimal::ZERO,
            recurring: RecurringPlan::default(),
            volume_bonuses: Vec::new(),
            overrides: Vec::new(),
            rules: Vec::new(),
            caps: Vec::new(),
        }
    }
}

impl CommissionPlan {
    /// Checks the plan; the error names the offending field (under `commission.`).
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        let rate_ok = |r: &Decimal| !r.is_sign_negative() && *r <= Decimal::ONE;
        if self.tiers.is_empty() {
            return Err(("tiers".into(), "must name at least one tier"));
        }
        for (name, rate) in &self.tiers {
            if name.is_empty() || name.len() > 64 {
                return Err(("tiers".into(), "tier names must be 1 to 64 characters"));
            }
            if !rate_ok(rate) {
                return Err((format!("tiers.{name}"), "must be a rate from 0 to 1"));
            }
        }
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(("default_tier".into(), "must be one of the tiers"));
        }
        for (field, v) in [
            ("lead_bounty", self.lead_bounty),
            ("signup_bounty", self.signup_bounty),
        ] {
            if v.is_sign_negative() || v.scale() > crate::money::AMOUNT_SCALE {
                return Err((
                    field.into(),
                    "must be a non-negative amount with at most 4 decimals",
                ));
            }
            if v > crate::money::max_bounty() {
                return Err((field.into(), "must be at most 1000000000"));
            }
        }
        if !rate_ok(&self.recurring.rate) {
            return Err(("recurring.rate".into(), "must be a rate from 0 to 1"));
        }
        if self.recurring.months == Some(0) || self.recurring.months > Some(120) {
            return Err((
                "recurring.months".into(),
                "must be 1 to 120, or null for lifetime",
            ));
        }
        let mut last_min = None;
        for (i, b) in self.volume_bonuses.iter().enumerate() {
            if b.bonus.is_sign_negative() || b.bonus > Decimal::ONE {
                return Err((format!("volume_bonuses[{i}].bonus"), "must be from 0 to 1"));
            }
            if last_min.is_some_and(|m| b.min_conversions <= m) {
                return Err((
                    format!("volume_bonuses[{i}].min_conversions"),
                    "must increase from one step to the next",
                ));
            }
            last_min = Some(b.min_conversions);
        }
        if self.overrides.len() > MAX_OVERRIDE_LEVELS {
            return Err(("overrides".into(), "at most 5 levels"));
        }
        for (i, r) in self.overrides.iter().enumerate() {
            if !rate_ok(r) {
                return Err((format!("overrides[{i}]"), "must be a rate from 0 to 1"));
            }
        }
        super::rewards::validate(&self.rules)
    }

    /// The tier rate of a partner's tier (the default tier's when it has none or an
    /// unknown one).
    pub fn tier_rate(&self, tier: Option<&str>) -> Decimal {
        tier.and_then(|t| self.tiers.get(t))
            .or_else(|| self.tiers.get(&self.default_tier))
            .copied()
            .unwrap_or(Decimal::ZERO)
    }

    /// The highest bonus whose threshold the previous month's count reaches.
    pub fn volume_bonus(&self, previous_month_conversions: u64) -> Decimal {
        self.volume_bonuses
            .iter()
            .filter(|b| b.min_conversions <= previous_month_conversions)
            .map(|b| b.bonus)
            .max()
            .unwrap_or(Decimal::ZERO)
    }
}

/// The kind of a ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    Direct,
    Override,
    Reversal,
    /// Booked by accepting a partner's dispute (SPEC §9.1), positive or negative.
    Adjustment,
}

impl LedgerKind {
    /// The name stored in `commissions.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Direct => "direct",
            LedgerKind::Override => "override",
            LedgerKind::Reversal => "reversal",
            LedgerKind::Adjustment => "adjustment",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(name: &str) -> Option<LedgerKind> {
        [
            LedgerKind::Direct,
            LedgerKind::Override,
            LedgerKind::Reversal,
            LedgerKind::Adjustment,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// One commission row of a conversion, before and after rounding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub partner_id: String,
    /// 0 for direct rows, 1.. for overrides (parent, grandparent, …); a reversal keeps
    /// the level of the row it reverses.
    pub level: u8,
    pub kind: LedgerKind,
    pub base_amount: Decimal,
    pub rate: Decimal,
    /// Exact amount before rounding (`base_amount × rate`, capped for reversals).
    pub exact: Decimal,
    /// Amount rounded to the currency's minor unit, jointly with the conversion's rows.
    pub amount: Decimal,
    /// Why a direct row earned what it did when not by the plan alone: `rule {name}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Roundable for LedgerRow {
    fn exact(&self) -> Decimal {
        self.exact
    }
    fn level(&self) -> u8 {
        self.level
    }
    fn partner(&self) -> &str {
        &self.partner_id
    }
    fn set_rounded(&mut self, amount: Decimal) {
        self.amount = amount;
    }
}

/// A partner's share of a conversion with what the plan needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub partner_id: String,
    /// Sum of the weights of the partner's touches.
    pub weight: Decimal,
    /// The partner's tier rate.
    pub tier_rate: Decimal,
    /// The partner's volume bonus (sales only).
    pub volume_bonus: Decimal,
    /// Active ancestors by level: `ancestors[0]` is the parent. `None` where the
    /// ancestor at that level is not active (it earns nothing, deeper levels still do).
    pub ancestors: Vec<Option<String>>,
    /// The reward rule chosen for the partner, paying in place of the tier rate, the
    /// recurring rate or the bounty.
    pub rule: Option<Chosen>,
    /// What the partner's caps leave it in this conversion's periods; `None`: no cap.
    pub headroom: Option<Decimal>,
}

/// A reward rule chosen for one partner: its place in the plan's rules and what it
/// pays (an index, so that choosing allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    pub index: usize,
    pub pays: Pays,
}

impl Share {
    /// The rate paid on a sale (before the volume bonus) or a recurring payment
    /// (`plan_rate`), and the bounty of a lead or signup (`plan_bounty`): the chosen
    /// rule's when there is one.
    fn rate_or(&self, plan_rate: Decimal) -> Decimal {
        match self.rule {
            Some(Chosen {
                pays: Pays::Rate(r),
                ..
            }) => r,
            _ => plan_rate,
        }
    }

    fn bounty_or(&self, plan_bounty: Decimal) -> Decimal {
        match self.rule {
            Some(Chosen {
                pays: Pays::Bounty(b),
                ..
            }) => b,
            _ => plan_bounty,
        }
    }

    /// The direct row's reason: the rule's (`rule {name}`), and whether it was capped.
    fn reason(&self, plan: &CommissionPlan, capped: bool) -> String {
        let rule = self.rule.and_then(|c| plan.rules.get(c.index));
        match (rule, capped) {
            (Some(r), false) => r.reason.clone(),
            (Some(r), true) => format!("{}, capped", r.reason),
            (None, true) => "capped".into(),
            (None, false) => String::new(),
        }
    }

    /// Whether `direct` passes the headroom, and so is clipped to it.
    fn clips(&self, direct: Decimal) -> bool {
        self.headroom.is_some_and(|left| direct > left)
    }
}

/// What a conversion earns, for the kinds that earn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earning {
    /// `A · w · tier_rate · (1 + bonus)`.
    Sale,
    /// `bounty · w`.
    Bounty(Decimal),
    /// `A · w · recurring.rate`.
    Recurring,
}

/// Direct and override rows of an earning conversion with settlement amount `amount`,
/// rounded jointly to `minor_units`. Rows are ordered direct rows by partner, each
/// followed by its overrides by level.
pub fn earn(
    plan: &CommissionPlan,
    earning: Earning,
    amount: Decimal,
    shares: &[Share],
    minor_units: u32,
) -> Result<Vec<LedgerRow>, Overflow> {
    let mut rows = Vec::with_capacity(shares.len() * (1 + plan.overrides.len()));
    // Per direct row, the amount a cap clipped it to (for the exact path).
    let mut clipped: Vec<Option<Decimal>> = Vec::with_capacity(shares.len());
    // Whether every product below is exact in `Decimal`; if not, rounding decides on
    // the exact rationals (SPEC §5.5: ties by the rule, not by the 28th digit).
    let mut exact = true;
    let mut mul = |a: Decimal, b: Decimal| {
        let product = super::mul(a, b)?;
        exact &= mul_is_exact(a, b, product);
        Ok::<_, Overflow>(product)
    };
    for share in shares.iter().filter(|s| s.weight > Decimal::ZERO) {
        let (base, rate) = match earning {
            Earning::Sale => (
                mul(amount, share.weight)?,
                mul(
                    share.rate_or(share.tier_rate),
                    add(Decimal::ONE, share.volume_bonus)?,
                )?,
            ),
            Earning::Bounty(bounty) => (share.bounty_or(bounty), share.weight),
            Earning::Recurring => (
                mul(amount, share.weight)?,
                share.rate_or(plan.recurring.rate),
            ),
        };
        let uncapped = mul(base, rate)?;
        let capped = share.clips(uncapped);
        // Clipped to what is left: a whole number of minor units, exact.
        let direct = match share.headroom {
            Some(left) if capped => left,
            _ => uncapped,
        };
        clipped.push(capped.then_some(direct));
        rows.push(LedgerRow {
            partner_id: share.partner_id.clone(),
            level: 0,
            kind: LedgerKind::Direct,
            base_amount: base,
            rate,
            exact: direct,
            amount: Decimal::ZERO,
            reason: share.reason(plan, capped),
        });
        for (i, (ancestor, rate)) in share.ancestors.iter().zip(&plan.overrides).enumerate() {
            let Some(ancestor) = ancestor else { continue };
            rows.push(LedgerRow {
                partner_id: ancestor.clone(),
                level: (i + 1) as u8,
                kind: LedgerKind::Override,
                base_amount: direct,
                rate: *rate,
                exact: mul(direct, *rate)?,
                amount: Decimal::ZERO,
                reason: String::new(),
            });
        }
    }
    if exact {
        round_jointly(&mut rows, minor_units)?;
    } else {
        let exact = exact_earnings(plan, earning, amount, shares, &clipped);
        round_exactly(&mut rows, &exact, minor_units)?;
    }
    Ok(rows)
}

/// The exact amounts of [`earn`]'s rows, in the same order, as rationals; `clipped`
/// holds, per direct row, the amount a cap clipped it to.
fn exact_earnings(
    plan: &CommissionPlan,
    earning: Earning,
    amount: Decimal,
    shares: &[Share],
    clipped: &[Option<Decimal>],
) -> Vec<BigRational> {
    let mut out = Vec::new();
    let earning_shares = shares.iter().filter(|s| s.weight > Decimal::ZERO);
    for (share, clipped) in earning_shares.zip(clipped) {
        let weight = ratio(share.weight);
        let direct = match earning {
            Earning::Sale => {
                let bonus = BigRational::one() + ratio(share.volume_bonus);
                ratio(amount) * weight * ratio(share.rate_or(share.tier_rate)) * bonus
            }
            Earning::Bounty(bounty) => ratio(share.bounty_or(bounty)) * weight,
            Earning::Recurring => {
                ratio(amount) * weight * ratio(share.rate_or(plan.recurring.rate))
            }
        };
        let direct = clipped.map_or(direct, ratio);
        let overrides = share.ancestors.iter().zip(&plan.overrides);
        let overrides: Vec<BigRational> = overrides
            .filter(|(ancestor, _)| ancestor.is_some())
            .map(|(_, rate)| &direct * ratio(*rate))
            .collect();
        // The direct row, then its overrides by level, as `earn` makes them.
        out.push(direct);
        out.extend(overrides);
    }
    out
}

/// A row an order earned, with what earlier refunds already took back of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarnedRow {
    pub partner_id: String,
    pub level: u8,
    /// The rounded amount the row earned.
    pub amount: Decimal,
    /// Sum of the (negative) reversals already booked against it.
    pub reversed: Decimal,
}

/// Reversal rows for a refund of `refunded` against an order whose settlement amount was
/// `original_amount`: each earned row loses its amount × R/O, capped at what is left of
/// it, rounded jointly. Each reversal comes with the index of the earned row it reverses
/// (one partner may hold several rows of one order); the caller books it there.
pub fn reverse(
    earned: &[EarnedRow],
    refunded: Decimal,
    original_amount: Decimal,
    minor_units: u32,
) -> Result<Vec<(usize, LedgerRow)>, Overflow> {
    // A zero-amount order (a lead, a signup) earned bounties: any refund of it takes
    // them back in full.
    let (ratio_of, exact_ratio) = if original_amount.is_zero() {
        (Decimal::ONE, BigRational::one())
    } else {
        let exact = (ratio(refunded) / ratio(original_amount)).min(BigRational::one());
        let approx = refunded
            .checked_div(original_amount)
            .ok_or(Overflow)?
            .min(Decimal::ONE);
        (approx, exact)
    };
    // R/O rarely terminates within 28 digits (a third): then rounding decides on the
    // exact rationals, and a tie between rows is a tie.
    let mut exact = ratio(ratio_of) == exact_ratio;
    let mut index = Vec::with_capacity(earned.len());
    let mut rows = Vec::with_capacity(earned.len());
    let mut exacts = Vec::with_capacity(earned.len());
    for (i, row) in earned.iter().enumerate() {
        let left = add(row.amount, row.reversed)?;
        if left <= Decimal::ZERO {
            continue;
        }
        let product = mul(row.amount, ratio_of)?;
        exact &= mul_is_exact(row.amount, ratio_of, product);
        let taken = product.min(left);
        exacts.push(-(ratio(row.amount) * &exact_ratio).min(ratio(left)));
        index.push(i);
        rows.push(LedgerRow {
            partner_id: row.partner_id.clone(),
            level: row.level,
            kind: LedgerKind::Reversal,
            base_amount: row.amount,
            rate: -ratio_of,
            exact: -taken,
            amount: Decimal::ZERO,
            reason: String::new(),
        });
    }
    if exact {
        round_jointly(&mut rows, minor_units)?;
    } else {
        round_exactly(&mut rows, &exacts, minor_units)?;
    }
    Ok(index
        .into_iter()
        .zip(rows)
        .filter(|(_, r)| !r.amount.is_zero() || !r.exact.is_zero())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    pub(crate) fn plan() -> CommissionPlan {
        serde_json::from_str(EXAMPLE_PLAN_JSON).unwrap()
    }

    fn share(p: &str, w: &str, tier: &str, bonus: &str, ancestors: &[&str]) -> Share {
        Share {
            partner_id: p.into(),
            weight: d(w),
            tier_rate: plan().tier_rate(Some(tier)),
            volume_bonus: d(bonus),
            ancestors: ancestors.iter().map(|a| Some(a.to_string())).collect(),
            rule: None,
            headroom: None,
        }
    }

    fn amounts(rows: &[LedgerRow]) -> Vec<(String, u8, Decimal)> {
        rows.iter()
            .map(|r| (r.partner_id.clone(), r.level, r.amount))
            .collect()
    }

    /// Books reversals on the rows they reverse and returns them without their index.
    fn book(earned: &mut [EarnedRow], reversals: Vec<(usize, LedgerRow)>) -> Vec<LedgerRow> {
        reversals
            .into_iter()
            .map(|(i, r)| {
                earned[i].reversed += r.amount;
                r
            })
            .collect()
    }

    #[test]
    fn plan_parses_and_validates() {
        let p = plan();
        assert!(p.validate().is_ok());
        assert_eq!(p.tier_rate(Some("gold")), d("0.25"));
        assert_eq!(p.tier_rate(None), d("0.15"));
        assert_eq!(p.tier_rate(Some("unknown")), d("0.15"));
        assert_eq!(p.volume_bonus(49), d("0"));
        assert_eq!(p.volume_bonus(50), d("0.05"));
        assert_eq!(p.volume_bonus(100), d("0.10"));
        let mut bad = p.clone();
        bad.default_tier = "diamond".into();
        assert_eq!(bad.validate().unwrap_err().0, "default_tier");
        let mut bad = p.clone();
        bad.overrides.push(d("1.5"));
        assert_eq!(bad.validate().unwrap_err().0, "overrides[3]");
    }

    #[test]
    fn sale_with_full_override_chain() {
        // A = 129.99, one gold partner with a 5% volume bonus:
        // direct = 129.99 × 0.25 × 1.05 = 34.122375
        // parent 10% = 3.4122375, grandparent 5% = 1.70611875, great-grandparent 2% = 0.6824475
        // exact sum = 39.92317875 → 39.92; truncated 34.12 + 3.41 + 1.70 + 0.68 = 39.91;
        // remainders 0.002375, 0.0022375, 0.00611875, 0.0024475: the cent goes to level 2.
        let rows = earn(
            &plan(),
            Earning::Sale,
            d("129.99"),
            &[share("p", "1", "gold", "0.05", &["a", "b", "c"])],
            2,
        )
        .unwrap();
        assert_eq!(
            amounts(&rows),
            vec![
                ("p".into(), 0, d("34.12")),
                ("a".into(), 1, d("3.41")),
                ("b".into(), 2, d("1.71")),
                ("c".into(), 3, d("0.68")),
            ]
        );
        assert_eq!(rows.iter().map(|r| r.amount).sum::<Decimal>(), d("39.92"));
        assert_eq!(rows[0].rate, d("0.2625"));
        assert_eq!(rows[1].base_amount, d("34.122375"));
    }

    #[test]
    fn short_override_chains_and_inactive_ancestors() {
        let mut s = share("p", "1", "bronze", "0", &["a"]);
        let rows = earn(&plan(), Earning::Sale, d("100"), &[s.clone()], 2).unwrap();
        // 15.00 direct, 1.50 to the only parent.
        assert_eq!(
            amounts(&rows),
            vec![("p".into(), 0, d("15.00")), ("a".into(), 1, d("1.50"))]
        );
        // A paused parent earns nothing; the active grandparent still earns level 2.
        s.ancestors = vec![None, Some("g".into())];
        let rows = earn(&plan(), Earning::Sale, d("100"), &[s], 2).unwrap();
        assert_eq!(
            amounts(&rows),
            vec![("p".into(), 0, d("15.00")), ("g".into(), 2, d("0.75"))]
        );
    }

    #[test]
    fn linear_split_between_two_partners() {
        // 3 touches: p1 has two (2/3), p2 one (1/3). A = 10.00, both bronze (15%).
        // p1: 10 × 0.666666666667 × 0.15 = 1.00000000000050 → 1.00
        // p2: 10 × 0.333333333333 × 0.15 = 0.49999999999950 → 0.49, +1 cent → 0.50
        let rows = earn(
            &plan(),
            Earning::Sale,
            d("10.00"),
            &[
                share("p1", "0.666666666667", "bronze", "0", &[]),
                share("p2", "0.333333333333", "bronze", "0", &[]),
            ],
            2,
        )
        .unwrap();
        assert_eq!(
            amounts(&rows),
            vec![("p1".into(), 0, d("1.00")), ("p2".into(), 0, d("0.50"))]
        );
    }

    #[test]
    fn bounties_and_recurring() {
        let rows = earn(
            &plan(),
            Earning::Bounty(d("5.00")),
            d("0"),
            &[share("p", "1", "gold", "0", &["a"])],
            2,
        )
        .unwrap();
        assert_eq!(
            amounts(&rows),
            vec![("p".into(), 0, d("5.00")), ("a".into(), 1, d("0.50"))]
        );
        let rows = earn(
            &plan(),
            Earning::Recurring,
            d("49.99"),
            &[share("p", "1", "gold", "0.10", &[])],
            2,
        )
        .unwrap();
        // 49.99 × 0.10 = 4.999 → 5.00 (no volume bonus on recurring)
        assert_eq!(amounts(&rows), vec![("p".into(), 0, d("5.00"))]);
    }

    #[test]
    fn zero_amount_sale_earns_zero_rows() {
        let rows = earn(
            &plan(),
            Earning::Sale,
            d("0"),
            &[share("p", "1", "gold", "0", &["a"])],
            2,
        )
        .unwrap();
        assert_eq!(
            amounts(&rows),
            vec![("p".into(), 0, d("0.00")), ("a".into(), 1, d("0.00"))]
        );
    }

    #[test]
    fn yen_sale() {
        // ¥12,999 × 0.15 = 1949.85; override 194.985 → exact 2144.835 → ¥2145
        // truncated 1949 + 194 = 2143; two yen to the remainders .985 (a) and .85 (p).
        let rows = earn(
            &plan(),
            Earning::Sale,
            d("12999"),
            &[share("p", "1", "bronze", "0", &["a"])],
            0,
        )
        .unwrap();
        assert_eq!(
            amounts(&rows),
            vec![("p".into(), 0, d("1950")), ("a".into(), 1, d("195"))]
        );
    }

    fn earned(rows: &[LedgerRow]) -> Vec<EarnedRow> {
        rows.iter()
            .map(|r| EarnedRow {
                partner_id: r.partner_id.clone(),
                level: r.level,
                amount: r.amount,
                reversed: Decimal::ZERO,
            })
            .collect()
    }

    #[test]
    fn partial_then_second_partial_then_excess_refund() {
        // Order of 100.00 earned 15.00 direct and 1.50 override.
        let rows = earn(
            &plan(),
            Earning::Sale,
            d("100"),
            &[share("p", "1", "bronze", "0", &["a"])],
            2,
        )
        .unwrap();
        let mut book = earned(&rows);

        // Refund 30.00 of 100.00: 30% of each row.
        let rev = reverse(&book, d("30"), d("100"), 2).unwrap();
        let rev = self::book(&mut book, rev);
        assert_eq!(
            amounts(&rev),
            vec![("p".into(), 0, d("-4.50")), ("a".into(), 1, d("-0.45"))]
        );
        // Refund 33.33: 33.33% → -4.9995 and -0.49995, sum -5.49945 → -5.50;
        // truncated -4.99 + -0.49 = -5.48, two cents more to the largest remainders.
        let rev = reverse(&book, d("33.33"), d("100"), 2).unwrap();
        let rev = self::book(&mut book, rev);
        assert_eq!(
            amounts(&rev),
            vec![("p".into(), 0, d("-5.00")), ("a".into(), 1, d("-0.50"))]
        );
        // A refund of the whole order now takes only what is left: 5.50 and 0.55.
        let rev = reverse(&book, d("100"), d("100"), 2).unwrap();
        let rev = self::book(&mut book, rev);
        assert_eq!(
            amounts(&rev),
            vec![("p".into(), 0, d("-5.50")), ("a".into(), 1, d("-0.55"))]
        );
        // Nothing is left to reverse.
        assert!(reverse(&book, d("1"), d("100"), 2).unwrap().is_empty());
        for b in &book {
            assert_eq!(b.amount + b.reversed, Decimal::ZERO);
        }
    }

    #[test]
    fn a_refund_of_a_third_breaks_the_tie_by_level_not_by_the_28th_digit() {
        // An order earned 4.16 direct and 0.41 override; a refund of exactly a third
        // reverses 1.3866… and 0.1366…: both remainders are 2/300 of a unit, a tie, and
        // the lower level takes the missing cent (SPEC §5.5). Dividing R/O to 28 digits
        // first made 0.41's remainder the larger one in its last digit.
        let book = vec![
            EarnedRow {
                partner_id: "ana".into(),
                level: 0,
                amount: d("4.16"),
                reversed: Decimal::ZERO,
            },
            EarnedRow {
                partner_id: "agency".into(),
                level: 1,
                amount: d("0.41"),
                reversed: Decimal::ZERO,
            },
        ];
        let rev: Vec<LedgerRow> = reverse(&book, d("6.09"), d("18.27"), 2)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            amounts(&rev),
            vec![
                ("ana".into(), 0, d("-1.39")),
                ("agency".into(), 1, d("-0.13"))
            ]
        );
    }

    #[test]
    fn thirds_of_a_sale_with_overrides_round_on_exact_shares() {
        // Three linear touches of one partner each (weights 0.333…3, 0.333…3, 0.333…4)
        // with overrides: every row is a product the decimals only approximate.
        let w = [
            "0.3333333333333333333333333333",
            "0.3333333333333333333333333333",
            "0.3333333333333333333333333334",
        ];
        let shares: Vec<Share> = ["a", "b", "c"]
            .iter()
            .zip(w)
            .map(|(p, w)| share(p, w, "silver", "0.05", &["x", "y"]))
            .collect();
        let rows = earn(&plan(), Earning::Sale, d("100.01"), &shares, 2).unwrap();
        let exact = oracle::earned(&plan(), Earning::Sale, d("100.01"), &shares);
        oracle::check(&rows, &exact, 2).unwrap();
    }

    /// SPEC §5.5 checked with exact rationals, independently of the rounding code: the
    /// rows add up to the half-even rounding of the exact sum, each moves less than one
    /// unit, and a row that got a unit its neighbour did not has the larger remainder in
    /// the direction of the units, or the same one and the lower (level, partner).
    mod oracle {
        use super::*;
        use num_bigint::BigInt;
        use num_traits::{Signed, Zero};

        pub fn q(x: Decimal) -> BigRational {
            BigRational::new(
                BigInt::from(x.mantissa()),
                BigInt::from(10u32).pow(x.scale()),
            )
        }

        /// The exact amounts of `earn`'s rows, from the plan's formula.
        pub fn earned(
            plan: &CommissionPlan,
            earning: Earning,
            amount: Decimal,
            shares: &[Share],
        ) -> Vec<BigRational> {
            let mut out = Vec::new();
            for s in shares.iter().filter(|s| s.weight > Decimal::ZERO) {
                let direct = match earning {
                    Earning::Sale => {
                        q(amount)
                            * q(s.weight)
                            * q(s.tier_rate)
                            * (BigRational::one() + q(s.volume_bonus))
                    }
                    Earning::Bounty(b) => q(b) * q(s.weight),
                    Earning::Recurring => q(amount) * q(s.weight) * q(plan.recurring.rate),
                };
                out.push(direct.clone());
                for (a, r) in s.ancestors.iter().zip(&plan.overrides) {
                    if a.is_some() {
                        out.push(&direct * q(*r));
                    }
                }
            }
            out
        }

        pub fn check(rows: &[LedgerRow], exact: &[BigRational], minor: u32) -> Result<(), String> {
            if rows.len() != exact.len() {
                return Err(format!("{} rows for {} amounts", rows.len(), exact.len()));
            }
            let scale = BigRational::from_integer(BigInt::from(10u32).pow(minor));
            let scaled: Vec<BigRational> = exact.iter().map(|x| x * &scale).collect();
            let sum: BigRational = scaled.iter().sum();
            let got: Vec<BigRational> = rows.iter().map(|r| q(r.amount) * &scale).collect();
            let total: BigRational = got.iter().sum();
            let (fl, half) = (sum.floor(), BigRational::new(1.into(), 2.into()));
            let want = match (&sum - &fl).cmp(&half) {
                std::cmp::Ordering::Less => fl.clone(),
                std::cmp::Ordering::Greater => fl.clone() + BigRational::one(),
                std::cmp::Ordering::Equal if (fl.to_integer() % BigInt::from(2)).is_zero() => {
                    fl.clone()
                }
                std::cmp::Ordering::Equal => fl.clone() + BigRational::one(),
            };
            if total != want {
                return Err(format!("total {total} for the rounded exact sum {want}"));
            }
            let up = total > scaled.iter().map(|x| x.trunc()).sum();
            // Which rows got a unit beyond their truncation, and their remainders.
            let extra: Vec<bool> = got
                .iter()
                .zip(&scaled)
                .map(|(g, x)| *g != x.trunc())
                .collect();
            let rem: Vec<BigRational> = scaled.iter().map(|x| x - x.trunc()).collect();
            for i in 0..rows.len() {
                if (&got[i] - &scaled[i]).abs() >= BigRational::one() {
                    return Err(format!("row {i} moved a unit or more"));
                }
                for j in 0..rows.len() {
                    if !extra[i] || extra[j] {
                        continue;
                    }
                    let (ri, rj) = if up {
                        (rem[i].clone(), rem[j].clone())
                    } else {
                        (-rem[i].clone(), -rem[j].clone())
                    };
                    let key = |k: usize| (rows[k].level, rows[k].partner_id.clone());
                    if ri < rj || (ri == rj && key(i) > key(j)) {
                        return Err(format!("row {i} took a unit before row {j}: {ri} vs {rj}"));
                    }
                }
            }
            Ok(())
        }
    }

    mod exact_props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn reversals_break_ties_only_by_the_rule(
                cents in proptest::collection::vec(1i64..1_000_000, 1..6),
                levels in proptest::collection::vec(0u8..4, 6),
                (p, q) in prop_oneof![Just((1i64, 3i64)), Just((1, 7)), Just((2, 3)), Just((5, 9)), Just((1, 6)), (1i64..50, 51i64..100)],
                k in 1i64..100_000,
                minor in 0u32..3,
            ) {
                let book: Vec<EarnedRow> = cents.iter().zip(&levels).enumerate().map(|(i, (c, l))| EarnedRow {
                    partner_id: format!("p{}", i % 3),
                    level: *l,
                    amount: Decimal::new(*c, minor),
                    reversed: Decimal::ZERO,
                }).collect();
                let (refunded, original) = (Decimal::new(p * k, 2), Decimal::new(q * k, 2));
                let rev = reverse(&book, refunded, original, minor).unwrap();
                let r = oracle::q(refunded) / oracle::q(original);
                let exact: Vec<BigRational> = rev.iter().map(|(i, _)| -(oracle::q(book[*i].amount) * &r)).collect();
                let rows: Vec<LedgerRow> = rev.into_iter().map(|(_, r)| r).collect();
                prop_assert_eq!(oracle::check(&rows, &exact, minor), Ok(()));
            }

            #[test]
            fn shares_and_overrides_break_ties_only_by_the_rule(
                cents in 1i64..100_000_000,
                touches in 1usize..8,
                bonus in prop_oneof![Just("0"), Just("0.05"), Just("0.1")],
                tier in prop_oneof![Just("bronze"), Just("silver"), Just("gold")],
                minor in 0u32..3,
            ) {
                use crate::engine::attribution::{AttributionModel, Touch};
                let journey: Vec<Touch> = (0..touches).map(|i| Touch {
                    click_id: uuid::Uuid::from_u128(i as u128 + 1),
                    partner_id: format!("p{i}"),
                    ts: chrono::DateTime::UNIX_EPOCH,
                }).collect();
                let weights = AttributionModel::Linear.weights(&journey);
                let shares: Vec<Share> = weights.iter().enumerate()
                    .map(|(i, w)| share(&format!("p{i}"), &w.to_string(), tier, bonus, &["x", "y", "z"]))
                    .collect();
                let amount = Decimal::new(cents, 2);
                let rows = earn(&plan(), Earning::Sale, amount, &shares, minor).unwrap();
                let exact = oracle::earned(&plan(), Earning::Sale, amount, &shares);
                prop_assert_eq!(oracle::check(&rows, &exact, minor), Ok(()));
            }
        }
    }

    #[test]
    fn refund_of_a_lead_takes_the_bounty_back() {
        let rows = earn(
            &plan(),
            Earning::Bounty(d("5.00")),
            d("0"),
            &[share("p", "1", "gold", "0", &[])],
            2,
        )
        .unwrap();
        let mut e = earned(&rows);
        let rev = reverse(&e, d("0"), d("0"), 2).unwrap();
        let rev = book(&mut e, rev);
        assert_eq!(amounts(&rev), vec![("p".into(), 0, d("-5.00"))]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn reversals_never_exceed_earnings(
                amount_cents in 0i64..100_000_000,
                refunds in proptest::collection::vec(0i64..100_000_000, 1..6),
                weight_millis in 1i64..1000,
            ) {
                let amount = Decimal::new(amount_cents, 2);
                let w = Decimal::new(weight_millis, 3);
                let rows = earn(&plan(), Earning::Sale, amount, &[
                    share("p", &w.to_string(), "gold", "0.05", &["a", "b", "c"]),
                    share("q", &(Decimal::ONE - w).to_string(), "bronze", "0", &["a"]),
                ], 2).unwrap();
                let exact: Decimal = rows.iter().map(|r| r.exact).sum();
                let total: Decimal = rows.iter().map(|r| r.amount).sum();
                prop_assert_eq!(total, exact.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven));
                let mut book = earned(&rows);
                for r in refunds {
                    let rev = reverse(&book, Decimal::new(r, 2), amount, 2).unwrap();
                    super::book(&mut book, rev);
                    for b in &book {
                        prop_assert!(b.reversed <= Decimal::ZERO);
                        prop_assert!(b.amount + b.reversed >= Decimal::ZERO, "reversed more than earned: {:?}", b);
                    }
                }
            }
        }
    }
}
