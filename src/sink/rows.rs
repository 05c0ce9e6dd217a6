//! One row type per ClickHouse table. Each serializes two ways from one definition:
//! RowBinary for the `clickhouse` crate (its serializer is not human-readable) and
//! `JSONEachRow` for the embedded file sink (serde_json is), in the forms ClickHouse
//! 18.16 parses: `DateTime` as `YYYY-MM-DD hh:mm:ss`, decimals as bare numbers.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::engine::commission::LedgerRow;
use crate::engine::dedup::ClickVerdict;
use crate::engine::settle::{AttributionLine, Decision};
use crate::events::{ClickEvent, ConversionEvent, ConversionKind};

/// Namespace of commission ids: uuid v5 of (conversion id, row index) in it.
const COMMISSION_NS: Uuid = Uuid::from_u128(0x6f1c_2a8e_5d4b_4c1a_9e2f_7b3d_8a6c_1e90);
/// Namespace of lifecycle steps: uuid v5 of (commission id, step) in it.
const STEP_NS: Uuid = Uuid::from_u128(0x2b7e_91c4_0a6d_4f3e_8c15_d29a_47e0_b3f6);

/// Serde adapters choosing the representation by `is_human_readable`.
pub mod ser {
    use super::*;
    use serde::Serializer;

    /// `DateTime`: u32 seconds, or `"YYYY-MM-DD hh:mm:ss"` (UTC).
    pub mod datetime {
        use super::*;
        pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.collect_str(&t.format("%Y-%m-%d %H:%M:%S"))
            } else {
                s.serialize_u32(u32::try_from(t.timestamp()).unwrap_or(0))
            }
        }
    }

    fn decimal<S: Serializer>(d: &Decimal, scale: u32, s: S) -> Result<S::Ok, S::Error> {
        let mut r =
            d.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointNearestEven);
        if s.is_human_readable() {
            r.rescale(scale);
            let raw = serde_json::value::RawValue::from_string(r.to_string())
                .map_err(serde::ser::Error::custom)?;
            raw.serialize(s)
        } else {
            r.rescale(scale);
            let v = i64::try_from(r.mantissa()).map_err(|_| {
                serde::ser::Error::custom(format!("{d} does not fit Decimal(18,{scale})"))
            })?;
            s.serialize_i64(v)
        }
    }

    /// `Decimal(18,4)`: i64 scaled by 10^4, or a bare JSON number.
    pub mod decimal4 {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
            decimal(d, 4, s)
        }
    }

    /// `Decimal(18,12)`: i64 scaled by 10^12, or a bare JSON number.
    pub mod decimal12 {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
            decimal(d, 12, s)
        }
    }

    /// `UUID`: ClickHouse's binary layout, or the usual string.
    pub mod uuid {
        use super::*;
        pub fn serialize<S: Serializer>(u: &Uuid, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.collect_str(u)
            } else {
                clickhouse::serde::uuid::serialize(u, s)
            }
        }

        /// `Nullable(UUID)`.
        pub mod option {
            use super::*;
            pub fn serialize<S: Serializer>(u: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    match u {
                        Some(u) => s.collect_str(u),
                        None => s.serialize_none(),
                    }
                } else {
                    clickhouse::serde::uuid::option::serialize(u, s)
                }
            }
        }
    }
}

/// Checks that every amount of a conversion's rows fits its column (`Decimal(18,4)`,
/// weights and rates `Decimal(18,12)`), so that the sink never refuses a batch for one
/// conversion: one that does not fit goes to the dead-letter topic instead.
pub fn fits(e: &ConversionEvent, d: &Decision) -> Result<(), String> {
    fn check(what: &str, x: Decimal, scale: u32) -> Result<(), String> {
        let limit = Decimal::new(i64::MAX, scale);
        let r =
            x.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointNearestEven);
        if r.abs() > limit {
            return Err(format!("{what} {x} does not fit Decimal(18,{scale})"));
        }
        Ok(())
    }
    check("amount", e.amount, 4)?;
    check("settled_amount", d.settled_amount, 4)?;
    for a in &d.attributions {
        check("weight", a.weight, 12)?;
        check("credited_amount", a.credited_amount, 4)?;
    }
    for r in &d.rows {
        check("base_amount", r.base_amount, 4)?;
        check("rate", r.rate, 12)?;
        check("amount", r.amount, 4)?;
    }
    Ok(())
}

