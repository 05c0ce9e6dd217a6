//! The outbox (SPEC §3.6): the webhook events the ledger produces for a program's
//! endpoints and partners' postbacks, gathered until their rows are durable.
//!
//! Events come from the ledger, never from request handlers: the pipeline builds them
//! with the rows it settles and publishes them to the outbox topic once the rows are
//! durable and before it commits the offsets that produced them; the ledger API does the
//! same with review and payout steps before it answers. A crash in between replays the
//! same rows and so the same events, with the same ids: the outbox is at least once,
//! and its consumers deduplicate on the id. Only events some endpoint of the program
//! subscribes to are published, so programs without webhooks cost nothing.
//!
//! Messages are keyed `{program_id}|{partner_id}`: one partner's events share a
//! partition and keep the order the ledger made them in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::registry::{Registry, WebhookEventType};
use crate::sink::rows::{CommissionRow, ConversionRow, DisputeRow, PayoutRow, StatusRow, TierRow};

/// Ids of `partner.tier_changed` events: one per move.
const TIER_EVENT_NS: Uuid = Uuid::from_u128(0x7a41_c2e9_0d5b_4f18_8c36_b9e0_f1a2_d3c4);
/// Ids of `payout.created` events: one per payout line, so per partner.
const PAYOUT_EVENT_NS: Uuid = Uuid::from_u128(0x5d8c_1f0e_7b2a_4c61_9e3d_a4b5_c6d7_e8f9);

/// Version of webhook events. 2: every decimal in `data` is a JSON string
/// (`"amount": "479.2500"`), never a number a float parser would round (version 1 sent
/// the tables' JSON numbers).
pub const WEBHOOK_EVENT_VERSION: u8 = 2;

/// One event, as published to the outbox and as delivered (the request body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Schema version, [`WEBHOOK_EVENT_VERSION`].
    pub v: u8,
    /// Stable across replays and retries (`X-Touchline-Event-Id`): the conversion's,
    /// the ledger row's, the status step's, or the payout line's id.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: WebhookEventType,
    pub program_id: String,
    /// The partner it concerns; empty for a conversion that credits nobody.
    pub partner_id: String,
    /// When it happened in the ledger (event time), RFC 3339 UTC with milliseconds.
    #[serde(with = "crate::events::rfc3339_millis")]
    pub created_at: DateTime<Utc>,
    /// The row as stored in its table (`conversions`, `commissions`,
    /// `commission_status`, `payouts`), in the tables' JSON form except that decimals
    /// are strings with all their digits.
    pub data: serde_json::Value,
}

impl WebhookEvent {
    /// The outbox message key: one partner's events keep their order.
    pub fn key(&self) -> String {
        format!("{}|{}", self.program_id, self.partner_id)
    }
}

/// Events gathered in ledger order until their rows are durable.
#[derive(Debug, Default)]
pub struct Outbox {
    events: Vec<WebhookEvent>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// A settled conversion: `conversion.settled`, then `commission.created` per row,
    /// then the status changes it caused (`steps` with step 0 are creations and carried
    /// by `commission.created`).
    pub fn conversion(
        &mut self,
        registry: &Registry,
        conversion: &ConversionRow,
        commissions: &[CommissionRow],
        steps: &[StatusRow],
    ) {
        let program = &conversion.program_id;
        if registry.subscribed(program, WebhookEventType::ConversionSettled) {
            let partner = commissions
                .iter()
                .find(|c| c.level == 0)
                .map(|c| c.partner_id.clone())
                .unwrap_or_default();
            self.push(
                conversion.conversion_id,
                WebhookEventType::ConversionSettled,
                program,
                partner,
                conversion.received_at,
                conversion,
            );
        }
        self.commissions(registry, commissions);
        self.steps(registry, steps);
    }

    /// New ledger rows: `commission.created` each.
    pub fn commissions(&mut self, registry: &Registry, commissions: &[CommissionRow]) {
        for c in commissions {
            if registry.subscribed(&c.program_id, WebhookEventType::CommissionCreated) {
                self.push(
                    c.commission_id,
                    WebhookEventType::CommissionCreated,
                    &c.program_id,
                    c.partner_id.clone(),
                    c.created_at,
                    c,
                );
            }
        }
    }

    /// Status changes (steps after the first): `commission.status_changed`.
    pub fn steps(&mut self, registry: &Registry, steps: &[StatusRow]) {
        for s in steps.iter().filter(|s| s.step > 0) {
            if registry.subscribed(&s.program_id, WebhookEventType::CommissionStatusChanged) {
                self.push(
                    s.event_id,
                    WebhookEventType::CommissionStatusChanged,
                    &s.program_id,
                    s.partner_id.clone(),
                    s.at,
                    s,
                );
            }
        }
    }

