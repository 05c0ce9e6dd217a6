//! Registry entities: programs, partners, links and webhook endpoints, with their
//! validation.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::caps;
use crate::engine::fraud::valid_sha256_hex;
use crate::engine::tiers::{HeldTier, TierRules};
use crate::engine::{AttributionModel, CommissionPlan, FraudRules};
use crate::money;

/// A field-level validation failure: `field` is the JSON path in the request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Ids of programs and partners: 1–64 of `[A-Za-z0-9_.-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        // `.` and `..` are path segments, not names.
        && !id.bytes().all(|b| b == b'.')
}

/// Link codes: 3–64 of `[A-Za-z0-9_-]`.
pub fn valid_code(code: &str) -> bool {
    (3..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// An absolute http(s) URL with a host, the only kind of redirect target there is.
pub fn valid_http_url(s: &str) -> bool {
    // ASCII only: what a Location header can carry as it is (percent-encode the rest).
    if s.len() > 2048 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let Ok(uri) = s.parse::<hyper::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    // No user info: `https://shop.example@evil.com/` goes to evil.com.
    let port_ok = match authority.as_str().rsplit_once(':') {
        Some((_, port)) if !authority.as_str().ends_with(']') => {
            port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        _ => true,
    };
    matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && !authority.as_str().contains('@')
        && port_ok
}

/// A host name, or `*.` and one: letters, digits, `-` and dots, at most 253.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The lower-cased host of an http(s) URL.
fn host_of(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    Some(uri.host()?.to_ascii_lowercase())
}

/// A partner program: who pays, in what currency, under which rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    #[serde(default)]
    pub id: String,
    pub name: String,
    /// Settlement currency (ISO 4217).
    pub currency: String,
    /// Shared secret of the conversion signature.
    pub secret: String,
    /// Where paused links and partners redirect.
    pub fallback_url: String,
    #[serde(default = "default_lookback")]
    pub lookback_days: u32,
    #[serde(default)]
    pub attribution: AttributionModel,
    #[serde(default = "default_dedup_window")]
    pub click_dedup_window_secs: u64,
    #[serde(default = "default_max_touches")]
    pub max_touches: u32,
    /// Program-currency units per unit of each accepted currency.
    #[serde(default)]
    pub fx: BTreeMap<String, Decimal>,
    #[serde(default)]
    pub commission: CommissionPlan,
    /// Days a commission stays pending after its conversion occurred (SPEC §5.7).
    #[serde(default = "default_hold_days")]
    pub hold_days: u32,
    /// Smallest balance paid out; partners below it roll over (program currency).
    #[serde(default)]
    pub min_payout: Decimal,
    #[serde(default)]
    pub fraud: FraudRules,
    /// Hosts partners may send their own links to (`shop.example`, or `*.shop.example`
    /// for its subdomains); empty: the fallback URL's host (SPEC §9.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_destinations: Vec<String>,
    /// Automatic tier moves at period boundaries (SPEC §10.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_rules: Option<TierRules>,
    /// How a conversion's promo code weighs against its clicks (SPEC §10.3).
    #[serde(default)]
    pub promo_code_priority: PromoCodePriority,
    /// The signing secret of the program's Stripe webhook endpoint (`whsec_…`, SPEC
    /// §11.1); write-only in the API. `None`: the Stripe intake answers as for a missing
    /// program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_webhook_secret: Option<String>,
}

/// Whom a conversion with a known promo code credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoCodePriority {
    /// The code's partner takes the whole credit, whatever the clicks.
    #[default]
    OverClicks,
    /// The code credits only a conversion whose journey is empty.
    Fallback,
}

fn default_lookback() -> u32 {
    30
}
fn default_hold_days() -> u32 {
    30
}
fn default_dedup_window() -> u64 {
    3600
}
fn default_max_touches() -> u32 {
    32
}

impl Program {
    /// Validates and normalizes (the program's own currency is always accepted at 1).
    pub fn validate(&mut self) -> Result<(), Invalid> {
        self.check_identity()?;
        if !(1..=90).contains(&self.lookback_days) {
            return Err(Invalid::new("lookback_days", "must be 1-90"));
        }
        if let Err((param, message)) = self.attribution.validate() {
            return Err(Invalid::new(format!("attribution.{param}"), message));
        }
        if self.click_dedup_window_secs > 30 * 86_400 {
            return Err(Invalid::new(
                "click_dedup_window_secs",
                "must be at most 30 days",
            ));
        }
        if !(1..=256).contains(&self.max_touches) {
            return Err(Invalid::new("max_touches", "must be 1-256"));
        }
        self.normalize_fx()?;
        if let Err((field, message)) = self.commission.validate() {
            return Err(Invalid::new(format!("commission.{field}"), message));
        }
        let minor = money::minor_units(&self.currency);
        if let Err((field, message)) = caps::validate(&self.commission.caps, minor) {
            return Err(Invalid::new(format!("commission.{field}"), message));
        }
        if self.hold_days > 365 {
            return Err(Invalid::new("hold_days", "must be 0-365"));
        }
        if self.min_payout < Decimal::ZERO
            || self.min_payout > money::max_settled()
            || self.min_payout.scale() > 4
        {
            return Err(Invalid::new(
                "min_payout",
                "must be at least 0 and at most 10000000000000, with at most 4 decimals",
            ));
        }
        if let Err((field, message)) = self.fraud.validate() {
            return Err(Invalid::new(format!("fraud.{field}"), message));
        }
        if let Some(Err((field, message))) = self
            .tier_rules
            .as_ref()
            .map(|t| t.validate(&self.commission))
        {
            return Err(Invalid::new(format!("tier_rules.{field}"), message));
        }
        if self.allowed_destinations.len() > 100
            || !self
                .allowed_destinations
                .iter()
                .all(|h| valid_host_pattern(h))
        {
            return Err(Invalid::new(
                "allowed_destinations",
                "must be at most 100 host names, each as `shop.example` or `*.shop.example`",
            ));
        }
        Ok(())
    }

    /// The id, name, currency, secret and fallback URL.
    fn check_identity(&self) -> Result<(), Invalid> {
        if !valid_id(&self.id) {
            return Err(Invalid::new("id", "must be 1-64 of A-Z a-z 0-9 _ . -"));
        }
        if self.name.trim().is_empty()
            || self.name.len() > 200
            || self.name.chars().any(char::is_control)
        {
            return Err(Invalid::new(
                "name",
                "must be 1-200 characters, none of them control characters",
            ));
        }
        if !money::is_known_currency(&self.currency) {
            return Err(Invalid::new(
                "currency",
                "must be an ISO 4217 currency code",
            ));
        }
        if self.secret.len() < 16 || self.secret.len() > 256 {
            return Err(Invalid::new("secret", "must be 16-256 characters"));
        }
        if self.stripe_webhook_secret.as_ref().is_some_and(|s| {
            !(16..=256).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(Invalid::new(
                "stripe_webhook_secret",
                "must be 16-256 printable ASCII characters (Stripe's `whsec_…`)",
            ));
        }
        if !valid_http_url(&self.fallback_url) {
            return Err(Invalid::new(
                "fallback_url",
                "must be an absolute http(s) URL",
            ));
        }
        Ok(())
    }

    /// The FX table: ISO codes, rates in bounds, the program's own currency at 1.
    fn normalize_fx(&mut self) -> Result<(), Invalid> {
        match self.fx.get(&self.currency) {
            None => {
                self.fx.insert(self.currency.clone(), Decimal::ONE);
            }
            Some(rate) if *rate != Decimal::ONE => {
                return Err(Invalid::new(
                    format!("fx.{}", self.currency),
                    "the program currency's own rate must be 1",
                ));
            }
            Some(_) => {}
        }
        for (code, rate) in &self.fx {
            if !money::is_known_currency(code) {
                return Err(Invalid::new(
                    format!("fx.{code}"),
                    "is not an ISO 4217 currency code",
                ));
            }
            if *rate <= Decimal::ZERO || *rate > money::max_fx_rate() || rate.scale() > 12 {
                return Err(Invalid::new(
                    format!("fx.{code}"),
                    "must be greater than 0 and at most 1000000, with at most 12 decimals",
                ));
            }
        }
        Ok(())
    }

    /// Whether a partner may send a link of its own to `destination` (SPEC §9.1).
    pub fn allows_destination(&self, destination: &str) -> bool {
        let Some(host) = host_of(destination) else {
            return false;
        };
        if self.allowed_destinations.is_empty() {
            return host_of(&self.fallback_url).is_some_and(|f| f == host);
        }
        self.allowed_destinations.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(parent) => host.ends_with(&format!(".{parent}")),
                None => host == pattern,
            }
        })
    }

    /// The lookback window in seconds, which is also the visitor cookie's lifetime.
    pub fn lookback_secs(&self) -> u64 {
        u64::from(self.lookback_days) * 86_400
    }
}

