//! Attribution models (SPEC §5.4): pure functions from a journey's touches to decimal
//! weights that add up to exactly 1.
//!
//! Weights are quantized to [`WEIGHT_SCALE`] decimal places by largest remainder, so the
//! weights stored in ClickHouse (`Decimal(18,12)`) are the very numbers the commission
//! was computed from, and they still add up to exactly 1.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, MathematicalOps};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Decimal places of every attribution weight.
pub const WEIGHT_SCALE: u32 = 12;

/// The `attributions.model` of a conversion credited by its referral code, not by a
/// journey.
pub const REFERRAL_CODE: &str = "referral_code";

/// The `attributions.model` of a conversion credited by its promo code (SPEC §10.3).
pub const PROMO_CODE: &str = "promo_code";

/// Every `attributions.model` there is: each model's [`AttributionModel::name`],
/// [`REFERRAL_CODE`] and [`PROMO_CODE`]. A test keeps it complete.
pub const MODEL_NAMES: [&str; 7] = [
    "first_touch",
    "last_touch",
    "linear",
    "time_decay",
    "position_based",
    REFERRAL_CODE,
    PROMO_CODE,
];

/// One touchpoint of a journey: a unique click of an active partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    pub click_id: Uuid,
    pub partner_id: String,
    pub ts: DateTime<Utc>,
}

/// An attribution model with its parameters, as configured per program.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttributionModel {
    FirstTouch,
    /// The default model.
    #[default]
    LastTouch,
    Linear,
    TimeDecay {
        #[serde(default = "default_half_life")]
        half_life_days: Decimal,
    },
    PositionBased {
        #[serde(default = "default_edge_share")]
        first: Decimal,
        #[serde(default = "default_edge_share")]
        last: Decimal,
    },
}

fn default_half_life() -> Decimal {
    Decimal::from(7)
}

fn default_edge_share() -> Decimal {
    Decimal::new(4, 1)
}

/// Weights of the touches, in the touches' order; empty for an empty journey.
pub type Weights = Vec<Decimal>;

impl AttributionModel {
    /// The model's name as stored in `attributions.model`.
    pub fn name(&self) -> &'static str {
        match self {
            AttributionModel::FirstTouch => "first_touch",
            AttributionModel::LastTouch => "last_touch",
            AttributionModel::Linear => "linear",
            AttributionModel::TimeDecay { .. } => "time_decay",
            AttributionModel::PositionBased { .. } => "position_based",
        }
    }

    /// Checks the parameters; the message names the offending one.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        match self {
            AttributionModel::TimeDecay { half_life_days }
                if *half_life_days <= Decimal::ZERO || *half_life_days > Decimal::from(3650) =>
            {
                return Err(("half_life_days", "must be greater than 0 and at most 3650"));
            }
            AttributionModel::PositionBased { first, last } => {
                if first.is_sign_negative() || last.is_sign_negative() {
                    return Err(("first", "shares must not be negative"));
                }
                if *first + *last > Decimal::ONE {
                    return Err(("last", "first + last must be at most 1"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Weights of `touches` (ordered by `(ts, click_id)`) for a conversion at `conv_at`.
    /// They add up to exactly 1 unless `touches` is empty.
    pub fn weights(&self, touches: &[Touch]) -> Weights {
        let n = touches.len();
        if n == 0 {
            return Vec::new();
        }
        if n == 1 {
            return vec![Decimal::ONE];
        }
        match self {
            AttributionModel::FirstTouch => one_hot(n, 0),
            AttributionModel::LastTouch => one_hot(n, n - 1),
            AttributionModel::Linear => {
                let each = Decimal::ONE / Decimal::from(n as u64);
                quantize(&vec![each; n])
            }
            AttributionModel::TimeDecay { half_life_days } => {
                quantize_atto(&time_decay_raw(touches, *half_life_days))
            }
            AttributionModel::PositionBased { first, last } => {
                if n == 2 {
                    let half = Decimal::new(5, 1);
                    return vec![half, half];
                }
                let middle_total = Decimal::ONE - *first - *last;
                let middle = middle_total / Decimal::from((n - 2) as u64);
                let mut raw = vec![middle; n];
                raw[0] = *first;
                raw[n - 1] = *last;
                quantize(&raw)
            }
        }
    }
}

fn one_hot(n: usize, at: usize) -> Weights {
    let mut w = vec![Decimal::ZERO; n];
    w[at] = Decimal::ONE;
    w
}

/// Fractional bits of the fixed-point arithmetic of time decay.
const Q: u32 = 62;
const ONE_Q: u128 = 1 << Q;

/// `2^(−2^−i)` in Q62 for i = 1..=62: multiplying those of the set bits of a fraction f
/// gives 2^(−f). Computed once with `Decimal` (28 digits), then kept as integers so that
/// every weight is the same on every machine and every replay (float `exp` is not).
fn halving_roots() -> &'static [u64; Q as usize] {
    static TABLE: std::sync::OnceLock<[u64; Q as usize]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u64; Q as usize];
        let scale = Decimal::from(1u64 << 31) * Decimal::from(1u64 << 31);
        for (i, slot) in table.iter_mut().enumerate() {
            // 2^(−2^−(i+1)) = exp(−ln2 / 2^(i+1))
            let exponent = -(LN_2 / Decimal::from(2u64.pow(i as u32 + 1)));
            let root = exponent.exp();
            *slot = u64::try_from((root * scale).round().mantissa()).unwrap_or(1 << Q);
        }
        table
    })
}

