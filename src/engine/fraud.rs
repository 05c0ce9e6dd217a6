//! Fraud rules (SPEC §5.8), each optional per program. A rule never drops an event: a
//! flagged click is stored `suspicious` (neither unique nor a touchpoint), a flagged
//! conversion is settled as usual and its commissions are held for review, with the
//! rules' names as the reason. Every check is a pure function of event times and what
//! came before in intake order, like the rest of settlement.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::events::ConversionKind;

/// A program's fraud rules; every one is off unless set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudRules {
    /// `click_spam`: clicks from one ip_hash on one partner's links within an hour past
    /// this many are suspicious.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clicks_per_ip_hour: Option<u32>,
    /// `fast_conversion`: a sale, lead or signup whose last touch is less than this many
    /// seconds before its `occurred_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_click_to_conversion_secs: Option<u32>,
    /// `self_referral`: the customer's e-mail hash equals the credited partner's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_referral: bool,
    /// `review_above`: a sale whose settlement amount exceeds this (program currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_above: Option<Decimal>,
    /// `refund_rate`: a partner whose refunded share of the last 30 days' sales exceeds
    /// this fraction has its new commissions held. The share counts sales: the orders
    /// first refunded in the window over the sales credited in it, both in intake order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_rate: Option<Decimal>,
}

/// The rules, by the names flags, reasons and metrics carry. Declared in the order of
/// their names: a held row's reason lists its rules sorted, as it always has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    ClickSpam,
    FastConversion,
    RefundRate,
    ReviewAbove,
    SelfReferral,
}

/// What the conversion rules look at in a settled conversion that earns commissions.
pub struct Settled<'a> {
    pub kind: ConversionKind,
    pub occurred_ms: i64,
    /// The journey's last touch (ms), when it had one.
    pub last_touch_ms: Option<i64>,
    pub settled_amount: Decimal,
    pub customer_email_sha256: Option<&'a str>,
    /// The directly credited partners, each with its e-mail hash when it has one.
    pub partners: Vec<(&'a str, Option<&'a str>)>,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::ClickSpam,
        Rule::FastConversion,
        Rule::RefundRate,
        Rule::ReviewAbove,
        Rule::SelfReferral,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ClickSpam => "click_spam",
            Rule::FastConversion => "fast_conversion",
            Rule::SelfReferral => "self_referral",
            Rule::ReviewAbove => "review_above",
            Rule::RefundRate => "refund_rate",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The window of `click_spam` and of `refund_rate`'s sales, in ms.
pub const CLICK_SPAM_WINDOW_MS: i64 = 3_600_000;
pub const REFUND_RATE_WINDOW_MS: i64 = 30 * 86_400_000;

impl FraudRules {
    /// Checks the bounds of every rule; the error names the field under `fraud`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self
            .max_clicks_per_ip_hour
            .is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            return Err(("max_clicks_per_ip_hour", "must be 1-1000000"));
        }
        if self
            .min_click_to_conversion_secs
            .is_some_and(|s| !(1..=30 * 86_400).contains(&s))
        {
            return Err((
                "min_click_to_conversion_secs",
                "must be 1-2592000 (30 days)",
            ));
        }
        if self
            .review_above
            .is_some_and(|v| v <= Decimal::ZERO || v > crate::money::max_settled() || v.scale() > 4)
        {
            return Err((
                "review_above",
                "must be greater than 0 and at most 10000000000000, with at most 4 decimals",
            ));
        }
        if self
            .refund_rate
            .is_some_and(|r| r < Decimal::ZERO || r >= Decimal::ONE || r.scale() > 6)
        {
            return Err((
                "refund_rate",
                "must be at least 0 and below 1, with at most 6 decimals",
            ));
        }
        Ok(())
    }

    /// `click_spam`: is a click suspicious when `earlier` clicks from its ip_hash on its
    /// partner's links came within the hour before it?
    pub fn click_spam(&self, earlier: u64) -> bool {
        self.max_clicks_per_ip_hour
            .is_some_and(|max| earlier >= u64::from(max))
    }

    /// `fast_conversion`: the last touch (ms) came less than the minimum before the
    /// conversion occurred.
    pub fn fast_conversion(&self, last_touch_ms: Option<i64>, occurred_ms: i64) -> bool {
        match (self.min_click_to_conversion_secs, last_touch_ms) {
            (Some(min), Some(touch)) => occurred_ms.saturating_sub(touch) < i64::from(min) * 1000,
            _ => false,
        }
    }

    /// `self_referral`: the customer's e-mail hash is one of the credited partners'.
    pub fn self_referral<'a>(
        &self,
        customer: Option<&str>,
        partners: impl IntoIterator<Item = Option<&'a str>>,
    ) -> bool {
        self.self_referral
            && customer.is_some_and(|c| partners.into_iter().flatten().any(|p| p == c))
    }

    /// `review_above`: the sale's settlement amount exceeds the threshold.
    pub fn review_above(&self, settled_amount: Decimal) -> bool {
        self.review_above.is_some_and(|v| settled_amount > v)
    }

    /// `refund_rate`: the sales refunded over the sales, in the window, exceed the rate.
    /// No sales, no rate.
    pub fn refund_rate(&self, sold: u64, refunded: u64) -> bool {
        match self.refund_rate {
            Some(rate) if sold > 0 => Decimal::from(refunded) > Decimal::from(sold) * rate,
            _ => false,
        }
    }
}

