//! Reward rules (SPEC §10.1): conditional rates and bounties that take the place of
//! the tier rate or the plan's bounty for the partners they match. Checked whole when
//! the program is written; chosen per credited partner when a conversion is settled.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, Facts};
use crate::events::ConversionKind;
use crate::money;

/// Most rules a plan may have.
pub const MAX_RULES: usize = 50;

/// What a rule pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pays {
    /// A rate of the settlement amount, in place of the tier rate (sales) or the
    /// recurring rate (recurring payments).
    Rate(Decimal),
    /// An amount in place of the lead or signup bounty.
    Bounty(Decimal),
}

impl Pays {
    fn value(self) -> Decimal {
        match self {
            Pays::Rate(d) | Pays::Bounty(d) => d,
        }
    }
}

/// One conditional reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct RewardRule {
    pub name: String,
    pub when: Condition,
    pub kinds: Vec<ConversionKind>,
    pub pays: Pays,
    /// Only within this many months of the customer's first attributed sale.
    pub months: Option<u32>,
    /// The reason its rows carry, `rule {name}`, made once.
    pub reason: String,
}

/// A rule as the API sends and shows it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    when: serde_json::Value,
    kinds: Vec<ConversionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bounty: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    months: Option<u32>,
}

impl From<RewardRule> for RawRule {
    fn from(r: RewardRule) -> RawRule {
        let (rate, bounty) = match r.pays {
            Pays::Rate(d) => (Some(d), None),
            Pays::Bounty(d) => (None, Some(d)),
        };
        RawRule {
            name: r.name,
            when: r.when.to_json(),
            kinds: r.kinds,
            rate,
            bounty,
            months: r.months,
        }
    }
}

impl TryFrom<RawRule> for RewardRule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<RewardRule, String> {
        let name = raw.name.clone();
        let fail = |m: String| format!("rule `{name}`: {m}");
        let name_ok = (1..=64).contains(&raw.name.len())
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(format!(
                "rule names are 1-64 of A-Z a-z 0-9 _ . - (got `{name}`)"
            ));
        }
        let when = Condition::parse(&raw.when).map_err(|(path, m)| {
            fail(if path.is_empty() {
                format!("when: {m}")
            } else {
                format!("when.{path}: {m}")
            })
        })?;
        let pays = pays_of(&raw).map_err(fail)?;
        if raw.months.is_some_and(|m| !(1..=120).contains(&m)) {
            return Err(fail("months must be 1 to 120".into()));
        }
        Ok(RewardRule {
            reason: format!("rule {}", raw.name),
            name: raw.name,
            when,
            kinds: raw.kinds,
            pays,
            months: raw.months,
        })
    }
}

/// What a rule pays, checked against its kinds and the ledger's bounds.
fn pays_of(raw: &RawRule) -> Result<Pays, String> {
    let mut kinds = raw.kinds.clone();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() || kinds.len() != raw.kinds.len() {
        return Err("kinds must list each kind it pays for once, at least one".into());
    }
    let rated = |k: &ConversionKind| matches!(k, ConversionKind::Sale | ConversionKind::Recurring);
    let bountied = |k: &ConversionKind| matches!(k, ConversionKind::Lead | ConversionKind::Signup);
    match (raw.rate, raw.bounty) {
        (Some(rate), None) => {
            if !kinds.iter().all(rated) {
                return Err(
                    "a rate pays sale and recurring kinds; leads and signups take a bounty".into(),
                );
            }
            if rate.is_sign_negative() || rate > Decimal::ONE || rate.scale() > 12 {
                return Err("rate must be from 0 to 1, with at most 12 decimals".into());
            }
            Ok(Pays::Rate(rate))
        }
        (None, Some(bounty)) => {
            if !kinds.iter().all(bountied) {
                return Err(
                    "a bounty pays lead and signup kinds; sales and recurring take a rate".into(),
                );
            }
            if bounty.is_sign_negative()
                || bounty.scale() > money::AMOUNT_SCALE
                || bounty > money::max_bounty()
            {
                return Err("bounty must be from 0 to 1000000000, with at most 4 decimals".into());
            }
            Ok(Pays::Bounty(bounty))
        }
        _ => Err("give exactly one of rate and bounty".into()),
    }
}

/// Checks a plan's list of rules: their number and unique names (each rule checked
/// itself when it was read).
pub fn validate(rules: &[RewardRule]) -> Result<(), (String, &'static str)> {
    if rules.len() > MAX_RULES {
        return Err(("rules".into(), "at most 50 rules"));
    }
    for (i, r) in rules.iter().enumerate() {
        if rules[..i].iter().any(|earlier| earlier.name == r.name) {
            return Err((format!("rules[{i}].name"), "rule names must be unique"));
        }
    }
    Ok(())
}