/// A partner's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PartnerStatus {
    #[default]
    Active,
    Paused,
    Banned,
}

/// A partner (affiliate) of one program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    #[serde(default)]
    pub id: String,
    pub program_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// A tier of the program's plan; `None`: the plan's default tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// The partner that earns overrides on this one's commissions.
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub status: PartnerStatus,
    /// Hex SHA-256 of the partner's lower-cased e-mail, for the self-referral rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_sha256: Option<String>,
    /// Whether the program's `tier_rules` move this partner; setting a tier by hand
    /// turns it off (SPEC §10.2).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tier_auto: bool,
    /// Every change of `tier` or `tier_auto`, oldest first, kept by the registry (a
    /// request cannot set it) so that a conversion is paid with the tier in force at its
    /// own time, however late it is settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier_history: Vec<TierChange>,
}

/// Most entries of a partner's tier history kept; older ones go (a conversion older
/// than the oldest kept is paid at that entry's tier).
pub const MAX_TIER_HISTORY: usize = 100;

/// One change of a partner's tier in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierChange {
    #[serde(with = "crate::events::rfc3339_millis")]
    pub at: chrono::DateTime<chrono::Utc>,
    pub tier: Option<String>,
    pub tier_auto: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Partner {
    /// What the registry held at `t`: the latest change at or before it (the first
    /// change for earlier moments: the partner's tier when it was created). The tier a
    /// partner was created with is where automatic moves start from, whenever they were
    /// made (a backlog settled after the partner was registered moves it too); a later
    /// change by hand replaces the moves made before it.
    pub fn held_at(&self, t: chrono::DateTime<chrono::Utc>) -> HeldTier<'_> {
        let latest = self.tier_history.iter().rposition(|c| c.at <= t);
        match latest.or((!self.tier_history.is_empty()).then_some(0)) {
            Some(i) => {
                let c = &self.tier_history[i];
                HeldTier {
                    tier: c.tier.as_deref(),
                    since: (i > 0 && c.at <= t).then_some(c.at),
                    pinned: !c.tier_auto,
                }
            }
            // Partners stored before the history existed.
            None => HeldTier {
                tier: self.tier.as_deref(),
                since: None,
                pinned: !self.tier_auto,
            },
        }
    }

    /// Appends a change at `at` when the tier or `tier_auto` differ from `before`'s
    /// (`None`: a new partner), keeping the history `before` had; a body's own history
    /// is never taken.
    pub fn record_tier(&mut self, before: Option<&Partner>, at: chrono::DateTime<chrono::Utc>) {
        self.tier_history = before.map(|b| b.tier_history.clone()).unwrap_or_default();
        let changed = before.is_none_or(|b| b.tier != self.tier || b.tier_auto != self.tier_auto);
        if changed {
            // Never before the last entry: the registry's clock is the only one here.
            let at = self.tier_history.last().map_or(at, |l| at.max(l.at));
            self.tier_history.push(TierChange {
                at,
                tier: self.tier.clone(),
                tier_auto: self.tier_auto,
            });
        }
        let excess = self.tier_history.len().saturating_sub(MAX_TIER_HISTORY);
        self.tier_history.drain(..excess);
    }
}