impl FraudRules {
    /// The conversion rules a settled conversion trips, sorted. `refund_rate(p)` answers
    /// whether partner `p` is over the program's refund rate (it reads history, which the
    /// caller holds as of the conversion's mark).
    pub fn flags(&self, c: &Settled<'_>, refund_rate: impl Fn(&str) -> bool) -> Vec<Rule> {
        let mut out = Vec::new();
        if c.kind.is_journey_kind() && self.fast_conversion(c.last_touch_ms, c.occurred_ms) {
            out.push(Rule::FastConversion);
        }
        if self.refund_rate.is_some() && c.partners.iter().any(|(p, _)| refund_rate(p)) {
            out.push(Rule::RefundRate);
        }
        if c.kind == ConversionKind::Sale && self.review_above(c.settled_amount) {
            out.push(Rule::ReviewAbove);
        }
        if self.self_referral(c.customer_email_sha256, c.partners.iter().map(|(_, e)| *e)) {
            out.push(Rule::SelfReferral);
        }
        out
    }
}

/// A lower-case hex SHA-256 (`customer_email_sha256`, a partner's `email_sha256`).
pub fn valid_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn rules_are_off_unless_set() {
        let off = FraudRules::default();
        assert!(!off.click_spam(u64::MAX));
        assert!(!off.fast_conversion(Some(0), 0));
        assert!(!off.self_referral(Some("a"), [Some("a")]));
        assert!(!off.review_above(d("1e12")));
        assert!(!off.refund_rate(1, 1));
    }

    #[test]
    fn each_rule_at_its_edge() {
        let rules = FraudRules {
            max_clicks_per_ip_hour: Some(3),
            min_click_to_conversion_secs: Some(10),
            self_referral: true,
            review_above: Some(d("1000")),
            refund_rate: Some(d("0.5")),
        };
        rules.validate().unwrap();
        // Three clicks are allowed; the fourth within the hour is suspicious.
        assert!(!rules.click_spam(2));
        assert!(rules.click_spam(3));
        assert!(rules.fast_conversion(Some(0), 9_999));
        assert!(!rules.fast_conversion(Some(0), 10_000));
        assert!(!rules.fast_conversion(None, 0));
        assert!(rules.self_referral(Some("ab"), [None, Some("ab")]));
        assert!(!rules.self_referral(None, [Some("ab")]));
        assert!(!rules.self_referral(Some("ab"), [Some("cd")]));
        assert!(!rules.review_above(d("1000")));
        assert!(rules.review_above(d("1000.01")));
        assert!(!rules.refund_rate(10, 5));
        assert!(rules.refund_rate(10, 6));
        assert!(rules.refund_rate(1, 2));
        assert!(!rules.refund_rate(0, 5));
    }

    #[test]
    fn bounds_name_the_field() {
        let bad = [
            FraudRules {
                max_clicks_per_ip_hour: Some(0),
                ..Default::default()
            },
            FraudRules {
                min_click_to_conversion_secs: Some(0),
                ..Default::default()
            },
            FraudRules {
                review_above: Some(d("-1")),
                ..Default::default()
            },
            FraudRules {
                review_above: Some(d("1e20")),
                ..Default::default()
            },
            FraudRules {
                refund_rate: Some(d("1")),
                ..Default::default()
            },
        ];
        let fields: Vec<_> = bad.iter().map(|r| r.validate().unwrap_err().0).collect();
        assert_eq!(
            fields,
            [
                "max_clicks_per_ip_hour",
                "min_click_to_conversion_secs",
                "review_above",
                "review_above",
                "refund_rate"
            ]
        );
        assert!(valid_sha256_hex(&"a".repeat(64)));
        assert!(!valid_sha256_hex(&"A".repeat(64)));
        assert!(!valid_sha256_hex("ab"));
    }

    #[test]
    fn names_round_trip() {
        for r in Rule::ALL {
            assert_eq!(Rule::parse(r.as_str()), Some(r));
            // Stored standings carry the names: serde must write exactly them.
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), r);
        }
        // Sorted by name, the order of a held row's reason.
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        let sorted: Vec<&str> = {
            let mut all = Rule::ALL;
            all.sort();
            all.iter().map(|r| r.as_str()).collect()
        };
        assert_eq!(sorted, names);
    }

    #[test]
    fn a_settled_conversion_trips_each_rule_it_meets() {
        let rules = FraudRules {
            min_click_to_conversion_secs: Some(10),
            self_referral: true,
            review_above: Some(Decimal::from(100)),
            refund_rate: Some(Decimal::new(5, 1)),
            ..FraudRules::default()
        };
        let me = "a".repeat(64);
        let settled = Settled {
            kind: ConversionKind::Sale,
            occurred_ms: 5_000,
            last_touch_ms: Some(0),
            settled_amount: Decimal::from(101),
            customer_email_sha256: Some(&me),
            partners: vec![("p1", None), ("p2", Some(&me))],
        };
        assert_eq!(
            rules.flags(&settled, |p| p == "p1"),
            [
                Rule::FastConversion,
                Rule::RefundRate,
                Rule::ReviewAbove,
                Rule::SelfReferral
            ]
        );
        let calm = Settled {
            kind: ConversionKind::Lead,
            last_touch_ms: Some(-10_000),
            customer_email_sha256: None,
            ..settled
        };
        assert!(rules.flags(&calm, |_| false).is_empty());
    }
}