/// `2^(−age_ms/half_life_ms)` in Q62.
fn decay_q(age_ms: u64, half_life_ms: u64) -> u128 {
    // x = age / half_life in Q62; ages below 2^40 ms (35 years) keep this in range.
    let x = (u128::from(age_ms.min(1 << 40)) << Q) / u128::from(half_life_ms.max(1));
    let whole = x >> Q;
    if whole >= u128::from(Q) {
        return 0;
    }
    let roots = halving_roots();
    let mut frac = (x & (ONE_Q - 1)) as u64;
    // Both factors stay below 2^63, so each product is one 64×64-bit multiplication
    // (u128 × u128 took three), and only the fraction's set bits cost one: the same
    // products in the same order as bit by bit from the top, so the same result.
    let mut v = 1u64 << Q;
    while frac != 0 {
        let top = 63 - frac.leading_zeros();
        // Bit `top` is worth 2^−(Q−top): the root at index Q−1−top.
        let root = roots[(Q - 1 - top) as usize];
        v = ((u128::from(v) * u128::from(root)) >> Q) as u64;
        frac &= !(1u64 << top);
    }
    u128::from(v) >> whole
}

/// Normalized time-decay shares 2^(−age/half_life), in units of 10^−18. Ages are taken
/// from the newest touch rather than the conversion: the common factor
/// 2^(−(t_conv − t_newest)/h) cancels in the normalization, and no share underflows to
/// zero on long journeys.
fn time_decay_raw(touches: &[Touch], half_life_days: Decimal) -> Vec<u128> {
    // Half lives resolve to the millisecond, like timestamps.
    let mut half_life_ms = (half_life_days * Decimal::from(86_400_000u64)).round();
    half_life_ms.rescale(0);
    let half_life_ms = u64::try_from(half_life_ms.mantissa()).unwrap_or(u64::MAX);
    let newest = touches
        .iter()
        .map(|t| t.ts)
        .max()
        .expect("non-empty journey");
    let shares: Vec<u128> = touches
        .iter()
        .map(|t| {
            decay_q(
                u64::try_from((newest - t.ts).num_milliseconds()).unwrap_or(0),
                half_life_ms,
            )
        })
        .collect();
    let total: u128 = shares.iter().sum::<u128>().max(1);
    shares
        .into_iter()
        .map(|v| {
            // v / total with 18 decimal places: (v << Q) / total ≤ 2^62, × 10^18 < 2^123.
            let w = (v << Q) / total;
            (w * ATTO) >> Q
        })
        .collect()
}

/// Units of 10^−18 in one.
const ATTO: u128 = 1_000_000_000_000_000_000;

/// ln 2 to the 28 digits `Decimal` holds.
const LN_2: Decimal = Decimal::from_parts(2_860_148_159, 2_180_329_217, 375_755_839, false, 28);

/// Rounds raw shares (which add up to 1 up to the last digit of `Decimal`) to
/// [`WEIGHT_SCALE`] places so that the result adds up to exactly 1: truncate each, then
/// hand the remaining units to the largest remainders, earlier touches first on ties.
pub fn quantize(raw: &[Decimal]) -> Weights {
    let unit = Decimal::new(1, WEIGHT_SCALE);
    let mut out: Vec<Decimal> = raw
        .iter()
        .map(|r| r.trunc_with_scale(WEIGHT_SCALE))
        .collect();
    let assigned: Decimal = out.iter().copied().sum();
    let mut missing = ((Decimal::ONE - assigned) / unit).round();
    if missing <= Decimal::ZERO {
        return out;
    }
    let mut order: Vec<usize> = (0..raw.len()).collect();
    // Stable sort keeps earlier touches first among equal remainders.
    order.sort_by(|&a, &b| (raw[b] - out[b]).cmp(&(raw[a] - out[a])));
    let mut i = 0;
    while missing > Decimal::ZERO {
        out[order[i % order.len()]] += unit;
        missing -= Decimal::ONE;
        i += 1;
    }
    out
}

