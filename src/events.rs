//! Events on the bus (SPEC §4): JSON objects with `"v": 1`, described by the JSON Schema
//! files in `schemas/events/`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Version of the event format written by this build.
pub const EVENT_VERSION: u8 = 1;

/// What became of a click at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClickStatus {
    /// Redirected to the link's destination.
    Ok,
    /// The link or its partner is paused: redirected to the program's fallback.
    Paused,
    /// The partner is banned: redirected to the program's fallback.
    Banned,
}

impl ClickStatus {
    /// The lowercase name used in events, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ClickStatus::Ok => "ok",
            ClickStatus::Paused => "paused",
            ClickStatus::Banned => "banned",
        }
    }
}

/// A visit of a referral link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickEvent {
    pub v: u8,
    pub click_id: Uuid,
    #[serde(with = "rfc3339_millis")]
    pub ts: DateTime<Utc>,
    pub program_id: String,
    pub partner_id: String,
    pub link_code: String,
    pub campaign: Option<String>,
    pub visitor_id: Uuid,
    pub ip_hash: String,
    pub user_agent: String,
    pub referer: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    /// The link's sub ids (SPEC §9.1), for the partner's own reports. Added in v1
    /// additively: absent in older events, and left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_ids: Vec<String>,
    pub is_bot: bool,
    pub status: ClickStatus,
    /// The registry version the edge answered with (SPEC §5.3): the pipeline decides
    /// this click with a registry at least this new. Absent in older events: 0.
    #[serde(default)]
    pub registry_version: u64,
}

/// The kind of a conversion a merchant reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversionKind {
    Sale,
    Lead,
    Signup,
    Recurring,
    Refund,
}

impl ConversionKind {
    /// Every kind, in a stable order.
    pub const ALL: [ConversionKind; 5] = [
        ConversionKind::Sale,
        ConversionKind::Lead,
        ConversionKind::Signup,
        ConversionKind::Recurring,
        ConversionKind::Refund,
    ];

    /// The lowercase name used in the API, events and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionKind::Sale => "sale",
            ConversionKind::Lead => "lead",
            ConversionKind::Signup => "signup",
            ConversionKind::Recurring => "recurring",
            ConversionKind::Refund => "refund",
        }
    }

    /// Parses the API name of a kind.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds credited through a visitor's journey (and counted for volume bonuses).
    pub fn is_journey_kind(self) -> bool {
        matches!(
            self,
            ConversionKind::Sale | ConversionKind::Lead | ConversionKind::Signup
        )
    }
}

/// A conversion accepted at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionEvent {
    pub v: u8,
    pub conversion_id: Uuid,
    pub program_id: String,
    pub order_id: String,
    pub kind: ConversionKind,
    pub amount: Decimal,
    pub currency: String,
    #[serde(with = "rfc3339_millis")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "rfc3339_millis")]
    pub received_at: DateTime<Utc>,
    pub click_id: Option<Uuid>,
    pub visitor_id: Option<Uuid>,
    pub referral_code: Option<String>,
    pub customer_id: Option<String>,
    pub original_order_id: Option<String>,
    /// The registry version the edge accepted this conversion with (SPEC §5.3).
    #[serde(default)]
    pub registry_version: u64,
    /// Hex SHA-256 of the customer's lower-cased e-mail, for the self-referral rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email_sha256: Option<String>,
    /// ISO 3166-1 alpha-2, upper case (reward rules, SPEC §10.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// At most 16 string keys and values of at most 64 bytes each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// A promo code of the program, as the merchant sent it (SPEC §10.3; `sale`,
    /// `lead` and `signup` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promo_code: Option<String>,
}

impl ConversionEvent {
    /// The bus key: events of one visitor land on one partition; without a visitor the
    /// most specific key the event has, so that related events still meet.
    pub fn partition_key(&self) -> String {
        if let Some(v) = self.visitor_id {
            return v.to_string();
        }
        if let Some(c) = self.click_id {
            return c.to_string();
        }
        match (&self.customer_id, &self.original_order_id) {
            (Some(c), _) => format!("{}:c:{c}", self.program_id),
            (None, Some(o)) => format!("{}:o:{o}", self.program_id),
            _ => format!("{}:o:{}", self.program_id, self.order_id),
        }
    }
}

