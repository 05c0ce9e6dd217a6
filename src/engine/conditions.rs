//! The `when` of a reward rule (SPEC §10.1): tests of a conversion's fields joined by
//! `all` / `any`, parsed once when the program is written (every error names its path)
//! and evaluated per credited partner without allocating.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::money;

/// Deepest nesting of `all` / `any`.
pub const MAX_DEPTH: usize = 3;
/// Most conditions in one `all` / `any`, and most values of one `in` / `not_in`.
pub const MAX_ITEMS: usize = 32;
pub const MAX_VALUES: usize = 100;
/// Longest text value (country codes, product ids, metadata, tiers, partner ids).
pub const MAX_TEXT: usize = 64;
/// Largest value of the counting fields.
const MAX_COUNT: i64 = 1_000_000;

/// A field a test reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Country,
    ProductId,
    /// The settlement amount (program currency).
    Amount,
    /// The currency the conversion was sent in.
    Currency,
    Metadata(String),
    PartnerTier,
    PartnerId,
    /// 1 for the customer's first attributed sale.
    SaleNumber,
    MonthsSinceFirstSale,
}

const FIELD_NAMES: &str = "country, product_id, amount, currency, metadata.{key}, partner.tier, \
     partner.id, customer.sale_number, months_since_first_sale";

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "country" => Field::Country,
            "product_id" => Field::ProductId,
            "amount" => Field::Amount,
            "currency" => Field::Currency,
            "partner.tier" => Field::PartnerTier,
            "partner.id" => Field::PartnerId,
            "customer.sale_number" => Field::SaleNumber,
            "months_since_first_sale" => Field::MonthsSinceFirstSale,
            _ => {
                let key = s.strip_prefix("metadata.")?;
                if key.is_empty() || key.len() > MAX_TEXT {
                    return None;
                }
                Field::Metadata(key.to_string())
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Field::Country => "country".into(),
            Field::ProductId => "product_id".into(),
            Field::Amount => "amount".into(),
            Field::Currency => "currency".into(),
            Field::Metadata(k) => format!("metadata.{k}"),
            Field::PartnerTier => "partner.tier".into(),
            Field::PartnerId => "partner.id".into(),
            Field::SaleNumber => "customer.sale_number".into(),
            Field::MonthsSinceFirstSale => "months_since_first_sale".into(),
        }
    }

    fn is_number(&self) -> bool {
        matches!(
            self,
            Field::Amount | Field::SaleNumber | Field::MonthsSinceFirstSale
        )
    }

    /// Whether reading it needs the customer's history.
    fn is_customer(&self) -> bool {
        matches!(self, Field::SaleNumber | Field::MonthsSinceFirstSale)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Gte,
    Lte,
    Gt,
    Lt,
}

impl Op {
    const ALL: [(Op, &'static str); 8] = [
        (Op::Eq, "eq"),
        (Op::Ne, "ne"),
        (Op::In, "in"),
        (Op::NotIn, "not_in"),
        (Op::Gte, "gte"),
        (Op::Lte, "lte"),
        (Op::Gt, "gt"),
        (Op::Lt, "lt"),
    ];

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.iter().find(|(_, n)| *n == s).map(|(op, _)| *op)
    }

    fn name(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("", |p| p.1)
    }

    fn is_list(self) -> bool {
        matches!(self, Op::In | Op::NotIn)
    }

    fn is_order(self) -> bool {
        matches!(self, Op::Gte | Op::Lte | Op::Gt | Op::Lt)
    }
}

/// What a test compares with.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Texts(Vec<String>),
    Numbers(Vec<Decimal>),
}

/// One test: `field op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    field: Field,
    op: Op,
    operand: Operand,
    /// The value as it was sent, written back unchanged.
    raw: Value,
}

/// A `when`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Test(Test),
}

/// What a test can read of one conversion for one credited partner. A field the
/// conversion does not carry is `None`, and every test of it is false.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub country: Option<&'a str>,
    pub product_id: Option<&'a str>,
    pub amount: Decimal,
    pub currency: &'a str,
    pub metadata: Option<&'a BTreeMap<String, String>>,
    pub partner_tier: Option<&'a str>,
    pub partner_id: &'a str,
    pub sale_number: Option<u64>,
    pub months_since_first_sale: Option<u32>,
}

