//! Automatic tier moves (SPEC §10.2): at each UTC period boundary a partner's figures
//! over the period just ended choose its tier, which holds for conversions from the
//! boundary on. What the figures are, which tier they choose and which tier is in force
//! at a moment, as pure functions; the pipeline gathers the figures and stores the moves.

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::commission::CommissionPlan;
use crate::money;

/// Most rungs a ladder may have.
pub const MAX_TIER_RULES: usize = 20;
/// The highest conversion count a minimum may ask for.
const MAX_CONVERSIONS: u64 = 1_000_000_000;

/// How often tiers are reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[default]
    Month,
    Quarter,
}

impl Period {
    fn months(self) -> u32 {
        match self {
            Period::Month => 1,
            Period::Quarter => 3,
        }
    }

    /// The first instant of the period `t` falls in (UTC).
    pub fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let m0 = (t.month0() / self.months()) * self.months();
        Utc.with_ymd_and_hms(t.year(), m0 + 1, 1, 0, 0, 0)
            .single()
            .unwrap_or(t)
    }

    /// The first instant of the period after the one `t` falls in.
    pub fn next(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.start(t);
        start
            .checked_add_months(Months::new(self.months()))
            .unwrap_or(start)
    }

    /// The first instant of the period before the one starting at `start`.
    pub fn previous(self, start: DateTime<Utc>) -> DateTime<Utc> {
        start
            .checked_sub_months(Months::new(self.months()))
            .unwrap_or(start)
    }

    /// The period `t` falls in, as a key: `m202612`, `q20264`.
    pub fn key(self, t: DateTime<Utc>) -> String {
        match self {
            Period::Month => format!("m{:04}{:02}", t.year(), t.month()),
            Period::Quarter => format!("q{:04}{}", t.year(), t.month0() / 3 + 1),
        }
    }
}

/// What a partner did in one period, as counted toward its tier: attributed `sale`,
/// `lead` and `signup` conversions, the settled revenue credited to it (its share of
/// each, net of refunds) and everything it earned (net of reversals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub conversions: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub commission: Decimal,
}

impl Figures {
    /// Both added; saturating (the ledger's bounds keep real sums far below).
    pub fn plus(self, o: Figures) -> Figures {
        let sum = |a: Decimal, b: Decimal| a.checked_add(b).unwrap_or(Decimal::MAX);
        Figures {
            conversions: self.conversions.saturating_add(o.conversions),
            revenue: sum(self.revenue, o.revenue),
            commission: sum(self.commission, o.commission),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Figures::default()
    }
}

/// The minima of one rung; absent figures are not asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Minimum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversions: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub revenue: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub commission: Option<Decimal>,
}

impl Minimum {
    /// Whether `f` meets every minimum.
    pub fn met_by(&self, f: &Figures) -> bool {
        self.conversions.is_none_or(|m| f.conversions >= m)
            && self.revenue.is_none_or(|m| f.revenue >= m)
            && self.commission.is_none_or(|m| f.commission >= m)
    }

    /// Each figure asked for, as (name, value); conversions as a decimal.
    fn asked(&self) -> [(&'static str, Option<Decimal>); 3] {
        [
            ("conversions", self.conversions.map(Decimal::from)),
            ("revenue", self.revenue),
            ("commission", self.commission),
        ]
    }
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierStep {
    pub tier: String,
    pub min: Minimum,
}

/// The program's ladder, lowest rung first; below every rung is the plan's
/// `default_tier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRules {
    #[serde(default)]
    pub period: Period,
    /// Whether a partner may move down (without it, only up).
    #[serde(default)]
    pub demote: bool,
    pub tiers: Vec<TierStep>,
}

impl TierRules {
    /// Checks the ladder against the plan; the error names the rung and figure (under
    /// `tier_rules.`).
    pub fn validate(&self, plan: &CommissionPlan) -> Result<(), (String, &'static str)> {
        if self.tiers.is_empty() || self.tiers.len() > MAX_TIER_RULES {
            return Err(("tiers".into(), "must list 1 to 20 tiers"));
        }
        for (i, step) in self.tiers.iter().enumerate() {
            let at = |what: &str| format!("tiers[{i}]{what}");
            if !plan.tiers.contains_key(&step.tier) {
                return Err((at(".tier"), "is not a tier of the commission plan"));
            }
            if step.tier == plan.default_tier {
                return Err((
                    at(".tier"),
                    "is the default tier, which is below every rung already",
                ));
            }
            if self.tiers[..i].iter().any(|s| s.tier == step.tier) {
                return Err((at(".tier"), "is listed twice"));
            }
            check_minimum(&step.min).map_err(|(f, m)| (at(&format!(".min{f}")), m))?;
            if let Some(below) = i.checked_sub(1).map(|j| &self.tiers[j].min) {
                increases(below, &step.min).map_err(|(f, m)| (at(&format!(".min{f}")), m))?;
            }
        }
        Ok(())
    }

