//! Caps (SPEC §10.1): the most a partner's direct commissions may add up to per UTC
//! day, per UTC month (of the conversions' `occurred_at`) or over its lifetime, in the
//! program currency, counted in intake order. A row that would pass a cap is clipped to
//! what is left; later rows of the period earn nothing.

use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money;

/// The span a cap counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
    Lifetime,
}

impl Period {
    /// The period `t` falls in, as a key: `d20261207`, `m202612`, `life`.
    pub fn key(self, t: DateTime<Utc>) -> String {
        match self {
            Period::Day => format!("d{:04}{:02}{:02}", t.year(), t.month(), t.day()),
            Period::Month => format!("m{:04}{:02}", t.year(), t.month()),
            Period::Lifetime => "life".into(),
        }
    }
}

/// One cap of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub period: Period,
    /// In the program currency.
    pub max: Decimal,
}

/// Checks a plan's caps: one per period at most, each a non-negative amount within the
/// ledger's bound with at most `minor_units` decimals (so that what is left is always a
/// whole number of the currency's minor unit, and rounding never passes a cap).
pub fn validate(caps: &[Cap], minor_units: u32) -> Result<(), (String, &'static str)> {
    for (i, cap) in caps.iter().enumerate() {
        if caps[..i].iter().any(|c| c.period == cap.period) {
            return Err((format!("caps[{i}].period"), "one cap per period"));
        }
        if cap.max.is_sign_negative()
            || cap.max > money::max_settled()
            || cap.max.normalize().scale() > minor_units
        {
            return Err((
                format!("caps[{i}].max"),
                "must be an amount from 0 to 10000000000000 in the program currency's minor units",
            ));
        }
    }
    Ok(())
}

/// What is left under every cap, given the partner's running total in each cap's
/// period (`total(period)`, 0 when it earned nothing yet); `None` without caps.
pub fn headroom(caps: &[Cap], total: impl Fn(Period) -> Decimal) -> Option<Decimal> {
    caps.iter()
        .map(|c| (c.max - total(c.period)).max(Decimal::ZERO))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn caps(v: serde_json::Value) -> Vec<Cap> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn periods_key_by_utc_calendar() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 23, 59, 59).unwrap();
        assert_eq!(Period::Day.key(t), "d20261207");
        assert_eq!(Period::Month.key(t), "m202612");
        assert_eq!(Period::Lifetime.key(t), "life");
    }

    #[test]
    fn the_tightest_cap_leaves_what_is_left() {
        let c = caps(serde_json::json!([
            {"period": "day", "max": "100.00"}, {"period": "month", "max": "500"}]));
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let left = headroom(&c, |p| match p {
            Period::Day => d("30.00"),
            _ => d("450.00"),
        });
        assert_eq!(left, Some(d("50.00")));
        assert_eq!(headroom(&c, |_| d("999")), Some(Decimal::ZERO));
        assert_eq!(headroom(&[], |_| d("1")), None);
    }

    #[test]
    fn bad_caps_name_their_field() {
        let bad = |v: serde_json::Value, minor| validate(&caps(v), minor).unwrap_err().0;
        assert_eq!(
            bad(
                serde_json::json!([{"period": "day", "max": "1"}, {"period": "day", "max": "2"}]),
                2
            ),
            "caps[1].period"
        );
        assert_eq!(
            bad(serde_json::json!([{"period": "month", "max": "-1"}]), 2),
            "caps[0].max"
        );
        assert_eq!(
            bad(serde_json::json!([{"period": "month", "max": "10.001"}]), 2),
            "caps[0].max"
        );
        assert_eq!(
            bad(serde_json::json!([{"period": "month", "max": "10.5"}]), 0),
            "caps[0].max"
        );
        assert!(validate(
            &caps(serde_json::json!([{"period": "lifetime", "max": "10.50"}])),
            2
        )
        .is_ok());
        assert!(serde_json::from_value::<Vec<Cap>>(
            serde_json::json!([{"period": "week", "max": "1"}])
        )
        .is_err());
    }
}