impl Facts<'_> {
    fn text(&self, field: &Field) -> Option<&str> {
        match field {
            Field::Country => self.country,
            Field::ProductId => self.product_id,
            Field::Currency => Some(self.currency),
            Field::Metadata(k) => self.metadata?.get(k).map(String::as_str),
            Field::PartnerTier => self.partner_tier,
            Field::PartnerId => Some(self.partner_id),
            _ => None,
        }
    }

    fn number(&self, field: &Field) -> Option<Decimal> {
        match field {
            Field::Amount => Some(self.amount),
            Field::SaleNumber => self.sale_number.map(Decimal::from),
            Field::MonthsSinceFirstSale => self.months_since_first_sale.map(Decimal::from),
            _ => None,
        }
    }
}

impl Condition {
    /// Whether the condition holds for `facts`.
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        match self {
            Condition::All(items) => items.iter().all(|c| c.holds(facts)),
            Condition::Any(items) => items.iter().any(|c| c.holds(facts)),
            Condition::Test(t) => t.holds(facts),
        }
    }

    /// Whether any test reads the customer's history.
    pub fn reads_customer(&self) -> bool {
        match self {
            Condition::All(items) | Condition::Any(items) => {
                items.iter().any(Condition::reads_customer)
            }
            Condition::Test(t) => t.field.is_customer(),
        }
    }

    /// Parses a `when`; the error is the path under it and what is wrong there.
    pub fn parse(v: &Value) -> Result<Condition, (String, String)> {
        parse_at(v, 1)
    }

    /// The condition as it was sent.
    pub fn to_json(&self) -> Value {
        match self {
            Condition::All(items) => {
                json!({"all": items.iter().map(Self::to_json).collect::<Vec<_>>()})
            }
            Condition::Any(items) => {
                json!({"any": items.iter().map(Self::to_json).collect::<Vec<_>>()})
            }
            Condition::Test(t) => {
                json!({"field": t.field.name(), "op": t.op.name(), "value": t.raw})
            }
        }
    }
}