impl Partner {
    /// Checks what can be checked without the rest of the registry.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !valid_id(&self.id) {
            return Err(Invalid::new("id", "must be 1-64 of A-Z a-z 0-9 _ . -"));
        }
        if self.program_id.is_empty() {
            return Err(Invalid::new("program_id", "is required"));
        }
        if self.parent_id.as_deref() == Some(self.id.as_str()) {
            return Err(Invalid::new(
                "parent_id",
                "a partner cannot be its own parent",
            ));
        }
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.len() > 200 || n.chars().any(char::is_control))
        {
            return Err(Invalid::new(
                "name",
                "must be at most 200 characters, none of them control characters",
            ));
        }
        if self
            .email_sha256
            .as_deref()
            .is_some_and(|h| !valid_sha256_hex(h))
        {
            return Err(Invalid::new(
                "email_sha256",
                "must be 64 lower-case hex digits (SHA-256 of the lower-cased e-mail)",
            ));
        }
        Ok(())
    }
}

/// A link's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    #[default]
    Active,
    Paused,
}

/// A referral link `/r/{code}` of one partner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    #[serde(default)]
    pub code: String,
    pub program_id: String,
    pub partner_id: String,
    /// The registered http(s) destination.
    pub destination: String,
    #[serde(default)]
    pub campaign: Option<String>,
    /// Defaults filled in where the visit's query string has no such parameter.
    #[serde(default)]
    pub utm_source: Option<String>,
    #[serde(default)]
    pub utm_medium: Option<String>,
    #[serde(default)]
    pub utm_campaign: Option<String>,
    #[serde(default)]
    pub utm_term: Option<String>,
    #[serde(default)]
    pub utm_content: Option<String>,
    /// Up to [`MAX_SUB_IDS`] short strings the partner tags the link with, stored on
    /// every click of it (SPEC §9.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_ids: Vec<String>,
    #[serde(default)]
    pub status: LinkStatus,
}