/// [`quantize`] for shares in units of 10^−18 that add up to at most 1 (and fall short
/// of it by a few units, as normalized shares do), in integers:
/// the same truncation, the same remainders in the same stable order, the same
/// weights at the same scale. Time decay's shares took a third of its attribution
/// time through `Decimal` comparisons (measured).
fn quantize_atto(raw: &[u128]) -> Weights {
    const PER_UNIT: u128 = ATTO / 10u128.pow(WEIGHT_SCALE);
    let mut units: Vec<u128> = raw.iter().map(|r| r / PER_UNIT).collect();
    let assigned: u128 = units.iter().sum();
    let missing = (ATTO / PER_UNIT).saturating_sub(assigned) as usize;
    if missing > 0 {
        let mut order: Vec<usize> = (0..raw.len()).collect();
        // Stable: earlier touches first among equal remainders.
        order.sort_by(|&a, &b| (raw[b] % PER_UNIT).cmp(&(raw[a] % PER_UNIT)));
        for i in 0..missing {
            units[order[i % order.len()]] += 1;
        }
    }
    units
        .into_iter()
        .map(|u| Decimal::from_i128_with_scale(u as i128, WEIGHT_SCALE))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_names_hold_every_model() {
        // Adding a model breaks this match: add its name to MODEL_NAMES too.
        fn named(m: &AttributionModel) -> bool {
            match m {
                AttributionModel::FirstTouch
                | AttributionModel::LastTouch
                | AttributionModel::Linear
                | AttributionModel::TimeDecay { .. }
                | AttributionModel::PositionBased { .. } => MODEL_NAMES.contains(&m.name()),
            }
        }
        for name in &MODEL_NAMES[..5] {
            let m: AttributionModel =
                serde_json::from_value(serde_json::json!({ "model": name })).unwrap();
            assert!(named(&m) && m.name() == *name);
        }
    }

    use super::*;
    use chrono::{Duration, TimeZone};
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
    }

    fn touches(days_before_conv: &[i64]) -> Vec<Touch> {
        days_before_conv
            .iter()
            .enumerate()
            .map(|(i, days)| Touch {
                click_id: Uuid::from_u128(i as u128 + 1),
                partner_id: format!("p{i}"),
                ts: t0() - Duration::days(*days),
            })
            .collect()
    }

    fn sum(w: &[Decimal]) -> Decimal {
        w.iter().copied().sum()
    }

    #[test]
    fn single_touch_gets_everything_in_every_model() {
        for m in all_models() {
            assert_eq!(
                m.weights(&touches(&[3])),
                vec![Decimal::ONE],
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn empty_journey_has_no_weights() {
        for m in all_models() {
            assert!(m.weights(&[]).is_empty());
        }
    }

    #[test]
    fn first_and_last_touch() {
        let j = touches(&[9, 5, 1]);
        assert_eq!(
            AttributionModel::FirstTouch.weights(&j),
            vec![d("1"), d("0"), d("0")]
        );
        assert_eq!(
            AttributionModel::LastTouch.weights(&j),
            vec![d("0"), d("0"), d("1")]
        );
    }

    #[test]
    fn linear_thirds_add_up_exactly() {
        // 1/3 = 0.333333333333 (12 places); three of them leave 1e-12 for the
        // earliest touch among the equal remainders.
        let w = AttributionModel::Linear.weights(&touches(&[3, 2, 1]));
        assert_eq!(
            w,
            vec![
                d("0.333333333334"),
                d("0.333333333333"),
                d("0.333333333333")
            ]
        );
        assert_eq!(sum(&w), Decimal::ONE);
        let w = AttributionModel::Linear.weights(&touches(&[2, 1]));
        assert_eq!(w, vec![d("0.5"), d("0.5")]);
    }

    #[test]
    fn time_decay_halves_per_half_life() {
        // Ages 14, 7 and 0 days with a 7-day half life: shares 1/4, 1/2, 1 → 1/7, 2/7, 4/7.
        let m = AttributionModel::TimeDecay {
            half_life_days: d("7"),
        };
        let w = m.weights(&touches(&[14, 7, 0]));
        assert_eq!(sum(&w), Decimal::ONE);
        assert_eq!(w[0], d("0.142857142857"));
        assert_eq!(w[1], d("0.285714285714"));
        assert_eq!(w[2], d("0.571428571429"));
        // Equal timestamps share equally.
        let w = m.weights(&touches(&[2, 2]));
        assert_eq!(w, vec![d("0.5"), d("0.5")]);
    }

    #[test]
    fn time_decay_fractional_half_lives() {
        // Ages 1 and 0 days, half life 2 days: shares 2^-0.5 and 1.
        // 2^-0.5 / (1 + 2^-0.5) = 0.414213562373095...
        let m = AttributionModel::TimeDecay {
            half_life_days: d("2"),
        };
        let w = m.weights(&touches(&[1, 0]));
        assert_eq!(w, vec![d("0.414213562373"), d("0.585786437627")]);
    }

    #[test]
    fn ln2_constant() {
        assert_eq!(LN_2.to_string(), "0.6931471805599453094172321215");
        // Whole half lives are exact; half a half life is 1/sqrt(2) to ~1e-17.
        assert_eq!(decay_q(3_000, 1_000), ONE_Q / 8);
        assert_eq!(decay_q(200_000, 1_000), 0);
        let root_half = decay_q(500, 1_000);
        let expected = 3_260_954_456_333_195_553u128; // 2^62 / sqrt(2), rounded
        assert!(root_half.abs_diff(expected) < 16, "{root_half}");
    }

    /// The bit-by-bit product `decay_q` was first written as: the oracle its faster
    /// form must match exactly (weights, and so money, must not move by a unit).
    fn decay_q_bitwise(age_ms: u64, half_life_ms: u64) -> u128 {
        let x = (u128::from(age_ms.min(1 << 40)) << Q) / u128::from(half_life_ms.max(1));
        let whole = x >> Q;
        if whole >= u128::from(Q) {
            return 0;
        }
        let frac = x & (ONE_Q - 1);
        let mut v = ONE_Q;
        for (bit, root) in halving_roots().iter().enumerate() {
            if frac & (1 << (Q - 1 - bit as u32)) != 0 {
                v = (v * u128::from(*root)) >> Q;
            }
        }
        v >> whole
    }

    #[test]
    fn decay_matches_the_bitwise_product() {
        let cases = [
            (0, 1),
            (1, 1),
            (1, 3),
            (500, 1_000),
            (999, 1_000),
            (1, u64::MAX),
            (u64::MAX, 1),
            (1 << 40, (1 << 40) + 1),
            ((1 << 40) - 1, 1 << 40),
            (604_800_000 - 1, 604_800_000),
            (7 * 86_400_000 + 12_345, 86_400_000 / 3),
        ];
        for (age, half) in cases {
            assert_eq!(
                decay_q(age, half),
                decay_q_bitwise(age, half),
                "{age} {half}"
            );
        }
        // A fraction whose top bits are all on: many roots, taken in order.
        let near = (1u64 << 40) - 1;
        assert_eq!(decay_q(near - 1, near), decay_q_bitwise(near - 1, near));
    }

    /// [`quantize_atto`] against [`quantize`] of the same shares as decimals: equal
    /// weights, equal scales.
    fn assert_quantized_alike(raw: &[u128]) {
        let decimals: Vec<Decimal> = raw
            .iter()
            .map(|r| Decimal::from_i128_with_scale(*r as i128, 18))
            .collect();
        let (fast, slow) = (quantize_atto(raw), quantize(&decimals));
        assert_eq!(fast, slow, "{raw:?}");
        let scales = |w: &[Decimal]| w.iter().map(|x| x.scale()).collect::<Vec<_>>();
        assert_eq!(scales(&fast), scales(&slow), "{raw:?}");
    }

    #[test]
    fn integer_quantization_matches_decimal_quantization() {
        // Sevenths: the largest remainders get the missing units; thirds and halves:
        // equal remainders, the earlier share first.
        assert_quantized_alike(&[
            142_857_142_857_142_857,
            285_714_285_714_285_714,
            571_428_571_428_571_428,
        ]);
        assert_quantized_alike(&[333_333_333_333_333_333; 3]);
        assert_quantized_alike(&[500_000_000_000_000_000; 2]);
        assert_quantized_alike(&[ATTO, 0]);
        assert_quantized_alike(&[ATTO - 1, 0, 0]);
        assert_quantized_alike(&[ATTO / 4 - 7, ATTO / 4 - 5, ATTO / 4, ATTO / 4 + 1]);
    }

    #[test]
    fn position_based() {
        let m = AttributionModel::PositionBased {
            first: d("0.4"),
            last: d("0.4"),
        };
        assert_eq!(m.weights(&touches(&[2, 1])), vec![d("0.5"), d("0.5")]);
        assert_eq!(
            m.weights(&touches(&[3, 2, 1])),
            vec![d("0.4"), d("0.2"), d("0.4")]
        );
        let w = m.weights(&touches(&[5, 4, 3, 2, 1]));
        assert_eq!(
            w,
            vec![
                d("0.4"),
                d("0.066666666667"),
                d("0.066666666667"),
                d("0.066666666666"),
                d("0.4")
            ]
        );
        assert_eq!(sum(&w), Decimal::ONE);
        let custom = AttributionModel::PositionBased {
            first: d("0.3"),
            last: d("0.5"),
        };
        assert_eq!(
            custom.weights(&touches(&[4, 3, 2, 1])),
            vec![d("0.3"), d("0.1"), d("0.1"), d("0.5")]
        );
    }

    #[test]
    fn many_touches_add_up() {
        let days: Vec<i64> = (0..32).rev().collect();
        for m in all_models() {
            let w = m.weights(&touches(&days));
            assert_eq!(w.len(), 32);
            assert_eq!(sum(&w), Decimal::ONE, "{}", m.name());
            assert!(w.iter().all(|x| !x.is_sign_negative()));
        }
    }

    #[test]
    fn parameters_are_validated() {
        assert!(AttributionModel::TimeDecay {
            half_life_days: d("0")
        }
        .validate()
        .is_err());
        assert!(AttributionModel::PositionBased {
            first: d("0.6"),
            last: d("0.5")
        }
        .validate()
        .is_err());
        assert!(AttributionModel::PositionBased {
            first: d("0.5"),
            last: d("0.5")
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn serde_shape_matches_the_api() {
        let m: AttributionModel =
            serde_json::from_str(r#"{"model":"time_decay","half_life_days":"7"}"#).unwrap();
        assert_eq!(
            m,
            AttributionModel::TimeDecay {
                half_life_days: d("7")
            }
        );
        let m: AttributionModel = serde_json::from_str(r#"{"model":"position_based"}"#).unwrap();
        assert_eq!(
            m,
            AttributionModel::PositionBased {
                first: d("0.4"),
                last: d("0.4")
            }
        );
        assert!(serde_json::from_str::<AttributionModel>(r#"{"model":"u_shaped"}"#).is_err());
    }

    pub(crate) fn all_models() -> Vec<AttributionModel> {
        vec![
            AttributionModel::FirstTouch,
            AttributionModel::LastTouch,
            AttributionModel::Linear,
            AttributionModel::TimeDecay {
                half_life_days: Decimal::from(7),
            },
            AttributionModel::PositionBased {
                first: d("0.4"),
                last: d("0.4"),
            },
        ]
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decay_is_the_bitwise_product(age in any::<u64>(), half in 1u64..(1 << 45)) {
                prop_assert_eq!(decay_q(age, half), decay_q_bitwise(age, half));
                let age = age % (400 * 86_400_000);
                prop_assert_eq!(decay_q(age, half), decay_q_bitwise(age, half));
            }

            #[test]
            fn weights_add_up_to_one(
                ages in proptest::collection::vec(0i64..(90 * 86_400_000), 1..64),
                half_life_ms in 1i64..(30 * 86_400_000),
            ) {
                let mut sorted = ages.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                let j: Vec<Touch> = sorted.iter().enumerate().map(|(i, age)| Touch {
                    click_id: Uuid::from_u128(i as u128),
                    partner_id: "p".into(),
                    ts: t0() - Duration::milliseconds(*age),
                }).collect();
                let mut models = all_models();
                models.push(AttributionModel::TimeDecay {
                    half_life_days: Decimal::from(half_life_ms) / Decimal::from(86_400_000),
                });
                assert_quantized_alike(&time_decay_raw(
                    &j,
                    Decimal::from(half_life_ms) / Decimal::from(86_400_000),
                ));
                for m in models {
                    let w = m.weights(&j);
                    prop_assert_eq!(w.len(), j.len());
                    prop_assert_eq!(sum(&w), Decimal::ONE);
                    prop_assert!(w.iter().all(|x| !x.is_sign_negative() && x.scale() <= WEIGHT_SCALE));
                }
            }
        }
    }
}