    /// The rung `figures` earn: the highest all of whose minima they meet (1-based), 0
    /// below every rung.
    pub fn rung_for(&self, figures: &Figures) -> usize {
        self.tiers
            .iter()
            .rposition(|s| s.min.met_by(figures))
            .map_or(0, |i| i + 1)
    }

    /// The rung of `tier`; 0 for the default tier and any tier off the ladder.
    pub fn rung_of(&self, tier: &str) -> usize {
        self.tiers
            .iter()
            .position(|s| s.tier == tier)
            .map_or(0, |i| i + 1)
    }

    /// The tier of rung `rung`.
    pub fn tier_of<'a>(&'a self, rung: usize, plan: &'a CommissionPlan) -> &'a str {
        match rung.checked_sub(1).and_then(|i| self.tiers.get(i)) {
            Some(s) => &s.tier,
            None => &plan.default_tier,
        }
    }

    /// The tier a partner holding `previous` moves to at a boundary after a period of
    /// `figures`: the rung they earn, and without `demote` never lower than the one held.
    pub fn next_tier<'a>(
        &'a self,
        plan: &'a CommissionPlan,
        previous: &'a str,
        figures: &Figures,
    ) -> &'a str {
        let earned = self.rung_for(figures);
        let held = self.rung_of(previous);
        if self.demote || earned > held {
            self.tier_of(earned, plan)
        } else {
            previous
        }
    }
}

fn check_minimum(min: &Minimum) -> Result<(), (String, &'static str)> {
    if min.asked().iter().all(|(_, v)| v.is_none()) {
        return Err((
            String::new(),
            "must ask for conversions, revenue or commission",
        ));
    }
    if min.conversions.is_some_and(|c| c > MAX_CONVERSIONS) {
        return Err((".conversions".into(), "must be at most 1000000000"));
    }
    for (name, value) in [("revenue", min.revenue), ("commission", min.commission)] {
        if value.is_some_and(|v| {
            v.is_sign_negative() || v > money::max_settled() || v.scale() > money::AMOUNT_SCALE
        }) {
            return Err((
                format!(".{name}"),
                "must be an amount from 0 to 10000000000000 with at most 4 decimals",
            ));
        }
    }
    Ok(())
}

/// A rung's minima against the one below: none lower where both ask, and at least one
/// higher (a figure the lower rung does not ask for counts as 0 there), so that every
/// rung can be reached and a higher rung is always harder.
fn increases(below: &Minimum, above: &Minimum) -> Result<(), (String, &'static str)> {
    let mut higher = false;
    for ((name, b), (_, a)) in below.asked().into_iter().zip(above.asked()) {
        match (b, a) {
            (Some(b), Some(a)) if a < b => {
                return Err((format!(".{name}"), "is below the tier before it"));
            }
            (b, Some(a)) if a > b.unwrap_or(Decimal::ZERO) => higher = true,
            _ => {}
        }
    }
    if higher {
        Ok(())
    } else {
        Err((
            String::new(),
            "must ask for more than the tier before it in some figure",
        ))
    }
}

/// A partner's tier as the registry holds it at a moment: set by hand or at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldTier<'a> {
    /// `None`: the plan's default tier.
    pub tier: Option<&'a str>,
    /// When the registry's entry took effect (`None`: for as long as it is known).
    pub since: Option<DateTime<Utc>>,
    /// Set by hand with automatic moves off: moves do not apply.
    pub pinned: bool,
}