/// Whether any rule reads the customer's history (its sale number, its months since
/// the first sale, or a `months` limit).
pub fn read_customer(rules: &[RewardRule]) -> bool {
    rules
        .iter()
        .any(|r| r.months.is_some() || r.when.reads_customer())
}

/// The rule that pays most among those matching a `kind` conversion for the partner
/// `facts` describe (ties: the first listed), with its index; `None` when none matches.
pub fn best<'r>(
    rules: &'r [RewardRule],
    kind: ConversionKind,
    facts: &Facts<'_>,
) -> Option<(usize, &'r RewardRule)> {
    let mut chosen: Option<(usize, &RewardRule)> = None;
    for (i, rule) in rules.iter().enumerate() {
        let in_term = match rule.months {
            None => true,
            Some(m) => facts.months_since_first_sale.is_some_and(|since| since < m),
        };
        if !rule.kinds.contains(&kind) || !in_term || !rule.when.holds(facts) {
            continue;
        }
        if chosen.is_none_or(|(_, c)| rule.pays.value() > c.pays.value()) {
            chosen = Some((i, rule));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: serde_json::Value) -> Result<Vec<RewardRule>, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn spec_rules() -> Vec<RewardRule> {
        rules(json!([
            {"name": "eu-enterprise", "when": {"all": [
                {"field": "country", "op": "in", "value": ["DE", "FR"]},
                {"field": "product_id", "op": "eq", "value": "enterprise"}]},
             "kinds": ["sale"], "rate": "0.35"},
            {"name": "big-deal", "when": {"any": [{"field": "amount", "op": "gte", "value": "1000"}]},
             "kinds": ["sale"], "rate": "0.30", "months": 3},
            {"name": "gold-leads", "when": {"all": [{"field": "partner.tier", "op": "eq", "value": "gold"}]},
             "kinds": ["lead"], "bounty": "8.00"}]))
        .unwrap()
    }

    fn facts() -> Facts<'static> {
        Facts {
            country: Some("DE"),
            product_id: Some("enterprise"),
            amount: Decimal::from(2000),
            currency: "USD",
            partner_tier: Some("gold"),
            partner_id: "alice",
            sale_number: Some(1),
            months_since_first_sale: Some(0),
            ..Facts::default()
        }
    }

    #[test]
    fn the_highest_paying_match_wins() {
        let r = spec_rules();
        let name = |f: &Facts, k| best(&r, k, f).map(|(_, r)| r.name.as_str());
        assert_eq!(name(&facts(), ConversionKind::Sale), Some("eu-enterprise"));
        let us = Facts {
            country: Some("US"),
            ..facts()
        };
        assert_eq!(name(&us, ConversionKind::Sale), Some("big-deal"));
        // Past its three months, big-deal no longer applies; without a customer, neither.
        let later = Facts {
            months_since_first_sale: Some(3),
            ..us
        };
        assert_eq!(name(&later, ConversionKind::Sale), None);
        let anonymous = Facts {
            months_since_first_sale: None,
            ..us
        };
        assert_eq!(name(&anonymous, ConversionKind::Sale), None);
        assert_eq!(name(&facts(), ConversionKind::Lead), Some("gold-leads"));
        assert_eq!(name(&facts(), ConversionKind::Recurring), None);
        assert!(read_customer(&r));
    }

    #[test]
    fn ties_go_to_the_first_listed() {
        let r = rules(json!([
            {"name": "a", "when": {"field": "amount", "op": "gt", "value": "0"}, "kinds": ["sale"], "rate": "0.2"},
            {"name": "b", "when": {"field": "amount", "op": "gt", "value": "0"}, "kinds": ["sale"], "rate": "0.20"},
            {"name": "c", "when": {"field": "amount", "op": "gt", "value": "0"}, "kinds": ["sale"], "rate": "0.1"}]))
        .unwrap();
        assert_eq!(
            best(&r, ConversionKind::Sale, &facts()).unwrap().1.name,
            "a"
        );
        assert!(!read_customer(&r));
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let bad = |rule: serde_json::Value| rules(json!([rule])).unwrap_err();
        let e = bad(
            json!({"name": "geo", "when": {"field": "land", "op": "eq", "value": "DE"},
                           "kinds": ["sale"], "rate": "0.3"}),
        );
        assert!(
            e.contains("rule `geo`: when.field: unknown field `land`"),
            "{e}"
        );
        let e = bad(
            json!({"name": "geo", "when": {"all": [{"field": "country", "op": "eq", "value": "DE"}]},
                           "kinds": ["lead"], "rate": "0.3"}),
        );
        assert!(e.contains("rule `geo`: a rate pays sale"), "{e}");
        let e = bad(
            json!({"name": "geo", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["sale"], "rate": "1.5"}),
        );
        assert!(e.contains("rule `geo`: rate must be from 0 to 1"), "{e}");
        let e = bad(
            json!({"name": "geo", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["lead"], "bounty": "-1"}),
        );
        assert!(e.contains("bounty must be"), "{e}");
        let e = bad(
            json!({"name": "geo", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["sale"], "rate": "0.3", "bounty": "1"}),
        );
        assert!(e.contains("exactly one of rate and bounty"), "{e}");
        let e = bad(
            json!({"name": "geo", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["refund"], "rate": "0.3"}),
        );
        assert!(e.contains("rule `geo`"), "{e}");
        let e = bad(
            json!({"name": "geo", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["sale"], "rate": "0.3", "months": 0}),
        );
        assert!(e.contains("months must be 1 to 120"), "{e}");
        let e = bad(
            json!({"name": "a b", "when": {"field": "country", "op": "eq", "value": "DE"},
                           "kinds": ["sale"], "rate": "0.3"}),
        );
        assert!(e.contains("rule names"), "{e}");
        let twice: Vec<RewardRule> = (0..2).map(|_| spec_rules()[0].clone()).collect();
        assert_eq!(validate(&twice).unwrap_err().0, "rules[1].name");
        let many: Vec<RewardRule> = (0..51)
            .map(|i| RewardRule {
                name: format!("r{i}"),
                ..spec_rules()[0].clone()
            })
            .collect();
        assert_eq!(validate(&many).unwrap_err().0, "rules");
    }

    #[test]
    fn rules_write_back_as_sent() {
        let sent = json!([{"name": "big-deal", "when": {"any": [{"field": "amount", "op": "gte", "value": "1000"}]},
                           "kinds": ["sale", "recurring"], "rate": "0.30", "months": 3}]);
        let r = rules(sent.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), sent);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A rule testing the amount and the country, for sales or leads.
        fn rule(
            i: usize,
            (min, country, sale, pay, months): (u32, u8, bool, u32, Option<u32>),
        ) -> RewardRule {
            let countries = ["DE", "FR", "US"];
            let mut v = json!({
                "name": format!("r{i}"),
                "when": {"all": [{"field": "amount", "op": "gte", "value": min.to_string()},
                                 {"field": "country", "op": "ne", "value": countries[country as usize % 3]}]},
                "kinds": [if sale { "sale" } else { "lead" }],
            });
            let pay = Decimal::new(i64::from(pay % 101), 2).to_string();
            v[if sale { "rate" } else { "bounty" }] = json!(pay);
            if let Some(m) = months {
                v["months"] = json!(m);
            }
            serde_json::from_value(v).unwrap()
        }

        proptest! {
            #[test]
            fn the_chosen_rule_is_the_first_of_the_best_paid_matches(
                specs in proptest::collection::vec(
                    (0u32..2000, 0u8..3, any::<bool>(), 0u32..200, proptest::option::of(1u32..6)),
                    0..12),
                amount in 0u32..2500,
                country in 0u8..3,
                months in proptest::option::of(0u32..8),
                sale in any::<bool>(),
            ) {
                let rules: Vec<RewardRule> = specs.into_iter().enumerate().map(|(i, s)| rule(i, s)).collect();
                let countries = ["DE", "FR", "US"];
                let facts = Facts {
                    country: Some(countries[country as usize]),
                    amount: Decimal::from(amount),
                    currency: "USD",
                    partner_id: "p",
                    months_since_first_sale: months,
                    ..Facts::default()
                };
                let kind = if sale { ConversionKind::Sale } else { ConversionKind::Lead };
                // The oracle: every rule that matches, the highest pay, the first of them.
                let matching: Vec<&RewardRule> = rules
                    .iter()
                    .filter(|r| r.kinds.contains(&kind))
                    .filter(|r| r.months.is_none_or(|m| months.is_some_and(|since| since < m)))
                    .filter(|r| r.when.holds(&facts))
                    .collect();
                let top = matching.iter().map(|r| r.pays.value()).max();
                let expected = matching.iter().find(|r| Some(r.pays.value()) == top).map(|r| &r.name);
                let chosen = best(&rules, kind, &facts).map(|(_, r)| r);
                prop_assert_eq!(chosen.map(|r| &r.name), expected);
                if let Some(c) = chosen {
                    prop_assert!(matching.iter().all(|r| r.pays.value() <= c.pays.value()));
                }
            }
        }
    }
}