/// Sub ids one link may carry.
pub const MAX_SUB_IDS: usize = 5;

impl Link {
    /// Checks what can be checked without the rest of the registry.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !valid_code(&self.code) {
            return Err(Invalid::new("code", "must be 3-64 of A-Z a-z 0-9 _ -"));
        }
        if !valid_http_url(&self.destination) {
            return Err(Invalid::new(
                "destination",
                "must be an absolute http(s) URL",
            ));
        }
        for (field, v) in self.utm_defaults() {
            if v.is_some_and(|v| v.len() > 256) {
                return Err(Invalid::new(field, "must be at most 256 characters"));
            }
        }
        if self.campaign.as_ref().is_some_and(|c| c.len() > 256) {
            return Err(Invalid::new("campaign", "must be at most 256 characters"));
        }
        if self.sub_ids.len() > MAX_SUB_IDS
            || self
                .sub_ids
                .iter()
                .any(|s| s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control()))
        {
            return Err(Invalid::new(
                "sub_ids",
                "must be at most 5 strings of 1-64 characters, none of them control characters",
            ));
        }
        Ok(())
    }

    /// The link's default UTM parameters by name.
    pub fn utm_defaults(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("utm_source", self.utm_source.as_deref()),
            ("utm_medium", self.utm_medium.as_deref()),
            ("utm_campaign", self.utm_campaign.as_deref()),
            ("utm_term", self.utm_term.as_deref()),
            ("utm_content", self.utm_content.as_deref()),
        ]
    }
}

impl crate::engine::ProgramRules for Program {
    fn currency(&self) -> &str {
        &self.currency
    }
    fn fx_rate(&self, currency: &str) -> Option<Decimal> {
        self.fx.get(currency).copied()
    }
    fn attribution(&self) -> &AttributionModel {
        &self.attribution
    }
    fn commission(&self) -> &CommissionPlan {
        &self.commission
    }
}