/// The milliseconds within the second of an event time: the `*_ms` column beside each
/// `DateTime` one (SPEC §6; DateTime64 does not exist on ClickHouse 18.16).
pub fn millis(t: DateTime<Utc>) -> u16 {
    // At most 999, or 1999 during a leap second: fits u16 either way.
    u16::try_from(t.timestamp_subsec_millis()).unwrap_or(999)
}

/// A row of `clicks`.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct ClickRow {
    #[serde(with = "ser::uuid")]
    pub click_id: Uuid,
    #[serde(with = "ser::datetime")]
    pub ts: DateTime<Utc>,
    pub ts_ms: u16,
    pub program_id: String,
    pub partner_id: String,
    pub link_code: String,
    pub campaign: Option<String>,
    #[serde(with = "ser::uuid")]
    pub visitor_id: Uuid,
    pub ip_hash: String,
    pub user_agent: String,
    pub referer: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub is_bot: u8,
    pub status: &'static str,
    pub is_unique: u8,
    /// Last: RowBinary is positional, and the column was added after the others.
    pub sub_ids: Vec<String>,
}

impl ClickRow {
    /// The row of a decided click; a suspicious one is stored with that status.
    pub fn new(e: ClickEvent, verdict: ClickVerdict) -> Self {
        ClickRow {
            click_id: e.click_id,
            ts_ms: millis(e.ts),
            ts: e.ts,
            program_id: e.program_id,
            partner_id: e.partner_id,
            link_code: e.link_code,
            campaign: e.campaign,
            visitor_id: e.visitor_id,
            ip_hash: e.ip_hash,
            user_agent: e.user_agent,
            referer: e.referer,
            utm_source: e.utm_source,
            utm_medium: e.utm_medium,
            utm_campaign: e.utm_campaign,
            utm_term: e.utm_term,
            utm_content: e.utm_content,
            is_bot: u8::from(e.is_bot),
            status: match verdict {
                ClickVerdict::Suspicious => ClickVerdict::Suspicious.as_str(),
                _ => e.status.as_str(),
            },
            is_unique: u8::from(verdict == ClickVerdict::Unique),
            sub_ids: e.sub_ids,
        }
    }
}

/// A row of `conversions`.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct ConversionRow {
    #[serde(with = "ser::uuid")]
    pub conversion_id: Uuid,
    pub program_id: String,
    pub order_id: String,
    pub kind: &'static str,
    #[serde(with = "ser::decimal4")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(with = "ser::datetime")]
    pub occurred_at: DateTime<Utc>,
    pub occurred_at_ms: u16,
    #[serde(with = "ser::datetime")]
    pub received_at: DateTime<Utc>,
    pub received_at_ms: u16,
    #[serde(with = "ser::uuid::option")]
    pub click_id: Option<Uuid>,
    #[serde(with = "ser::uuid::option")]
    pub visitor_id: Option<Uuid>,
    pub referral_code: Option<String>,
    pub customer_id: Option<String>,
    pub original_order_id: Option<String>,
    pub status: &'static str,
    #[serde(with = "ser::decimal4")]
    pub settled_amount: Decimal,
    pub settlement_currency: String,
    pub model: String,
    pub touches: u16,
}

