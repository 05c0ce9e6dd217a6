//! Money: ISO 4217 currencies with their minor units, and exact decimal amounts.
//! Everything here is `rust_decimal::Decimal`; no floating point touches money.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Most decimal places an amount may carry at intake and in ClickHouse (`Decimal(18,4)`).
pub const AMOUNT_SCALE: u32 = 4;

/// Largest absolute amount that fits ClickHouse `Decimal(18,4)`.
pub fn max_amount() -> Decimal {
    // 10^14 - 10^-4: 18 digits in all, 4 after the point.
    Decimal::new(999_999_999_999_999_999, AMOUNT_SCALE)
}

/// Largest settlement amount (amount × fx, in the program currency) a conversion may
/// have. With every rate at most 1 and at most 5 override levels, a conversion's ledger
/// rows stay below 2 × 6 × 10¹³ = 1.2 × 10¹⁵ in sum, well inside `Decimal(18,4)`
/// (9.2 × 10¹⁴ per row; a row is at most 2 × 10¹³).
pub fn max_settled() -> Decimal {
    Decimal::new(10_000_000_000_000, 0)
}

/// Largest FX rate a program may set (program-currency units per unit).
pub fn max_fx_rate() -> Decimal {
    Decimal::new(1_000_000, 0)
}

/// Largest lead or signup bounty.
pub fn max_bounty() -> Decimal {
    Decimal::new(1_000_000_000, 0)
}

/// ISO 4217 codes with their minor units (decimal places). Codes with 2 are the
/// default and not listed one by one except for the common ones, so that the table is
/// readable; `minor_units` answers for every code in [`KNOWN`].
const ZERO_DECIMALS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DECIMALS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const FOUR_DECIMALS: &[&str] = &["CLF", "UYW"];

/// Every ISO 4217 currency code touchline accepts.
pub const KNOWN: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP",
    "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF",
    "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD",
    "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR",
    "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB",
    "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD",
    "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYI",
    "UYU", "UYW", "UZS", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR",
    "ZMW", "ZWL",
];

/// Is `code` an ISO 4217 currency touchline knows?
pub fn is_known_currency(code: &str) -> bool {
    KNOWN.binary_search(&code).is_ok()
}

/// Decimal places of the currency's minor unit (2 for USD and EUR, 0 for JPY, 3 for KWD).
pub fn minor_units(code: &str) -> u32 {
    if ZERO_DECIMALS.contains(&code) {
        0
    } else if THREE_DECIMALS.contains(&code) {
        3
    } else if FOUR_DECIMALS.contains(&code) {
        4
    } else {
        2
    }
}

/// Why a string is not an acceptable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal string such as \"129.99\"")]
    NotDecimal,
    #[error("must not be negative")]
    Negative,
    #[error("has more than {AMOUNT_SCALE} decimal places")]
    TooPrecise,
    #[error("is too large")]
    TooLarge,
}

/// `amount` rounded half to even to `units` decimals and printed at that scale
/// ("12.50"): a money figure at a currency's minor units.
pub fn at_minor_units(amount: Decimal, units: u32) -> Decimal {
    let mut r =
        amount.round_dp_with_strategy(units, rust_decimal::RoundingStrategy::MidpointNearestEven);
    r.rescale(units);
    r
}

/// Parses an intake amount: plain decimal notation, ≥ 0, at most 4 decimal places.
pub fn parse_amount(s: &str) -> Result<Decimal, AmountError> {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && s.bytes().filter(|&b| b == b'.').count() <= 1
        && !s.starts_with('.')
        && !s.ends_with('.');
    if !plain {
        return Err(AmountError::NotDecimal);
    }
    let d = Decimal::from_str(s).map_err(|_| AmountError::NotDecimal)?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(AmountError::Negative);
    }
    if d.scale() > AMOUNT_SCALE && d.normalize().scale() > AMOUNT_SCALE {
        return Err(AmountError::TooPrecise);
    }
    if d > max_amount() {
        return Err(AmountError::TooLarge);
    }
    // "-0" parses as negative zero; store a plain zero.
    Ok(if d.is_zero() { Decimal::ZERO } else { d })
}

/// A decimal as an integer scaled by 10^4: the RowBinary form of `Decimal(18,4)`.
/// `None` when the value does not fit.
pub fn to_scaled_i64(d: Decimal) -> Option<i64> {
    let mut r = d.round_dp_with_strategy(
        AMOUNT_SCALE,
        rust_decimal::RoundingStrategy::MidpointNearestEven,
    );
    r.rescale(AMOUNT_SCALE);
    i64::try_from(r.mantissa()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn known_is_sorted_for_binary_search() {
        let mut sorted = KNOWN.to_vec();
        sorted.sort();
        assert_eq!(sorted, KNOWN);
        for c in ZERO_DECIMALS
            .iter()
            .chain(THREE_DECIMALS)
            .chain(FOUR_DECIMALS)
        {
            assert!(is_known_currency(c), "{c}");
        }
    }

    #[test]
    fn minor_units_of_common_currencies() {
        assert_eq!(minor_units("USD"), 2);
        assert_eq!(minor_units("EUR"), 2);
        assert_eq!(minor_units("JPY"), 0);
        assert_eq!(minor_units("KWD"), 3);
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("129.99"), Ok(d("129.99")));
        assert_eq!(parse_amount("0"), Ok(Decimal::ZERO));
        assert_eq!(parse_amount("1.2345"), Ok(d("1.2345")));
        assert_eq!(parse_amount("1.23450"), Ok(d("1.2345")));
        assert_eq!(parse_amount("1.23456"), Err(AmountError::TooPrecise));
        assert_eq!(parse_amount("-1"), Err(AmountError::Negative));
        assert_eq!(parse_amount("1e3"), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount(""), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("1."), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("NaN"), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("100000000000000"), Err(AmountError::TooLarge));
    }

    #[test]
    fn scaled() {
        assert_eq!(to_scaled_i64(d("129.99")), Some(1_299_900));
        assert_eq!(to_scaled_i64(d("-0.0001")), Some(-1));
        assert_eq!(to_scaled_i64(d("100000000000000000000")), None);
    }
}