impl crate::engine::PartnerRules for Partner {
    fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }
    fn held_at(&self, t: chrono::DateTime<chrono::Utc>) -> HeldTier<'_> {
        Partner::held_at(self, t)
    }
    fn parent_id(&self) -> Option<&str> {
        self.parent_id.as_deref()
    }
    fn is_active(&self) -> bool {
        self.status == PartnerStatus::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fixtures::unit_program_json as program_json;

    #[test]
    fn the_tier_history_is_the_registrys_and_answers_for_any_moment() {
        use chrono::TimeZone;
        let at = |d| chrono::Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap();
        let mut p = crate::testkit::fixtures::partner("acme");
        p.tier = Some("silver".into());
        // A body's own history is never taken.
        p.tier_history = vec![TierChange {
            at: at(1),
            tier: Some("gold".into()),
            tier_auto: false,
        }];
        p.record_tier(None, at(10));
        assert_eq!(p.tier_history.len(), 1);
        let mut same = p.clone();
        same.record_tier(Some(&p), at(12));
        assert_eq!(same.tier_history.len(), 1, "no change, no entry");
        let mut pinned = p.clone();
        pinned.tier = Some("gold".into());
        pinned.tier_auto = false;
        pinned.record_tier(Some(&p), at(20));
        // Before creation: the tier it was created with, where moves start from.
        let h = pinned.held_at(at(2));
        assert_eq!((h.tier, h.since, h.pinned), (Some("silver"), None, false));
        let h = pinned.held_at(at(15));
        assert_eq!((h.tier, h.since, h.pinned), (Some("silver"), None, false));
        let h = pinned.held_at(at(25));
        assert_eq!(
            (h.tier, h.since, h.pinned),
            (Some("gold"), Some(at(20)), true)
        );
        // A clock behind the last entry never reorders the history.
        let mut back = pinned.clone();
        back.tier = Some("bronze".into());
        back.record_tier(Some(&pinned), at(5));
        assert_eq!(back.tier_history.last().unwrap().at, at(20));
        let mut long = back.clone();
        for i in 0..150 {
            let before = long.clone();
            long.tier = Some(if i % 2 == 0 { "gold" } else { "silver" }.into());
            long.record_tier(Some(&before), at(21));
        }
        assert_eq!(long.tier_history.len(), MAX_TIER_HISTORY);
    }

    #[test]
    fn program_from_spec_example_validates() {
        let mut p: Program = serde_json::from_value(program_json()).unwrap();
        p.id = "acme".into();
        p.validate().unwrap();
        assert_eq!(p.lookback_secs(), 30 * 86_400);
    }

    #[test]
    fn program_errors_name_the_field() {
        let cases = [
            ("lookback_days", serde_json::json!(91), "lookback_days"),
            ("currency", serde_json::json!("XXX"), "currency"),
            (
                "fallback_url",
                serde_json::json!("javascript:alert(1)"),
                "fallback_url",
            ),
            ("fx", serde_json::json!({"USD": "1", "EUR": "0"}), "fx.EUR"),
            ("fx", serde_json::json!({"USD": "2"}), "fx.USD"),
            // Rates whose worst case would overflow the ledger (SPEC §7).
            (
                "fx",
                serde_json::json!({"USD": "1", "EUR": "1e25"}),
                "fx.EUR",
            ),
            (
                "fx",
                serde_json::json!({"USD": "1", "EUR": "1000000.1"}),
                "fx.EUR",
            ),
            (
                "commission",
                serde_json::json!({"tiers": {"b": "0.1"}, "default_tier": "b",
                    "lead_bounty": "79228162514264337593543950335"}),
                "commission.lead_bounty",
            ),
            (
                "commission",
                serde_json::json!({"tiers": {"b": "0.1"}, "default_tier": "b",
                    "recurring": {"rate": "0.1", "months": 4294967295u64}}),
                "commission.recurring.months",
            ),
            (
                "attribution",
                serde_json::json!({"model": "position_based", "first": "0.7", "last": "0.7"}),
                "attribution.last",
            ),
        ];
        for (key, value, field) in cases {
            let mut json = program_json();
            json[key] = value;
            let mut p: Program = serde_json::from_value(json).unwrap();
            p.id = "acme".into();
            assert_eq!(p.validate().unwrap_err().field, field, "{key}");
        }
    }

    #[test]
    fn own_currency_is_added_to_fx() {
        let mut json = program_json();
        json["fx"] = serde_json::json!({"EUR": "1.08"});
        let mut p: Program = serde_json::from_value(json).unwrap();
        p.id = "acme".into();
        p.validate().unwrap();
        assert_eq!(p.fx["USD"], Decimal::ONE);
    }

    #[test]
    fn urls() {
        assert!(valid_http_url("https://shop.example/p?x=1#f"));
        assert!(valid_http_url("http://127.0.0.1:3000/"));
        assert!(!valid_http_url("ftp://shop.example/"));
        assert!(!valid_http_url("//shop.example/"));
        assert!(!valid_http_url("/relative"));
        assert!(!valid_http_url("https:///nohost"));
        assert!(!valid_http_url("https://a.example/ x"));
        // SPEC §7: user info, bad ports and non-ASCII are refused.
        assert!(!valid_http_url("https://shop.example@evil.com/"));
        assert!(!valid_http_url("http://user@evil.com"));
        assert!(!valid_http_url("https://ok.example:99999/"));
        assert!(!valid_http_url("https://ok.example:0/"));
        assert!(!valid_http_url("https://ok.example/caf\u{e9}"));
        assert!(valid_http_url("https://ok.example:8443/caf%C3%A9"));
        assert!(valid_http_url("http://[::1]:8080/"));
        assert!(!valid_id("."));
        assert!(!valid_id(".."));
        assert!(valid_id("a.b"));
    }
}