/// A row of `attributions`.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct AttributionRow {
    #[serde(with = "ser::uuid")]
    pub conversion_id: Uuid,
    pub program_id: String,
    pub partner_id: String,
    #[serde(with = "ser::uuid::option")]
    pub click_id: Option<Uuid>,
    pub campaign: String,
    pub position: u16,
    pub touches: u16,
    pub model: String,
    #[serde(with = "ser::decimal12")]
    pub weight: Decimal,
    #[serde(with = "ser::decimal4")]
    pub credited_amount: Decimal,
    pub kind: &'static str,
    #[serde(with = "ser::datetime")]
    pub occurred_at: DateTime<Utc>,
    pub occurred_at_ms: u16,
    /// What the credit came from: `click`, `referral_code`, `promo_code` (SPEC §10.3),
    /// or `first_sale` (a recurring payment, or a refund, inherits its order's).
    pub source: &'static str,
    /// The conversion's customer and country (upper case), copied here so that the
    /// analytics of SPEC §9.2 (cohorts, funnels by country) read one table; empty
    /// when the conversion carries none.
    pub customer_id: String,
    pub country: String,
}

/// A row of `commissions`, the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct CommissionRow {
    #[serde(with = "ser::uuid")]
    pub commission_id: Uuid,
    #[serde(with = "ser::uuid")]
    pub conversion_id: Uuid,
    pub program_id: String,
    pub partner_id: String,
    pub level: u8,
    pub kind: &'static str,
    #[serde(with = "ser::decimal4")]
    pub base_amount: Decimal,
    #[serde(with = "ser::decimal12")]
    pub rate: Decimal,
    #[serde(with = "ser::decimal4")]
    pub amount: Decimal,
    pub currency: String,
    pub status: &'static str,
    #[serde(with = "ser::datetime")]
    pub created_at: DateTime<Utc>,
    pub created_at_ms: u16,
    #[serde(with = "ser::datetime")]
    pub occurred_at: DateTime<Utc>,
    pub occurred_at_ms: u16,
    /// Why a direct row earned what it did when not by the plan alone (`rule {name}`);
    /// empty otherwise.
    pub reason: String,
    /// The conversion's customer, for the cohorts of SPEC §9.2; empty without one.
    pub customer_id: String,
}

/// A row of `commission_status`, the audit trail (SPEC §5.7): one step in the life of
/// one ledger row. The current status of a row is that of its highest step.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct StatusRow {
    /// `(commission_id, step)` as a uuid: a replay writes the same step again.
    #[serde(with = "ser::uuid")]
    pub event_id: Uuid,
    #[serde(with = "ser::uuid")]
    pub commission_id: Uuid,
    #[serde(with = "ser::uuid")]
    pub conversion_id: Uuid,
    pub program_id: String,
    pub partner_id: String,
    pub kind: &'static str,
    #[serde(with = "ser::decimal4")]
    pub amount: Decimal,
    pub currency: String,
    pub status: &'static str,
    /// 0 at creation, one more per transition.
    pub step: u8,
    pub reason: String,
    /// `pipeline`, or who reviewed or paid it.
    pub actor: String,
    /// When it happened: event time for the pipeline's steps, the request's time for
    /// reviews and payouts.
    #[serde(with = "ser::datetime")]
    pub at: DateTime<Utc>,
    pub at_ms: u16,
    /// The payout that paid it (`paid` steps), else empty.
    pub payout_id: String,
}

/// The ledger row a step belongs to: what stays the same through all its steps.
#[derive(Debug, Clone, Copy)]
pub struct RowKey<'a> {
    pub commission_id: Uuid,
    pub conversion_id: Uuid,
    pub program_id: &'a str,
    pub partner_id: &'a str,
    pub kind: &'static str,
    pub amount: Decimal,
    pub currency: &'a str,
}

/// What one step of a row says.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub step: u8,
    pub status: crate::engine::Status,
    pub reason: &'a str,
    pub actor: &'a str,
    pub at: DateTime<Utc>,
}

impl StatusRow {
    /// Step `s` of ledger row `row`.
    pub fn step(row: &RowKey, s: Step) -> StatusRow {
        StatusRow {
            event_id: step_id(row.commission_id, s.step),
            commission_id: row.commission_id,
            conversion_id: row.conversion_id,
            program_id: row.program_id.to_string(),
            partner_id: row.partner_id.to_string(),
            kind: row.kind,
            amount: row.amount,
            currency: row.currency.to_string(),
            status: s.status.as_str(),
            step: s.step,
            reason: s.reason.to_string(),
            actor: s.actor.to_string(),
            at: s.at,
            at_ms: millis(s.at),
            payout_id: String::new(),
        }
    }
}

