//! Stripe's amounts are integers in the currency's smallest unit, by Stripe's table of
//! decimals, which is not always ISO 4217's: ISK and HUF are two-decimal in Stripe's
//! API, MGA zero-decimal.

use rust_decimal::Decimal;

/// Currencies Stripe counts in whole units.
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
    "XAF", "XOF", "XPF",
];

/// Currencies Stripe counts in thousandths.
const THREE_DECIMAL: &[&str] = &["BHD", "JOD", "KWD", "OMR", "TND"];

/// Decimal places of Stripe's integer amounts in `currency` (upper case).
pub fn minor_exponent(currency: &str) -> u32 {
    if ZERO_DECIMAL.contains(&currency) {
        0
    } else if THREE_DECIMAL.contains(&currency) {
        3
    } else {
        2
    }
}

/// The exact amount of `minor` units of `currency` (upper case): no float on the way.
pub fn decimal_of_minor(minor: i64, currency: &str) -> Decimal {
    Decimal::new(minor, minor_exponent(currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_per_currency() {
        assert_eq!(decimal_of_minor(2999, "USD").to_string(), "29.99");
        assert_eq!(decimal_of_minor(1, "EUR").to_string(), "0.01");
        assert_eq!(decimal_of_minor(5000, "JPY").to_string(), "5000");
        assert_eq!(decimal_of_minor(1234, "KWD").to_string(), "1.234");
        // Two-decimal in Stripe's API although ISO 4217 gives ISK none.
        assert_eq!(decimal_of_minor(10000, "ISK").to_string(), "100.00");
        assert_eq!(decimal_of_minor(0, "USD"), Decimal::ZERO);
        assert_eq!(
            decimal_of_minor(i64::MAX, "USD").to_string(),
            "92233720368547758.07"
        );
    }
}
