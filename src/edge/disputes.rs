//! Disputes and inquiries over HTTP (SPEC §9.1): a partner opens one and lists its
//! own; the program lists its program's and resolves them. The ledger does the work
//! (`ledger/disputes.rs`).

use chrono::Utc;
use hyper::StatusCode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::parse_known;
use super::api::Call;
use super::Edge;
use crate::http::{self, ApiError, HttpResponse};
use crate::ledger::disputes::{rounded, Opening, Resolution, Target};
use crate::ledger::LedgerError;
use crate::sink::DisputeRow;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DisputeRequest {
    #[serde(default)]
    commission_id: Option<Uuid>,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    claimed_amount: Option<String>,
    message: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    action: Action,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    note: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Accept,
    Reject,
}

/// A dispute as the API shows it: absent parts are null, amounts decimal strings.
fn view(d: &DisputeRow) -> serde_json::Value {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let time = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let resolved = d.version > 0;
    serde_json::json!({
        "dispute_id": d.dispute_id, "program_id": d.program_id, "partner_id": d.partner_id,
        "kind": if d.commission_id.is_empty() { "inquiry" } else { "dispute" },
        "commission_id": text(&d.commission_id), "order_id": text(&d.order_id),
        "claimed_amount": text(&d.claimed_amount), "currency": d.currency,
        "message": d.message, "status": d.status,
        "amount": resolved.then(|| rounded(d.amount, &d.currency).to_string()),
        "adjustment_id": text(&d.adjustment_id), "note": d.note,
        "opened_at": time(d.opened_at),
        "resolved_at": resolved.then(|| time(d.at)),
        "resolved_by": resolved.then(|| d.actor.clone()),
    })
}

/// Free text of at most `max` characters, line breaks allowed, no other control ones.
fn text_field(field: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    let bad = value.chars().count() > max
        || value.chars().any(|c| c.is_control() && c != '\n')
        || (required && value.trim().is_empty());
    if bad {
        return Err(ApiError::invalid(
            field,
            format!(
                "must be {}at most {max} characters, no control characters but line breaks",
                if required { "1 to " } else { "" }
            ),
        ));
    }
    Ok(())
}

fn target(body: &DisputeRequest) -> Result<Target, ApiError> {
    match (&body.commission_id, &body.order_id) {
        (Some(id), None) => Ok(Target::Commission(*id)),
        (None, Some(order))
            if !order.is_empty() && order.len() <= 128 && !order.chars().any(char::is_control) =>
        {
            Ok(Target::Order(order.clone()))
        }
        (None, Some(_)) => Err(ApiError::invalid("order_id", "must be 1-128 characters")),
        _ => Err(ApiError::invalid(
            "commission_id",
            "give either commission_id (a dispute of a ledger row) or order_id (an inquiry)",
        )),
    }
}

/// The adjustment of an accepted dispute: a decimal of at most 4 places, not zero once
/// rounded to the currency's minor unit, within the ledger's bounds.
fn adjustment(amount: Option<&str>, currency: &str) -> Result<Decimal, ApiError> {
    let bad = || {
        ApiError::invalid(
            "amount",
            "must be a non-zero decimal string (at most 4 decimals, within ±10000000000000) when accepting",
        )
    };
    let a: Decimal = amount.ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if a.scale() > 4 || a.abs() > crate::money::max_settled() || rounded(a, currency).is_zero() {
        return Err(bad());
    }
    Ok(a)
}

impl Edge {
    /// The program of dispute `id`, if there is one (for the access layer).
    pub(crate) async fn dispute_program(&self, id: &str) -> Result<Option<String>, ApiError> {
        let Ok(id) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        Ok(self.ledger()?.find_dispute(id).await?.map(|d| d.program_id))
    }

    pub(crate) async fn open_dispute(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        let body: DisputeRequest = parse_known(&call.body)?;
        let target = target(&body)?;
        text_field("message", &body.message, 2000, true)?;
        let claimed = match &body.claimed_amount {
            None => None,
            Some(c) => Some(
                crate::money::parse_amount(c)
                    .map_err(|e| ApiError::invalid("claimed_amount", e.to_string()))?,
            ),
        };
        let currency = self
            .registry
            .program(&me.program_id)
            .map(|p| p.currency.clone())
            .ok_or_else(|| ApiError::not_found("program not found"))?;
        let opening = Opening {
            program: me.program_id.clone(),
            partner: me.id.clone(),
            currency,
            target,
            claimed,
            message: body.message,
        };
        let (d, created) = self
            .ledger()?
            .open_dispute(opening, &call.principal.actor(), Utc::now())
            .await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(http::json(status, &view(&d)))
    }

    pub(crate) async fn my_disputes(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let me = call.me()?;
        if let Some((k, _)) = call.query.first() {
            return Err(ApiError::invalid(k.clone(), "unknown parameter"));
        }
        let rows = self
            .ledger()?
            .disputes_of(&me.program_id, Some(&me.id))
            .await?;
        let views: Vec<serde_json::Value> = rows.iter().map(view).collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "disputes": views }),
        ))
    }

    pub(crate) async fn list_disputes(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let mut program = None;
        let mut status = None;
        for (k, v) in &call.query {
            match k.as_str() {
                "program_id" => program = Some(v.clone()),
                "status" if ["open", "accepted", "rejected"].contains(&v.as_str()) => {
                    status = Some(v.clone())
                }
                "status" => {
                    return Err(ApiError::invalid(
                        "status",
                        "must be open, accepted or rejected",
                    ))
                }
                other => return Err(ApiError::invalid(other.to_string(), "unknown parameter")),
            }
        }
        let program = program.ok_or_else(|| ApiError::invalid("program_id", "is required"))?;
        let mut rows = self.ledger()?.disputes_of(&program, None).await?;
        rows.retain(|d| status.as_ref().is_none_or(|s| d.status == *s));
        let views: Vec<serde_json::Value> = rows.iter().map(view).collect();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "disputes": views }),
        ))
    }

    pub(crate) async fn resolve_dispute(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let missing = || ApiError::not_found("dispute not found");
        let id = Uuid::parse_str(call.param("id")).map_err(|_| missing())?;
        let body: ResolveRequest = parse_known(&call.body)?;
        text_field("note", &body.note, 1000, false)?;
        let ledger = self.ledger()?;
        let found = ledger.find_dispute(id).await?.ok_or_else(missing)?;
        let resolution = match (body.action, body.amount.as_deref()) {
            (Action::Accept, amount) => Resolution::Accept(adjustment(amount, &found.currency)?),
            (Action::Reject, None) => Resolution::Reject,
            (Action::Reject, Some(_)) => {
                return Err(ApiError::invalid("amount", "a rejection books nothing"))
            }
        };
        let d = ledger
            .resolve_dispute(
                &found.program_id,
                id,
                resolution,
                &body.note,
                &call.principal.actor(),
                Utc::now(),
            )
            .await
            .map_err(|e| match e {
                LedgerError::NotFound(_) => missing(),
                e => e.into(),
            })?;
        Ok(http::json(StatusCode::OK, &view(&d)))
    }
}