/// The id of step `step` of ledger row `commission_id`.
pub fn step_id(commission_id: Uuid, step: u8) -> Uuid {
    let mut name = [0u8; 17];
    name[..16].copy_from_slice(commission_id.as_bytes());
    name[16] = step;
    Uuid::new_v5(&STEP_NS, &name)
}

/// A row of `payouts`: one partner's line of a payout batch.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct PayoutRow {
    #[serde(with = "ser::uuid")]
    pub payout_id: Uuid,
    pub program_id: String,
    /// The instant the batch pays up to.
    #[serde(with = "ser::datetime")]
    pub up_to: DateTime<Utc>,
    pub partner_id: String,
    /// Approved rows net of clawbacks (program currency).
    #[serde(with = "ser::decimal4")]
    pub amount: Decimal,
    pub currency: String,
    /// Ledger rows paid by this line.
    pub rows: u32,
    #[serde(with = "ser::datetime")]
    pub created_at: DateTime<Utc>,
}

/// The deterministic id of a conversion's `index`-th ledger row.
pub fn commission_id(conversion_id: Uuid, index: usize) -> Uuid {
    let mut name = [0u8; 24];
    name[..16].copy_from_slice(conversion_id.as_bytes());
    name[16..].copy_from_slice(&(index as u64).to_be_bytes());
    Uuid::new_v5(&COMMISSION_NS, &name)
}