/// Truncates a time to whole milliseconds, the resolution of every event timestamp.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-20T10:15:00.000Z`.
pub mod rfc3339_millis {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// [`rfc3339_millis`] for optional times: `null` or absent is `None`.
pub mod rfc3339_millis_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => rfc3339_millis::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn conversion_round_trips_with_decimal_string_and_millis() {
        let json = r#"{"v":1,"conversion_id":"0193a3b2-7c4e-7000-8000-000000000001","program_id":"acme","order_id":"INV-1","kind":"sale","amount":"129.99","currency":"EUR","occurred_at":"2026-11-20T10:15:00.000Z","received_at":"2026-11-20T10:15:01.250Z","click_id":null,"visitor_id":null,"referral_code":null,"customer_id":"c-42","original_order_id":null,"registry_version":7}"#;
        let e: ConversionEvent = serde_json::from_str(json).unwrap();
        assert_eq!(e.amount, Decimal::from_str("129.99").unwrap());
        assert_eq!(e.kind, ConversionKind::Sale);
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"v":1,"bogus":1}"#;
        assert!(serde_json::from_str::<ClickEvent>(json).is_err());
    }

    /// The JSON Schema files list exactly the fields the events serialize.
    #[test]
    fn schemas_match_the_events() {
        fn fields(v: &serde_json::Value) -> Vec<String> {
            let mut f: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            f.sort();
            f
        }
        fn schema(name: &str) -> serde_json::Value {
            let path = format!("{}/schemas/events/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        }
        let click: ClickEvent = serde_json::from_value(serde_json::json!({
            "v": 1, "click_id": "0193a3b2-7c4e-7000-8000-000000000001", "ts": "2026-11-20T10:15:00.000Z",
            "program_id": "acme", "partner_id": "p", "link_code": "abc", "campaign": null,
            "visitor_id": "0193a3b2-7c4e-4000-8000-000000000001", "ip_hash": "0123456789abcdef0123456789abcdef",
            "user_agent": "ua", "referer": null, "utm_source": null, "utm_medium": null, "utm_campaign": null,
            "utm_term": null, "utm_content": null, "sub_ids": ["newsletter"], "is_bot": false,
            "status": "ok", "registry_version": 3
        }))
        .unwrap();
        let conv: ConversionEvent = serde_json::from_str(r#"{"v":1,"conversion_id":"0193a3b2-7c4e-7000-8000-000000000001","program_id":"acme","order_id":"INV-1","kind":"sale","amount":"129.99","currency":"EUR","occurred_at":"2026-11-20T10:15:00.000Z","received_at":"2026-11-20T10:15:01.250Z","click_id":null,"visitor_id":null,"referral_code":null,"customer_id":null,"original_order_id":null,"registry_version":3,"customer_email_sha256":"5f4dcc3b5aa765d61d8327deb882cf995f4dcc3b5aa765d61d8327deb882cf99","country":"DE","product_id":"enterprise","metadata":{"plan":"pro"},"promo_code":"BOB10"}"#).unwrap();
        for (name, event) in [
            ("click.schema.json", serde_json::to_value(&click).unwrap()),
            (
                "conversion.schema.json",
                serde_json::to_value(&conv).unwrap(),
            ),
        ] {
            let s = schema(name);
            let mut required: Vec<String> = s["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            required.sort();
            // Optional fields are left out when absent.
            let mut present = fields(&event);
            let optional = [
                "customer_email_sha256",
                "sub_ids",
                "country",
                "product_id",
                "metadata",
                "promo_code",
            ];
            present.retain(|f| !optional.contains(&f.as_str()));
            assert_eq!(required, present, "{name} required");
            assert_eq!(
                fields(&s["properties"]),
                fields(&event),
                "{name} properties"
            );
        }
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in ConversionKind::ALL {
            assert_eq!(ConversionKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ConversionKind::parse("Sale"), None);
    }
}