/// A move made at a boundary, as stored and as `partner_tiers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierMove {
    #[serde(with = "crate::events::rfc3339_millis")]
    pub from: DateTime<Utc>,
    pub tier: String,
    pub previous: String,
    /// The figures of the period before `from` that decided it.
    pub figures: Figures,
}

/// The tier in force given what the registry holds then and the latest automatic move
/// at or before that moment: the move, unless the partner is pinned or the registry's
/// entry is newer (a tier set by hand replaces an earlier move).
pub fn in_force<'a>(held: HeldTier<'a>, moved: Option<&'a TierMove>) -> Option<&'a str> {
    match moved {
        Some(m) if !held.pinned && held.since.is_none_or(|s| m.from > s) => Some(&m.tier),
        _ => held.tier,
    }
}

/// The latest of `moves` at or before `t`.
pub fn latest_move(moves: &[TierMove], t: DateTime<Utc>) -> Option<&TierMove> {
    moves.iter().filter(|m| m.from <= t).max_by_key(|m| m.from)
}

/// The moment whose tier a conversion is paid at: its `occurred_at`, or its
/// `received_at` when the merchant's clock runs ahead (so that a conversion taken in
/// before a boundary never waits for the move made there).
pub fn tier_time(occurred_at: DateTime<Utc>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    occurred_at.min(received_at)
}