/// The rows a settled conversion produces. `campaign_of(click_id)` names the campaign
/// of an attributed touch.
pub fn conversion_rows(
    e: &ConversionEvent,
    d: &Decision,
    campaigns: &[String],
    lifecycle: &crate::engine::lifecycle::Lifecycle,
) -> (ConversionRow, Vec<AttributionRow>, Vec<CommissionRow>) {
    let conversion = ConversionRow {
        conversion_id: e.conversion_id,
        program_id: e.program_id.clone(),
        order_id: e.order_id.clone(),
        kind: e.kind.as_str(),
        amount: e.amount,
        currency: e.currency.clone(),
        occurred_at: e.occurred_at,
        occurred_at_ms: millis(e.occurred_at),
        received_at: e.received_at,
        received_at_ms: millis(e.received_at),
        click_id: e.click_id,
        visitor_id: e.visitor_id,
        referral_code: e.referral_code.clone(),
        customer_id: e.customer_id.clone(),
        original_order_id: e.original_order_id.clone(),
        status: d.status.as_str(),
        settled_amount: d.settled_amount,
        settlement_currency: d.currency.clone(),
        model: d.model.clone(),
        touches: d.touches,
    };
    let attributions = d
        .attributions
        .iter()
        .enumerate()
        .map(|(i, a): (usize, &AttributionLine)| AttributionRow {
            conversion_id: e.conversion_id,
            program_id: e.program_id.clone(),
            partner_id: a.partner_id.clone(),
            click_id: a.click_id,
            campaign: campaigns.get(i).cloned().unwrap_or_default(),
            position: a.position,
            touches: d.touches,
            model: d.model.clone(),
            weight: a.weight,
            credited_amount: a.credited_amount,
            kind: e.kind.as_str(),
            occurred_at: e.occurred_at,
            occurred_at_ms: millis(e.occurred_at),
            source: source(e.kind, &d.model, a),
            customer_id: e.customer_id.clone().unwrap_or_default(),
            country: e
                .country
                .as_deref()
                .map(str::to_ascii_uppercase)
                .unwrap_or_default(),
        })
        .collect();
    let commissions = d
        .rows
        .iter()
        .enumerate()
        .map(|(i, r): (usize, &LedgerRow)| CommissionRow {
            commission_id: commission_id(e.conversion_id, i),
            conversion_id: e.conversion_id,
            program_id: e.program_id.clone(),
            partner_id: r.partner_id.clone(),
            level: r.level,
            kind: r.kind.as_str(),
            base_amount: r.base_amount,
            rate: r.rate,
            amount: r.amount,
            currency: d.currency.clone(),
            status: lifecycle.created(i).0.as_str(),
            created_at: e.received_at,
            created_at_ms: millis(e.received_at),
            occurred_at: e.occurred_at,
            occurred_at_ms: millis(e.occurred_at),
            reason: r.reason.clone(),
            customer_id: e.customer_id.clone().unwrap_or_default(),
        })
        .collect();
    (conversion, attributions, commissions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn json_each_row_forms_that_clickhouse_18_parses() {
        let row = CommissionRow {
            commission_id: Uuid::from_u128(1),
            conversion_id: Uuid::from_u128(2),
            program_id: "acme".into(),
            partner_id: "p".into(),
            level: 1,
            kind: "override",
            base_amount: Decimal::from_str("34.122375").unwrap(),
            rate: Decimal::from_str("0.1").unwrap(),
            amount: Decimal::from_str("3.41").unwrap(),
            currency: "USD".into(),
            status: "pending",
            created_at: chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 20, 10, 15, 0).unwrap(),
            created_at_ms: 250,
            occurred_at: chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 20, 10, 15, 0).unwrap(),
            occurred_at_ms: 0,
            reason: String::new(),
            customer_id: String::new(),
        };
        let json = serde_json::to_string(&row).unwrap();
        assert!(json.contains(r#""base_amount":34.1224"#), "{json}");
        assert!(json.contains(r#""rate":0.100000000000"#), "{json}");
        assert!(json.contains(r#""amount":3.4100"#), "{json}");
        assert!(json.contains(r#""created_at_ms":250"#), "{json}");
        assert!(
            json.contains(r#""created_at":"2026-11-20 10:15:00""#),
            "{json}"
        );
        assert!(
            json.contains(r#""commission_id":"00000000-0000-0000-0000-000000000001""#),
            "{json}"
        );
    }

    #[test]
    fn commission_ids_are_deterministic_and_distinct() {
        let c = Uuid::now_v7();
        assert_eq!(commission_id(c, 0), commission_id(c, 0));
        assert_ne!(commission_id(c, 0), commission_id(c, 1));
        assert_ne!(commission_id(c, 0), commission_id(Uuid::now_v7(), 0));
    }
}

/// A row of `disputes`: one version of a dispute or inquiry (SPEC §9.1); the current
/// state is the highest `version`.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct DisputeRow {
    #[serde(with = "ser::uuid")]
    pub dispute_id: Uuid,
    /// 0 when opened, 1 when resolved.
    pub version: u32,
    pub program_id: String,
    pub partner_id: String,
    /// The disputed ledger row; empty for an inquiry about an order.
    pub commission_id: String,
    /// The order an inquiry is about; empty for a dispute of a row.
    pub order_id: String,
    /// What the partner claims, as it wrote it (a decimal), or empty.
    pub claimed_amount: String,
    pub currency: String,
    pub message: String,
    /// `open`, `accepted` or `rejected`.
    pub status: String,
    /// The adjustment booked when accepted (program currency), else 0.
    #[serde(with = "ser::decimal4")]
    pub amount: Decimal,
    /// The adjustment's ledger row, when one was booked.
    pub adjustment_id: String,
    pub note: String,
    pub actor: String,
    #[serde(with = "ser::datetime")]
    pub opened_at: DateTime<Utc>,
    pub opened_at_ms: u16,
    #[serde(with = "ser::datetime")]
    pub at: DateTime<Utc>,
    pub at_ms: u16,
}

/// A row of `api_audit`: one write made through the keyed API (SPEC §9).
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct AuditRow {
    #[serde(with = "ser::datetime")]
    pub at: DateTime<Utc>,
    pub at_ms: u16,
    /// The key's id; `admin` for the operator token.
    pub key_id: String,
    pub role: &'static str,
    pub program_id: String,
    pub partner_id: String,
    pub method: &'static str,
    /// The route template, never the raw path.
    pub route: &'static str,
    pub status: u16,
}

/// A row of `webhook_deliveries`: one attempt to deliver one event to one endpoint
/// (SPEC §3.6).
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct DeliveryRow {
    pub program_id: String,
    pub endpoint: String,
    #[serde(with = "ser::uuid")]
    pub event_id: Uuid,
    pub event_type: String,
    pub partner_id: String,
    /// `acknowledged`, `failed` or `given_up`.
    pub outcome: &'static str,
    /// The attempt for `failed` rows, 0 for the final ones: with the event and the
    /// outcome it is the table's key, so an event acknowledged twice (the process died
    /// between recording the answer and dropping the event) is one row under FINAL.
    pub seq: u32,
    /// Which attempt this was, from 1.
    pub attempt: u32,
    /// The HTTP status, 0 when there was none (timeout, refused, …).
    pub status_code: u16,
    /// Why it failed, bounded; empty when acknowledged.
    pub error: String,
    pub duration_ms: u32,
    pub url: String,
    #[serde(with = "ser::datetime")]
    pub attempted_at: DateTime<Utc>,
    pub attempted_at_ms: u16,
}

/// What an attribution line's credit came from: a recurring payment's always from the
/// customer's first sale (whatever credited that), a journey kind's from its click,
/// referral code or promo code.
fn source(kind: ConversionKind, model: &str, line: &AttributionLine) -> &'static str {
    use crate::engine::attribution::{PROMO_CODE, REFERRAL_CODE};
    match model {
        _ if !kind.is_journey_kind() => "first_sale",
        PROMO_CODE => "promo_code",
        REFERRAL_CODE => "referral_code",
        _ if line.click_id.is_some() => "click",
        _ => "first_sale",
    }
}

/// A row of `partner_tiers`: one tier move (SPEC §10.2), made at a period boundary by
/// the program's `tier_rules` (`auto`) or by hand (`manual`).
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct TierRow {
    pub program_id: String,
    pub partner_id: String,
    /// From when the tier holds (conversions at or after it are paid at it).
    #[serde(with = "ser::datetime")]
    pub effective_at: DateTime<Utc>,
    pub effective_at_ms: u16,
    pub tier: String,
    pub previous: String,
    /// `auto` or `manual`.
    pub source: &'static str,
    /// The figures of the period before `effective_at` that decided an automatic move
    /// (zero for a manual one), within the columns' range.
    pub conversions: u64,
    #[serde(with = "ser::decimal4")]
    pub revenue: Decimal,
    #[serde(with = "ser::decimal4")]
    pub commission: Decimal,
}

impl TierRow {
    /// The row of a move of `partner_id` in `program_id`.
    pub fn new(
        program_id: &str,
        partner_id: &str,
        m: &crate::engine::tiers::TierMove,
        source: &'static str,
    ) -> TierRow {
        // Decimal(18, 4) holds ±10^14: a period's figures beyond it are shown at the bound.
        let bound = Decimal::new(999_999_999_999_999_999, 4);
        let fit = |d: Decimal| d.clamp(-bound, bound).round_dp(4);
        TierRow {
            program_id: program_id.to_string(),
            partner_id: partner_id.to_string(),
            effective_at: m.from,
            effective_at_ms: millis(m.from),
            tier: m.tier.clone(),
            previous: m.previous.clone(),
            source,
            conversions: m.figures.conversions,
            revenue: fit(m.figures.revenue),
            commission: fit(m.figures.commission),
        }
    }
}

/// A row of `partner_tier_figures`: what one conversion counted toward one partner's
/// tier figures of one period (SPEC §10.2), exactly as the pipeline counted it, so that
/// a partner's progress and the figures behind each move add up from the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct TierFigureRow {
    pub program_id: String,
    pub partner_id: String,
    /// The period's key (`m202612`, `q20264`).
    pub period: String,
    #[serde(with = "ser::uuid")]
    pub conversion_id: Uuid,
    pub conversions: u64,
    #[serde(with = "ser::decimal4")]
    pub revenue: Decimal,
    #[serde(with = "ser::decimal4")]
    pub commission: Decimal,
}