    /// A payout's lines: one `payout.created` per partner paid.
    pub fn payouts(&mut self, registry: &Registry, lines: &[PayoutRow]) {
        for l in lines {
            if registry.subscribed(&l.program_id, WebhookEventType::PayoutCreated) {
                self.push(
                    Uuid::new_v5(
                        &PAYOUT_EVENT_NS,
                        format!("{}|{}", l.payout_id, l.partner_id).as_bytes(),
                    ),
                    WebhookEventType::PayoutCreated,
                    &l.program_id,
                    l.partner_id.clone(),
                    l.created_at,
                    l,
                );
            }
        }
    }

    /// Disputes opened (version 0) or resolved: `dispute.opened`, `dispute.resolved`.
    pub fn disputes(&mut self, registry: &Registry, rows: &[DisputeRow]) {
        for d in rows {
            let kind = if d.version == 0 {
                WebhookEventType::DisputeOpened
            } else {
                WebhookEventType::DisputeResolved
            };
            if registry.subscribed(&d.program_id, kind) {
                let id = Uuid::new_v5(&d.dispute_id, &d.version.to_be_bytes());
                self.push(id, kind, &d.program_id, d.partner_id.clone(), d.at, d);
            }
        }
    }

    /// Tier moves: `partner.tier_changed` each, under an id of the partner and the
    /// boundary (the same move made again is the same event).
    pub fn tier_moves(&mut self, registry: &Registry, rows: &[TierRow]) {
        for t in rows {
            let kind = WebhookEventType::PartnerTierChanged;
            if registry.subscribed(&t.program_id, kind) {
                let name = format!(
                    "{}|{}|{}|{}",
                    t.program_id,
                    t.partner_id,
                    t.effective_at.timestamp_millis(),
                    t.source
                );
                let id = Uuid::new_v5(&TIER_EVENT_NS, name.as_bytes());
                self.push(
                    id,
                    kind,
                    &t.program_id,
                    t.partner_id.clone(),
                    t.effective_at,
                    t,
                );
            }
        }
    }

    fn push(
        &mut self,
        id: Uuid,
        kind: WebhookEventType,
        program: &str,
        partner_id: String,
        created_at: DateTime<Utc>,
        row: &impl Serialize,
    ) {
        match exact_data(row) {
            Ok(data) => self.events.push(WebhookEvent {
                v: WEBHOOK_EVENT_VERSION,
                id,
                kind,
                program_id: program.to_string(),
                partner_id,
                created_at,
                data,
            }),
            // Rows are plain data; this cannot happen short of a bug, which must show.
            Err(e) => tracing::error!(error = %e, %id, "webhook event not encodable, skipped"),
        }
    }

    /// The outbox messages (key, JSON), in order; the outbox is left empty.
    pub fn take(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.events)
            .into_iter()
            .filter_map(|e| Some((e.key(), serde_json::to_vec(&e).ok()?)))
            .collect()
    }
}

/// A row's JSON with every decimal as a string of its exact digits. The tables' JSON
/// writes decimals as numbers (ClickHouse 18.16 reads no quoted decimals); a receiver's
/// `JSON.parse` or `json.loads` would make floats of them. Rows are flat objects whose
/// decimals always print a point and whose other numbers are integers, so the numbers
/// with a point are the decimals.
fn exact_data(row: &impl Serialize) -> Result<serde_json::Value, serde_json::Error> {
    use serde_json::value::RawValue;
    let text = serde_json::to_vec(row)?;
    let fields: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_slice(&text)?;
    let mut out = serde_json::Map::new();
    for (key, raw) in fields {
        let t = raw.get();
        let decimal =
            t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b"-.".contains(&b));
        let value = if decimal {
            serde_json::Value::String(t.to_string())
        } else {
            serde_json::from_str(t)?
        };
        out.insert(key, value);
    }
    Ok(serde_json::Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_leave_as_strings_with_every_digit() {
        #[derive(Serialize)]
        struct Row {
            #[serde(with = "crate::sink::rows::ser::decimal4")]
            amount: rust_decimal::Decimal,
            #[serde(with = "crate::sink::rows::ser::decimal12")]
            weight: rust_decimal::Decimal,
            level: u8,
            at_ms: i64,
            currency: &'static str,
            note: Option<String>,
        }
        let row = Row {
            amount: "-479.25".parse().unwrap(),
            weight: "0.333333333333".parse().unwrap(),
            level: 2,
            at_ms: 1_764_000_000_123,
            currency: "USD",
            note: None,
        };
        let v = exact_data(&row).unwrap();
        assert_eq!(v["amount"], "-479.2500");
        assert_eq!(v["weight"], "0.333333333333");
        assert_eq!(v["level"], 2);
        assert_eq!(v["at_ms"], 1_764_000_000_123i64);
        assert_eq!(v["currency"], "USD");
        assert!(v["note"].is_null());
    }
}