/// What a webhook endpoint can subscribe to (SPEC §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WebhookEventType {
    #[serde(rename = "conversion.settled")]
    ConversionSettled,
    #[serde(rename = "commission.created")]
    CommissionCreated,
    #[serde(rename = "commission.status_changed")]
    CommissionStatusChanged,
    #[serde(rename = "payout.created")]
    PayoutCreated,
    #[serde(rename = "dispute.opened")]
    DisputeOpened,
    #[serde(rename = "dispute.resolved")]
    DisputeResolved,
    #[serde(rename = "partner.tier_changed")]
    PartnerTierChanged,
}

impl WebhookEventType {
    pub const ALL: [WebhookEventType; 7] = [
        WebhookEventType::ConversionSettled,
        WebhookEventType::CommissionCreated,
        WebhookEventType::CommissionStatusChanged,
        WebhookEventType::PayoutCreated,
        WebhookEventType::DisputeOpened,
        WebhookEventType::DisputeResolved,
        WebhookEventType::PartnerTierChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::ConversionSettled => "conversion.settled",
            WebhookEventType::CommissionCreated => "commission.created",
            WebhookEventType::CommissionStatusChanged => "commission.status_changed",
            WebhookEventType::PayoutCreated => "payout.created",
            WebhookEventType::DisputeOpened => "dispute.opened",
            WebhookEventType::DisputeResolved => "dispute.resolved",
            WebhookEventType::PartnerTierChanged => "partner.tier_changed",
        }
    }
}

/// An outgoing webhook endpoint of a program (SPEC §3.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// From the path.
    #[serde(default)]
    pub program_id: String,
    /// From the path.
    #[serde(default)]
    pub name: String,
    /// Where deliveries are POSTed: http(s) only.
    pub url: String,
    /// Signs every delivery as §3.2 signs conversions. Write-only: never shown by the API.
    pub secret: String,
    /// The event types delivered, each once.
    pub events: Vec<WebhookEventType>,
    /// A tombstone: the registry is a log of puts, so removing an endpoint is a put.
    /// Never accepted from the API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Registered with a program or partner key: deliveries never connect to the
    /// operator's network (SPEC §9). Set by the API, never taken from a body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restricted: bool,
    /// A partner's own endpoint (a postback, SPEC §9.1): it receives that partner's
    /// events only. Its `name` is `{partner_id}~{the partner's name for it}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
}

