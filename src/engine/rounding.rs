//! Joint rounding of one conversion's ledger rows (SPEC §5.5): the rows are rounded to
//! the currency's minor unit so that they add up exactly to the half-even rounding of
//! their exact sum. Each row is truncated toward zero, then the remaining units go one by
//! one to the largest remainders (ties: lower level first, then partner id).
//! No cent is created or lost.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive, Zero};
use rust_decimal::{Decimal, RoundingStrategy};

use super::{add, Overflow};

/// What the rounding needs of a row: its exact amount and its tie-break key.
pub trait Roundable {
    fn exact(&self) -> Decimal;
    fn level(&self) -> u8;
    fn partner(&self) -> &str;
    fn set_rounded(&mut self, amount: Decimal);
}

/// Rounds `rows` in place to `minor_units` decimal places, jointly, on their decimal
/// exact amounts (callers pass only rows whose decimals are exact: see
/// [`round_exactly`] for the others); nothing is changed when their sum is beyond
/// `Decimal`'s range.
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
            by_remainder.then_with(|| by_rule(rows, a.0, b.0))
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

/// Rounds `rows` like [`round_jointly`], deciding on `exact`, each row's exact amount
/// as a rational, where the decimals only approximate it (a share of 1/3, a refund's
/// R/O): the total, the truncations and every comparison of remainders are exact, so
/// that a tie is a tie and the rule decides it, not the 28th digit.
pub fn round_exactly<R: Roundable>(
    rows: &mut [R],
    exact: &[BigRational],
    minor_units: u32,
) -> Result<(), Overflow> {
    let unit_scale = BigRational::from_integer(BigInt::from(10u32).pow(minor_units));
    let scaled: Vec<BigRational> = exact.iter().map(|x| x * &unit_scale).collect();
    let target = half_even(&scaled.iter().sum());
    let truncated: Vec<BigInt> = scaled.iter().map(|x| x.trunc().to_integer()).collect();
    let remainders: Vec<BigRational> = scaled
        .iter()
        .zip(&truncated)
        .map(|(x, t)| x - BigRational::from_integer(t.clone()))
        .collect();
    let missing = target - truncated.iter().sum::<BigInt>();
    let count = missing.magnitude().to_u64().ok_or(Overflow)?;
    let mut units = truncated;
    let step = missing.signum();
    hand_out(rows, &remainders, missing.is_positive(), count, |i| {
        units[i] += &step
    });
    for (row, units) in rows.iter_mut().zip(units) {
        let units = units.to_i128().ok_or(Overflow)?;
        let amount = Decimal::try_from_i128_with_scale(units, minor_units).map_err(|_| Overflow)?;
        row.set_rounded(amount);
    }
    Ok(())
}

/// Gives `count` missing units to rows, one each, in order: largest remainder in the
/// direction of the missing units first (`positive`: up), ties to the lower level,
/// then the partner id. `count` never exceeds the rows with a remainder (see the module
/// docs), so one pass suffices; cycling only guards against a caller's inconsistent input.
fn hand_out<R: Roundable, K: Ord>(
    rows: &[R],
    remainders: &[K],
    positive: bool,
    count: u64,
    mut give: impl FnMut(usize),
) {
    if count == 0 || rows.is_empty() {
        return;
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        let by_remainder = if positive {
            remainders[b].cmp(&remainders[a])
        } else {
            remainders[a].cmp(&remainders[b])
        };
        by_remainder.then_with(|| by_rule(rows, a, b))
    });
    for k in 0..count {
        give(order[(k % order.len() as u64) as usize]);
    }
}

/// The tie-break between rows of equal remainders: lower level first, then partner id.
fn by_rule<R: Roundable>(rows: &[R], a: usize, b: usize) -> std::cmp::Ordering {
    rows[a]
        .level()
        .cmp(&rows[b].level())
        .then_with(|| rows[a].partner().cmp(rows[b].partner()))
}

/// `x` rounded to an integer, half to even.
fn half_even(x: &BigRational) -> BigInt {
    let floor = x.floor();
    let frac = x - &floor;
    let floor = floor.to_integer();
    let half = BigRational::new(BigInt::from(1), BigInt::from(2));
    match frac.cmp(&half) {
        std::cmp::Ordering::Less => floor,
        std::cmp::Ordering::Greater => floor + 1,
        std::cmp::Ordering::Equal if (&floor % 2u32).is_zero() => floor,
        std::cmp::Ordering::Equal => floor + 1,
    }
}

/// A decimal as an exact rational.
pub fn ratio(d: Decimal) -> BigRational {
    BigRational::new(
        BigInt::from(d.mantissa()),
        BigInt::from(10u32).pow(d.scale()),
    )
}

/// Whether `product`, computed as `a × b` by `Decimal`, is exact: `Decimal` keeps the
/// full scale of a product it can hold and gives up digits (a smaller scale) otherwise.
/// Conservative: a product scaled down though exact (trailing zeros) takes the exact
/// path, with the same result.
pub fn mul_is_exact(a: Decimal, b: Decimal, product: Decimal) -> bool {
    product.scale() == a.scale() + b.scale()
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
