//! Generated hostile input for every parser the edge runs on what it is sent (SPEC §7):
//! arbitrary bytes and arbitrary JSON, shaped around the real field names so that the
//! generator reaches deep into valid-looking bodies. Nothing panics, every refusal is
//! a 4xx naming what is wrong, and whatever is accepted keeps the bounds.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::admin::parse_known;
use super::conversions::{parse_conversion, FIELDS};
use super::redirect::build_location;
use crate::http::strict_json;
use crate::money;
use crate::registry::{Link, LinkEntry, Partner, Program};

/// Keys besides a conversion's own fields ([`FIELDS`]).
const KEYS: &[&str] = &[
    "customer_email_sha256",
    "commission_ids",
    "action",
    "note",
    "up_to",
    "hold_days",
    "min_payout",
    "fraud",
    "review_above",
    "self_referral",
    "min_click_to_conversion_secs",
    "email_sha256",
    "name",
    "secret",
    "fallback_url",
    "lookback_days",
    "attribution",
    "model",
    "half_life_days",
    "first",
    "last",
    "click_dedup_window_secs",
    "max_touches",
    "fx",
    "USD",
    "EUR",
    "JPY",
    "commission",
    "tiers",
    "default_tier",
    "lead_bounty",
    "signup_bounty",
    "recurring",
    "rate",
    "months",
    "volume_bonuses",
    "min_conversions",
    "bonus",
    "overrides",
    "tier",
    "parent_id",
    "status",
    "partner_id",
    "destination",
    "code",
    "campaign",
    "utm_source",
];

const STRINGS: &[&str] = &[
    "acme",
    "sale",
    "lead",
    "signup",
    "recurring",
    "refund",
    "129.99",
    "0",
    "-1",
    "1e25",
    "79228162514264337593543950335",
    "0.00001",
    "",
    "USD",
    "EUR",
    "JPY",
    "KWD",
    "2026-11-20T10:15:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0193a3b2-7c4e-7000-8000-000000000001",
    "https://shop.example/",
    "https://shop.example@evil.com/",
    "last_touch",
    "time_decay",
    "position_based",
    "bronze",
    "active",
    "paused",
    "banned",
    crate::testkit::fixtures::SECRET,
    "a\r\nb",
    "\u{0}",
];

fn key() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = FIELDS.iter().chain(KEYS).copied().collect();
    prop_oneof![
        3 => prop::sample::select(known).prop_map(str::to_string),
        1 => "[a-zA-Z_.]{0,10}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e30f64..1e30).prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.into())),
        "\\PC{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 96, 10, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..12)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn program() -> Program {
    let mut p: Program =
        serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
    p.id = "acme".into();
    p.validate().unwrap();
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn strict_json_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = strict_json(&bytes);
    }

    #[test]
    fn admin_bodies_are_parsed_or_refused_with_a_400(body in json(), bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let text = serde_json::to_vec(&body).unwrap();
        for input in [&text[..], &bytes[..]] {
            for refused in [
                parse_known::<Program>(input).err(),
                parse_known::<Partner>(input).err(),
                parse_known::<Link>(input).err(),
                parse_known::<super::lifecycle::ReviewRequest>(input).err(),
                parse_known::<super::lifecycle::PayoutRequest>(input).err(),
            ].into_iter().flatten() {
                prop_assert_eq!(refused.status.as_u16(), 400);
            }
            // What parses, validates without panicking, within its bounds.
            if let Ok(mut p) = parse_known::<Program>(input) {
                p.id = "acme".into();
                if p.validate().is_ok() {
                    prop_assert!(p.fx.values().all(|r| *r > Decimal::ZERO && *r <= money::max_fx_rate()));
                }
            }
            if let Ok(mut p) = parse_known::<Partner>(input) {
                p.id = "p".into();
                let _ = p.validate();
            }
            if let Ok(l) = parse_known::<Link>(input) {
                let _ = l.validate();
            }
        }
    }

    #[test]
    fn ledger_listings_take_any_query_string(q in "\\PC{0,160}|(program_id|status|limit|cursor|partner_id)=[a-z0-9%=&-]{0,40}") {
        let Ok(pairs) = super::api::query_pairs(&q) else { return Ok(()) };
        match super::lifecycle::filter_of(&pairs) {
            Ok(f) => prop_assert!((1..=crate::ledger::MAX_LIMIT).contains(&f.limit) && !f.program_id.is_empty()),
            Err(e) => {
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert!(e.field.is_some());
            }
        }
    }

    #[test]
    fn conversions_are_parsed_within_bounds_or_refused_naming_a_field(body in json()) {
        let Value::Object(mut item) = body else { return Ok(()) };
        item.insert("program_id".into(), Value::String("acme".into()));
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let program = program();
        match parse_conversion(&item, &program, now) {
            Err(e) => {
                prop_assert_eq!(e.status.as_u16(), 400);
                prop_assert!(e.field.is_some());
            }
            Ok(c) => {
                prop_assert!(!c.amount.is_sign_negative());
                prop_assert!(c.amount.normalize().scale() <= money::AMOUNT_SCALE);
                let rate = program.fx[&c.currency];
                prop_assert!(c.amount * rate <= money::max_settled());
                prop_assert!(c.occurred_at <= now + chrono::Duration::days(1));
                prop_assert!(c.occurred_at >= Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap());
                prop_assert!(!c.order_id.is_empty() && !c.order_id.chars().any(char::is_control));
            }
        }
    }

    #[test]
    fn signatures_take_any_header(header in "\\PC{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = crate::signature::verify(crate::testkit::fixtures::SECRET, Some(&header), &body, 1_700_000_000, 300);
    }

    #[test]
    fn amounts_parse_within_bounds(s in "\\PC{0,30}|[0-9.eE+-]{0,30}") {
        if let Ok(d) = money::parse_amount(&s) {
            prop_assert!(!d.is_sign_negative() && d <= money::max_amount());
        }
    }

    #[test]
    fn nothing_in_the_request_chooses_the_redirect_target(query in "\\PC{0,200}") {
        let link: Link = serde_json::from_value(serde_json::json!({"code": "abc", "program_id": "acme",
            "partner_id": "p", "destination": "https://shop.example/spring?lang=en#top"})).unwrap();
        let entry = LinkEntry::new(link);
        let (location, _) = build_location(&entry, Some(&query), uuid::Uuid::nil());
        prop_assert!(location.starts_with("https://shop.example/spring?"), "{}", location);
        prop_assert!(location.ends_with("#top"), "{}", location);
        prop_assert!(location.bytes().all(|b| b.is_ascii_graphic()), "{}", location);
    }
}