/// Postbacks one partner may have.
pub const MAX_POSTBACKS: usize = 5;

impl Webhook {
    /// Its key among the registry's entities.
    pub fn key(&self) -> String {
        Self::key_of(&self.program_id, &self.name)
    }

    pub fn key_of(program_id: &str, name: &str) -> String {
        // Ids cannot contain `/`.
        format!("{program_id}/{name}")
    }

    /// The registry name of a partner's postback: ids cannot contain `~`, so it never
    /// meets a program's endpoint name or another partner's postback.
    pub fn postback_name(partner_id: &str, name: &str) -> String {
        format!("{partner_id}~{name}")
    }

    /// The name its owner gave it (a postback's without the partner prefix).
    pub fn short_name(&self) -> &str {
        match &self.partner_id {
            Some(p) => self
                .name
                .strip_prefix(p.as_str())
                .and_then(|n| n.strip_prefix('~'))
                .unwrap_or(""),
            None => &self.name,
        }
    }

    /// Whether an event concerning `partner_id` goes to this endpoint.
    pub fn concerns(&self, partner_id: &str) -> bool {
        self.partner_id.as_deref().is_none_or(|p| p == partner_id)
    }

    /// Validates and normalizes (events sorted, each once).
    pub fn validate(&mut self) -> Result<(), Invalid> {
        if !valid_id(self.short_name()) {
            return Err(Invalid::new("name", "must be 1-64 of A-Z a-z 0-9 _ . -"));
        }
        if !valid_http_url(&self.url) {
            return Err(Invalid::new(
                "url",
                "must be an absolute http(s) URL with a host, at most 2048 ASCII characters",
            ));
        }
        if !(16..=256).contains(&self.secret.len())
            || !self.secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Invalid::new(
                "secret",
                "must be 16-256 printable ASCII characters, no spaces",
            ));
        }
        self.events.sort();
        self.events.dedup();
        if self.events.is_empty() {
            return Err(Invalid::new(
                "events",
                "must name at least one of conversion.settled, commission.created, \
                 commission.status_changed, payout.created",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    fn hook(url: &str, secret: &str, events: serde_json::Value) -> Result<Webhook, Invalid> {
        let mut w: Webhook = serde_json::from_value(
            serde_json::json!({"url": url, "secret": secret, "events": events}),
        )
        .map_err(|e| Invalid::new("body", e.to_string()))?;
        w.name = "crm".into();
        w.validate().map(|()| w)
    }

    #[test]
    fn endpoints_are_validated_and_normalized() {
        let secret = "whsec-0123456789abcdef";
        let w = hook(
            "https://partner.example/hooks",
            secret,
            serde_json::json!(["payout.created", "conversion.settled", "payout.created"]),
        )
        .unwrap();
        assert_eq!(
            w.events,
            [
                WebhookEventType::ConversionSettled,
                WebhookEventType::PayoutCreated
            ]
        );
        let field = |r: Result<Webhook, Invalid>| r.unwrap_err().field;
        let any = serde_json::json!(["commission.created"]);
        assert_eq!(field(hook("ftp://x.example/", secret, any.clone())), "url");
        assert_eq!(
            field(hook("https://a@evil.example/", secret, any.clone())),
            "url"
        );
        assert_eq!(
            field(hook("https://x.example/", "short", any.clone())),
            "secret"
        );
        assert_eq!(
            field(hook("https://x.example/", secret, serde_json::json!([]))),
            "events"
        );
        assert_eq!(
            field(hook(
                "https://x.example/",
                secret,
                serde_json::json!(["sale"])
            )),
            "body"
        );
        for t in WebhookEventType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, serde_json::json!(t.as_str()));
        }
    }
}