/// The period whose figures a conversion counts toward: the one its later clock falls
/// in, so that a period's figures are complete once every conversion taken in before
/// its end is settled.
pub fn counted_at(occurred_at: DateTime<Utc>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    occurred_at.max(received_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn plan() -> CommissionPlan {
        serde_json::from_value(serde_json::json!({
            "tiers": {"bronze": "0.15", "silver": "0.20", "gold": "0.25", "platinum": "0.30"},
            "default_tier": "bronze"}))
        .unwrap()
    }

    fn ladder(demote: bool) -> TierRules {
        serde_json::from_value(
            serde_json::json!({"period": "month", "demote": demote, "tiers": [
            {"tier": "silver",   "min": {"conversions": 10}},
            {"tier": "gold",     "min": {"revenue": "10000", "conversions": 25}},
            {"tier": "platinum", "min": {"revenue": "50000"}}]}),
        )
        .unwrap()
    }

    fn figures(conversions: u64, revenue: &str) -> Figures {
        Figures {
            conversions,
            revenue: d(revenue),
            commission: Decimal::ZERO,
        }
    }

    #[test]
    fn the_highest_rung_met_wins() {
        let l = ladder(true);
        let p = plan();
        assert_eq!(l.tier_of(l.rung_for(&figures(3, "100")), &p), "bronze");
        assert_eq!(l.tier_of(l.rung_for(&figures(10, "100")), &p), "silver");
        assert_eq!(l.tier_of(l.rung_for(&figures(25, "9999.99")), &p), "silver");
        assert_eq!(l.tier_of(l.rung_for(&figures(25, "10000")), &p), "gold");
        // Platinum asks only for revenue: it skips the rungs below.
        assert_eq!(l.tier_of(l.rung_for(&figures(1, "50000")), &p), "platinum");
    }

    #[test]
    fn without_demote_a_partner_only_moves_up() {
        let p = plan();
        let up = ladder(false);
        assert_eq!(up.next_tier(&p, "gold", &figures(0, "0")), "gold");
        assert_eq!(up.next_tier(&p, "silver", &figures(30, "20000")), "gold");
        // A tier off the ladder holds rung 0.
        let down = ladder(true);
        assert_eq!(down.next_tier(&p, "gold", &figures(0, "0")), "bronze");
        assert_eq!(down.next_tier(&p, "platinum", &figures(12, "0")), "silver");
    }

    #[test]
    fn periods_start_on_utc_calendar_boundaries() {
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        let dec = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(Period::Month.next(t), dec);
        assert_eq!(Period::Month.start(dec), dec);
        assert_eq!(Period::Month.key(t), "m202611");
        assert_eq!(
            Period::Month.previous(dec),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        let q4 = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        assert_eq!(Period::Quarter.start(t), q4);
        assert_eq!(
            Period::Quarter.next(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(Period::Quarter.key(t), "q20264");
        assert_eq!(
            Period::Quarter.previous(q4),
            Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_move_applies_unless_pinned_or_superseded_by_hand() {
        let at = |day| Utc.with_ymd_and_hms(2026, 12, day, 0, 0, 0).unwrap();
        let moved = TierMove {
            from: at(1),
            tier: "gold".into(),
            previous: "bronze".into(),
            figures: Figures::default(),
        };
        let held = |since, pinned| HeldTier {
            tier: Some("silver"),
            since,
            pinned,
        };
        assert_eq!(in_force(held(None, false), Some(&moved)), Some("gold"));
        assert_eq!(in_force(held(None, true), Some(&moved)), Some("silver"));
        // Set by hand after the boundary: the hand wins; before it: the move.
        assert_eq!(
            in_force(held(Some(at(2)), false), Some(&moved)),
            Some("silver")
        );
        assert_eq!(
            in_force(
                held(Some(at(1) - chrono::Duration::days(3)), false),
                Some(&moved)
            ),
            Some("gold")
        );
        assert_eq!(in_force(held(None, false), None), Some("silver"));
        let moves = [moved.clone()];
        assert!(latest_move(&moves, at(1)).is_some());
        assert!(latest_move(&moves, at(1) - chrono::Duration::milliseconds(1)).is_none());
    }

    #[test]
    fn bad_ladders_name_their_rung() {
        let p = plan();
        let bad = |v: serde_json::Value| {
            serde_json::from_value::<TierRules>(v)
                .unwrap()
                .validate(&p)
                .unwrap_err()
        };
        let of = |tiers: serde_json::Value| bad(serde_json::json!({ "tiers": tiers })).0;
        assert_eq!(of(serde_json::json!([])), "tiers");
        assert_eq!(
            of(serde_json::json!([{"tier": "diamond", "min": {"conversions": 1}}])),
            "tiers[0].tier"
        );
        assert_eq!(
            of(serde_json::json!([{"tier": "bronze", "min": {"conversions": 1}}])),
            "tiers[0].tier"
        );
        assert_eq!(
            of(serde_json::json!([{"tier": "silver", "min": {}}])),
            "tiers[0].min"
        );
        assert_eq!(
            of(serde_json::json!([{"tier": "silver", "min": {"revenue": "-1"}}])),
            "tiers[0].min.revenue"
        );
        assert_eq!(
            of(serde_json::json!([
                {"tier": "silver", "min": {"conversions": 10}},
                {"tier": "gold", "min": {"conversions": 5, "revenue": "100"}}])),
            "tiers[1].min.conversions"
        );
        assert_eq!(
            of(serde_json::json!([
                {"tier": "silver", "min": {"conversions": 10}},
                {"tier": "gold", "min": {"conversions": 10}}])),
            "tiers[1].min"
        );
        assert_eq!(
            of(serde_json::json!([
                {"tier": "silver", "min": {"conversions": 10}},
                {"tier": "silver", "min": {"conversions": 20}}])),
            "tiers[1].tier"
        );
        assert!(ladder(true).validate(&p).is_ok());
        assert!(serde_json::from_value::<TierRules>(
            serde_json::json!({"period": "week", "tiers": []})
        )
        .is_err());
    }

    proptest! {
        /// More of every figure never earns a lower rung.
        #[test]
        fn tier_choice_is_monotone_in_the_figures(
            c in 0u64..200, r in 0i64..10_000_000, k in 0i64..1_000_000,
            dc in 0u64..50, dr in 0i64..2_000_000, dk in 0i64..200_000,
        ) {
            let mut l = ladder(true);
            l.tiers[0].min.commission = Some(d("100"));
            let low = Figures { conversions: c, revenue: Decimal::new(r, 2), commission: Decimal::new(k, 2) };
            let high = low.plus(Figures {
                conversions: dc, revenue: Decimal::new(dr, 2), commission: Decimal::new(dk, 2) });
            prop_assert!(l.rung_for(&low) <= l.rung_for(&high));
            // And the rung earned meets its own minima.
            let rung = l.rung_for(&high);
            if rung > 0 {
                prop_assert!(l.tiers[rung - 1].min.met_by(&high));
            }
        }
    }
}
