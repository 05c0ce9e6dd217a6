//! Joint rounding of one conversion's ledger rows (SPEC §5.5): the rows are rounded to
//! the currency's minor unit so that they add up exactly to the half-even rounding of
//! their exact sum. Each row is truncated toward zero, then the remaining units go one by
//! one to the largest remainders (ties: lower level first, then partner id).
//! No cent is created or lost.

use rust_decimal::{Decimal, RoundingStrategy};

use super::{add, Overflow};

/// What the rounding needs of a row: its exact amount and its tie-break key.
pub trait Roundable {
    fn exact(&self) -> Decimal;
    fn level(&self) -> u8;
    fn partner(&self) -> &str;
    fn set_rounded(&mut self, amount: Decimal);
}

/// Rounds `rows` in place to `minor_units` decimal places, jointly; nothing is changed
/// when their sum is beyond `Decimal`'s range.
pub fn round_jointly<R: Roundable>(rows: &mut [R], minor_units: u32) -> Result<(), Overflow> {
    if rows.is_empty() {
        return Ok(());
    }
    let unit = Decimal::new(1, minor_units);
    let exact_sum = rows
        .iter()
        .try_fold(Decimal::ZERO, |sum, r| add(sum, r.exact()))?;
    let target =
        exact_sum.round_dp_with_strategy(minor_units, RoundingStrategy::MidpointNearestEven);

    // (row, truncated amount, remainder), in the order units are handed out.
    let mut parts: Vec<(usize, Decimal, Decimal)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let t = r
                .exact()
                .round_dp_with_strategy(minor_units, RoundingStrategy::ToZero);
            (i, t, r.exact() - t)
        })
        .collect();
    // Truncated amounts sum to at most the exact sum in magnitude: no overflow past it.
    let mut missing = target - parts.iter().map(|p| p.1).sum::<Decimal>();
    missing.rescale(minor_units);
    // Whole minor units still to hand out; negative when the rows are (reversals).
    let missing = missing.mantissa();
    let positive = missing > 0;
    if missing != 0 {
        parts.sort_by(|a, b| {
            // Largest remainder in the direction of the missing units first.
            let by_remainder = if positive {
                b.2.cmp(&a.2)
            } else {
                a.2.cmp(&b.2)
            };
            by_remainder
                .then(rows[a.0].level().cmp(&rows[b.0].level()))
                .then_with(|| rows[a.0].partner().cmp(rows[b.0].partner()))
        });
        let step = if positive { unit } else { -unit };
        // |missing| never exceeds the rows with a remainder (see module docs), so one
        // pass suffices; the modulo only guards against a caller's inconsistent input.
        let n = parts.len();
        for i in 0..missing.unsigned_abs() as usize {
            parts[i % n].1 += step;
        }
    }
    for (i, amount, _) in parts {
        // A stable scale, so "12.5" is printed and stored as "12.50".
        let mut a = amount;
        a.rescale(minor_units);
        rows[i].set_rounded(a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[derive(Debug, Clone)]
    struct Row {
        exact: Decimal,
        level: u8,
        partner: String,
        rounded: Decimal,
    }

    impl Roundable for Row {
        fn exact(&self) -> Decimal {
            self.exact
        }
        fn level(&self) -> u8 {
            self.level
        }
        fn partner(&self) -> &str {
            &self.partner
        }
        fn set_rounded(&mut self, amount: Decimal) {
            self.rounded = amount;
        }
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn rows(spec: &[(&str, u8, &str)]) -> Vec<Row> {
        spec.iter()
            .map(|(e, l, p)| Row {
                exact: d(e),
                level: *l,
                partner: p.to_string(),
                rounded: Decimal::ZERO,
            })
            .collect()
    }

    fn rounded(r: &[Row]) -> Vec<Decimal> {
        r.iter().map(|r| r.rounded).collect()
    }

    #[test]
    fn three_thirds_of_a_dollar() {
        // 0.3333.. ×3 = 1.00 exactly: truncate to 0.33 each, the missing cent to the
        // lowest level, then partner id.
        let mut r = rows(&[
            ("0.333333333", 0, "c"),
            ("0.333333333", 0, "a"),
            ("0.333333334", 0, "b"),
        ]);
        round_jointly(&mut r, 2).unwrap();
        assert_eq!(rounded(&r), vec![d("0.33"), d("0.33"), d("0.34")]);
    }

    #[test]
    fn ties_go_to_lower_level_then_partner() {
        // Exact sum 0.015 → half-even 0.02; truncated 0.00 + 0.00 + 0.00; two cents to
        // hand out among equal remainders 0.005: level 0 first, then level 1 partner "a".
        let mut r = rows(&[("0.005", 1, "z"), ("0.005", 1, "a"), ("0.005", 0, "m")]);
        round_jointly(&mut r, 2).unwrap();
        assert_eq!(rounded(&r), vec![d("0"), d("0.01"), d("0.01")]);
    }

    #[test]
    fn half_even_total() {
        // 0.125 → 0.12 (even), not 0.13.
        let mut r = rows(&[("0.0625", 0, "a"), ("0.0625", 1, "b")]);
        round_jointly(&mut r, 2).unwrap();
        assert_eq!(rounded(&r), vec![d("0.06"), d("0.06")]);
    }

    #[test]
    fn yen_has_no_minor_unit() {
        let mut r = rows(&[
            ("1949.85", 0, "a"),
            ("194.985", 1, "b"),
            ("97.4925", 2, "c"),
        ]);
        round_jointly(&mut r, 0).unwrap();
        // exact sum 2242.3275 → 2242; truncated 1949 + 194 + 97 = 2240; two yen to the
        // largest remainders 0.985 (b) and 0.85 (a).
        assert_eq!(rounded(&r), vec![d("1950"), d("195"), d("97")]);
    }

    #[test]
    fn negative_rows_round_toward_the_negative_total() {
        let mut r = rows(&[("-0.333333", 0, "a"), ("-0.666667", 1, "b")]);
        round_jointly(&mut r, 2).unwrap();
        assert_eq!(rounded(&r), vec![d("-0.33"), d("-0.67")]);
        assert_eq!(r.iter().map(|r| r.rounded).sum::<Decimal>(), d("-1.00"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn rounded_rows_add_up_to_the_rounded_total(
                mantissas in proptest::collection::vec(0i64..10_000_000_000, 1..12),
                scale in 0u32..10,
                minor in 0u32..4,
                negative in any::<bool>(),
            ) {
                let mut r: Vec<Row> = mantissas.iter().enumerate().map(|(i, m)| Row {
                    exact: Decimal::new(if negative { -m } else { *m }, scale),
                    level: (i % 4) as u8,
                    partner: format!("p{}", i % 3),
                    rounded: Decimal::ZERO,
                }).collect();
                let exact: Decimal = r.iter().map(|r| r.exact).sum();
                round_jointly(&mut r, minor).unwrap();
                let total: Decimal = r.iter().map(|r| r.rounded).sum();
                prop_assert_eq!(total, exact.round_dp_with_strategy(minor, RoundingStrategy::MidpointNearestEven));
                for row in &r {
                    prop_assert!(row.rounded.scale() == minor);
                    // Each row moves less than one unit from its exact amount.
                    prop_assert!((row.rounded - row.exact).abs() < Decimal::new(1, minor));
                    // Never flips sign.
                    prop_assert!(row.rounded.is_zero() || row.rounded.is_sign_negative() == row.exact.is_sign_negative());
                }
            }
        }
    }
}