impl Test {
    fn holds(&self, facts: &Facts<'_>) -> bool {
        match &self.operand {
            Operand::Texts(values) => {
                let Some(v) = facts.text(&self.field) else {
                    return false;
                };
                let eq = |x: &String| {
                    // Country codes are matched whatever their case.
                    if self.field == Field::Country {
                        x.eq_ignore_ascii_case(v)
                    } else {
                        x == v
                    }
                };
                match self.op {
                    Op::Eq | Op::In => values.iter().any(eq),
                    Op::Ne | Op::NotIn => !values.iter().any(eq),
                    _ => false,
                }
            }
            Operand::Numbers(values) => {
                let Some(v) = facts.number(&self.field) else {
                    return false;
                };
                let x = values[0];
                match self.op {
                    Op::Eq | Op::In => values.contains(&v),
                    Op::Ne | Op::NotIn => !values.contains(&v),
                    Op::Gte => v >= x,
                    Op::Lte => v <= x,
                    Op::Gt => v > x,
                    Op::Lt => v < x,
                }
            }
        }
    }
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, (String, String)> {
    Err((path.to_string(), message.into()))
}

fn parse_at(v: &Value, depth: usize) -> Result<Condition, (String, String)> {
    let Some(obj) = v.as_object() else {
        return err(
            "",
            "must be an object: {\"all\": [...]}, {\"any\": [...]} or a test",
        );
    };
    for group in ["all", "any"] {
        let Some(items) = obj.get(group) else {
            continue;
        };
        if obj.len() != 1 {
            return err("", format!("`{group}` stands alone in its object"));
        }
        return parse_group(group, items, depth);
    }
    parse_test(obj).map(Condition::Test)
}

fn parse_group(group: &str, items: &Value, depth: usize) -> Result<Condition, (String, String)> {
    if depth > MAX_DEPTH {
        return err(group, format!("all/any nest at most {MAX_DEPTH} deep"));
    }
    let Some(items) = items.as_array() else {
        return err(group, "must be an array of conditions");
    };
    if items.is_empty() || items.len() > MAX_ITEMS {
        return err(group, format!("must hold 1 to {MAX_ITEMS} conditions"));
    }
    let parsed = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_at(item, depth + 1).map_err(|(path, m)| {
                let at = format!("{group}[{i}]");
                (
                    if path.is_empty() {
                        at
                    } else {
                        format!("{at}.{path}")
                    },
                    m,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if group == "all" {
        Condition::All(parsed)
    } else {
        Condition::Any(parsed)
    })
}

fn parse_test(obj: &Map<String, Value>) -> Result<Test, (String, String)> {
    if let Some(k) = obj
        .keys()
        .find(|k| !["field", "op", "value"].contains(&k.as_str()))
    {
        return err(k, "unknown key; a test is {\"field\", \"op\", \"value\"}");
    }
    let field = match obj.get("field") {
        Some(Value::String(s)) => Field::parse(s).ok_or_else(|| {
            (
                "field".to_string(),
                format!("unknown field `{s}`; one of {FIELD_NAMES}"),
            )
        })?,
        _ => return err("field", format!("is required: one of {FIELD_NAMES}")),
    };
    let names: Vec<&str> = Op::ALL.iter().map(|p| p.1).collect();
    let op = match obj.get("op") {
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| {
            (
                "op".to_string(),
                format!("unknown op `{s}`; one of {}", names.join(", ")),
            )
        })?,
        _ => return err("op", format!("is required: one of {}", names.join(", "))),
    };
    if op.is_order() && !field.is_number() {
        return err(
            "op",
            format!(
                "`{}` compares numbers; `{}` is text (use eq, ne, in, not_in)",
                op.name(),
                field.name()
            ),
        );
    }
    let raw = obj.get("value").cloned().unwrap_or(Value::Null);
    let values = values_of(&raw, op)?;
    let operand = if field.is_number() {
        Operand::Numbers(
            values
                .iter()
                .map(|v| number(&field, v))
                .collect::<Result<_, _>>()?,
        )
    } else {
        Operand::Texts(
            values
                .iter()
                .map(|v| text(&field, v))
                .collect::<Result<_, _>>()?,
        )
    };
    Ok(Test {
        field,
        op,
        operand,
        raw,
    })
}

/// The values of a test: a list for `in` / `not_in`, one value otherwise.
fn values_of(raw: &Value, op: Op) -> Result<Vec<&Value>, (String, String)> {
    match (raw, op.is_list()) {
        (Value::Array(items), true) if !items.is_empty() && items.len() <= MAX_VALUES => {
            Ok(items.iter().collect())
        }
        (_, true) => err(
            "value",
            format!("`{}` takes an array of 1 to {MAX_VALUES} values", op.name()),
        ),
        (Value::Array(_) | Value::Object(_) | Value::Null, false) => {
            err("value", format!("`{}` takes one value", op.name()))
        }
        (v, false) => Ok(vec![v]),
    }
}

fn text(field: &Field, v: &Value) -> Result<String, (String, String)> {
    let Some(s) = v.as_str() else {
        return err("value", format!("`{}` compares with strings", field.name()));
    };
    if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return err(
            "value",
            format!("strings are 1 to {MAX_TEXT} bytes, no control characters"),
        );
    }
    if *field == Field::Country && !(s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic())) {
        return err(
            "value",
            "a country is an ISO 3166-1 alpha-2 code such as \"DE\"",
        );
    }
    Ok(s.to_string())
}

