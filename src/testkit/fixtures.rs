//! What tests and benches start from, in one place: the program of SPEC §3.3 as the
//! admin API receives it and the variant the unit tests settle against, and builders
//! of conversions, clicks, partners and links with nothing optional set.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::engine::commission::example_plan;
use crate::events::{ClickEvent, ClickStatus, ConversionEvent, ConversionKind, EVENT_VERSION};
use crate::registry::{Link, LinkStatus, Partner, PartnerStatus};

/// The conversion signing secret of every fixture program.
pub const SECRET: &str = "0123456789abcdef-test-secret";

/// The program of SPEC §3.3: last touch, the example plan of §5.5, three currencies.
pub fn program_json() -> Value {
    json!({
        "name": "Acme partners", "currency": "USD", "secret": SECRET,
        "fallback_url": "https://acme.example/", "lookback_days": 30,
        "attribution": {"model": "last_touch"},
        "click_dedup_window_secs": 3600, "max_touches": 32,
        "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
        "commission": example_plan()
    })
}

/// The unit tests' program: the same, with time decay (a half-life of a week) and a
/// single bronze tier at 15 %, so that one touch's share and rate read at a glance.
pub fn unit_program_json() -> Value {
    let mut p = program_json();
    p["attribution"] = json!({"model": "time_decay", "half_life_days": "7"});
    p["commission"] = json!({"tiers": {"bronze": "0.15"}, "default_tier": "bronze"});
    p
}

/// A conversion of program `acme` with nothing optional set: order `o-{id}`, USD, at
/// `at` (occurred and received). Tests set what they need with `..conversion(…)`.
pub fn conversion(
    id: u128,
    kind: ConversionKind,
    amount: &str,
    at: DateTime<Utc>,
) -> ConversionEvent {
    ConversionEvent {
        v: EVENT_VERSION,
        conversion_id: Uuid::from_u128(id),
        program_id: "acme".into(),
        order_id: format!("o-{id}"),
        kind,
        amount: amount.parse().expect("a decimal amount"),
        currency: "USD".into(),
        occurred_at: at,
        received_at: at,
        click_id: None,
        visitor_id: None,
        referral_code: None,
        customer_id: None,
        original_order_id: None,
        registry_version: 0,
        customer_email_sha256: None,
        country: None,
        product_id: None,
        metadata: Default::default(),
        promo_code: None,
    }
}

/// A unique-looking click `id` of visitor `visitor` on alice's link `alice-1` of `acme`.
pub fn click(id: u128, visitor: Uuid, ts: DateTime<Utc>) -> ClickEvent {
    ClickEvent {
        v: EVENT_VERSION,
        click_id: Uuid::from_u128(id),
        ts,
        program_id: "acme".into(),
        partner_id: "alice".into(),
        link_code: "alice-1".into(),
        campaign: None,
        visitor_id: visitor,
        ip_hash: format!("{id:032x}"),
        user_agent: "Mozilla/5.0".into(),
        referer: None,
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        utm_term: None,
        utm_content: None,
        sub_ids: Vec::new(),
        is_bot: false,
        status: ClickStatus::Ok,
        registry_version: 0,
    }
}

/// An active partner of `program` with no tier, parent, name or e-mail.
pub fn partner(program: &str) -> Partner {
    Partner {
        email_sha256: None,
        tier_auto: true,
        tier_history: Vec::new(),
        id: String::new(),
        program_id: program.into(),
        name: None,
        tier: None,
        parent_id: None,
        status: PartnerStatus::Active,
    }
}

/// An active link `code` of `partner` in `program` to the shop, with nothing else set.
pub fn link(code: &str, program: &str, partner: &str) -> Link {
    Link {
        code: code.into(),
        program_id: program.into(),
        partner_id: partner.into(),
        destination: "https://shop.example/".into(),
        campaign: None,
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        utm_term: None,
        utm_content: None,
        sub_ids: Vec::new(),
        status: LinkStatus::Active,
    }
}