fn number(field: &Field, v: &Value) -> Result<Decimal, (String, String)> {
    let parsed = match v {
        Value::String(s) => money::parse_amount(s).ok(),
        Value::Number(n) => n.as_i64().map(Decimal::from),
        _ => None,
    };
    if *field == Field::Amount {
        return match parsed {
            Some(d) if d >= Decimal::ZERO && d <= money::max_settled() => Ok(d),
            _ => err(
                "value",
                "an amount is a decimal string such as \"1000\", from 0 to 10000000000000 with at most 4 decimals",
            ),
        };
    }
    match parsed {
        Some(d) if d.fract().is_zero() && d >= Decimal::ZERO && d <= Decimal::from(MAX_COUNT) => {
            Ok(d)
        }
        _ => err(
            "value",
            format!("`{}` is a whole number from 0 to {MAX_COUNT}", field.name()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Condition, (String, String)> {
        Condition::parse(&v)
    }

    fn facts() -> Facts<'static> {
        Facts {
            country: Some("DE"),
            product_id: Some("enterprise"),
            amount: Decimal::from(1200),
            currency: "EUR",
            partner_tier: Some("gold"),
            partner_id: "alice",
            sale_number: Some(1),
            months_since_first_sale: Some(0),
            ..Facts::default()
        }
    }

    #[test]
    fn tests_join_with_all_and_any() {
        let c = parse(json!({"all": [
            {"field": "country", "op": "in", "value": ["DE", "FR"]},
            {"any": [
                {"field": "product_id", "op": "eq", "value": "enterprise"},
                {"field": "amount", "op": "gte", "value": "5000"}]}]}))
        .unwrap();
        assert!(c.holds(&facts()));
        let fr_small = Facts {
            country: Some("fr"),
            product_id: Some("starter"),
            ..facts()
        };
        assert!(!c.holds(&fr_small));
        let big = Facts {
            amount: Decimal::from(5000),
            ..fr_small
        };
        assert!(c.holds(&big));
        assert!(!c.reads_customer());
    }

    #[test]
    fn every_op_compares_as_named() {
        let holds = |field: &str, op: &str, value: Value| {
            parse(json!({"field": field, "op": op, "value": value}))
                .unwrap()
                .holds(&facts())
        };
        assert!(holds("amount", "gt", json!("1199.9999")));
        assert!(!holds("amount", "gt", json!("1200")));
        assert!(holds("amount", "gte", json!("1200")));
        assert!(holds("amount", "lte", json!("1200")));
        assert!(!holds("amount", "lt", json!("1200")));
        assert!(holds("amount", "eq", json!("1200.00")));
        assert!(holds("amount", "ne", json!("1")));
        assert!(holds("customer.sale_number", "eq", json!(1)));
        assert!(holds("months_since_first_sale", "lt", json!("3")));
        assert!(holds("partner.tier", "ne", json!("silver")));
        assert!(holds("partner.id", "not_in", json!(["bob", "carol"])));
        assert!(!holds("currency", "in", json!(["USD"])));
    }

    #[test]
    fn a_field_the_conversion_lacks_fails_every_test() {
        let bare = Facts {
            country: None,
            sale_number: None,
            ..facts()
        };
        for (field, op, value) in [
            ("country", "ne", json!("US")),
            ("country", "not_in", json!(["US"])),
            ("metadata.plan", "eq", json!("pro")),
            ("customer.sale_number", "gte", json!(0)),
        ] {
            let c = parse(json!({"field": field, "op": op, "value": value})).unwrap();
            assert!(!c.holds(&bare), "{field} {op}");
        }
        let meta = BTreeMap::from([("plan".to_string(), "pro".to_string())]);
        let c = parse(json!({"field": "metadata.plan", "op": "eq", "value": "pro"})).unwrap();
        assert!(c.holds(&Facts {
            metadata: Some(&meta),
            ..facts()
        }));
    }

    #[test]
    fn bad_conditions_name_their_path() {
        let path = |v: Value| parse(v).unwrap_err().0;
        assert_eq!(
            path(json!({"all": [{"field": "colour", "op": "eq", "value": "x"}]})),
            "all[0].field"
        );
        assert_eq!(
            path(json!({"any": [{"field": "amount", "op": "like", "value": "1"}]})),
            "any[0].op"
        );
        assert_eq!(
            path(json!({"field": "country", "op": "gte", "value": "DE"})),
            "op"
        );
        assert_eq!(
            path(json!({"field": "country", "op": "eq", "value": "Germany"})),
            "value"
        );
        assert_eq!(
            path(json!({"field": "amount", "op": "gte", "value": "-1"})),
            "value"
        );
        assert_eq!(
            path(json!({"field": "amount", "op": "gte", "value": 1.5})),
            "value"
        );
        assert_eq!(
            path(json!({"field": "customer.sale_number", "op": "eq", "value": "1.5"})),
            "value"
        );
        assert_eq!(
            path(json!({"field": "country", "op": "in", "value": "DE"})),
            "value"
        );
        assert_eq!(
            path(json!({"field": "country", "op": "eq", "value": "DE", "x": 1})),
            "x"
        );
        assert_eq!(path(json!({"all": []})), "all");
        assert_eq!(path(json!({"all": [], "any": []})), "");
        let deep = json!({"all": [{"any": [{"all": [{"any": [
            {"field": "amount", "op": "gt", "value": "1"}]}]}]}]});
        assert_eq!(path(deep), "all[0].any[0].all[0].any");
        let three =
            json!({"all": [{"any": [{"all": [{"field": "amount", "op": "gt", "value": "1"}]}]}]});
        assert!(parse(three).is_ok());
    }

    #[test]
    fn a_condition_writes_back_as_sent() {
        let sent = json!({"all": [
            {"field": "country", "op": "in", "value": ["DE", "FR"]},
            {"any": [{"field": "amount", "op": "gte", "value": "1000"},
                     {"field": "customer.sale_number", "op": "eq", "value": 1}]}]});
        let c = parse(sent.clone()).unwrap();
        assert_eq!(c.to_json(), sent);
        assert!(c.reads_customer());
    }
}
