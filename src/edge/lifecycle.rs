//! Review and payouts (SPEC §3.5): ledger rows with their current status, review of
//! held rows, payout batches as JSON or CSV. Access is decided before these run.

use chrono::{DateTime, Utc};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::parse_known;
use super::api::Call;
use super::Edge;
use crate::engine::Status;
use crate::http::{self, ApiError, HttpResponse};
use crate::ledger::{Action, Filter, Ledger, LedgerError, MAX_LIMIT, MAX_REVIEW};
use crate::registry::model::valid_id;

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Conflict(m) => ApiError::conflict(m),
            LedgerError::NotFound(m) => ApiError::not_found(m),
            LedgerError::Busy => ApiError::unavailable(e.to_string(), 1),
            LedgerError::Unavailable(m) => ApiError::unavailable(m, 5),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewRequest {
    program_id: String,
    commission_ids: Vec<Uuid>,
    action: Action,
    #[serde(default)]
    note: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayoutRequest {
    program_id: String,
    #[serde(with = "crate::events::rfc3339_millis")]
    up_to: DateTime<Utc>,
}

/// The listing's filter from its query string.
pub(crate) fn filter_of(params: &[(String, String)]) -> Result<Filter, ApiError> {
    let mut f = Filter {
        limit: 100,
        ..Filter::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "program_id" if valid_id(v) => f.program_id = v.clone(),
            "partner_id" if valid_id(v) => f.partner_id = Some(v.clone()),
            "program_id" | "partner_id" => {
                return Err(ApiError::invalid(
                    k.clone(),
                    "must be 1-64 of A-Z a-z 0-9 _ . -",
                ))
            }
            "status" => {
                f.status = Some(Status::parse(v).ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        "must be one of pending, held, approved, rejected, reversed, paid",
                    )
                })?)
            }
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit", "must be 1-1000"))?
            }
            "cursor" => {
                f.after = Some(Uuid::parse_str(v).map_err(|_| {
                    ApiError::invalid("cursor", "must be a cursor this API returned")
                })?)
            }
            "from" => f.from = Some(instant_param("from", v)?),
            "to" => f.to = Some(instant_param("to", v)?),
            other => return Err(ApiError::invalid(other.to_string(), "unknown parameter")),
        }
    }
    if f.program_id.is_empty() {
        return Err(ApiError::invalid("program_id", "is required"));
    }
    if let (Some(from), Some(to)) = (f.from, f.to) {
        if to <= from {
            return Err(ApiError::invalid("to", "must be after from"));
        }
    }
    Ok(f)
}

/// An instant of a query string: RFC 3339, or a date meaning its UTC midnight. Bounded
/// to the years the ledger's `DateTime` columns hold.
pub(crate) fn instant_param(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    crate::analytics::query::instant_of(v).ok_or_else(|| {
        ApiError::invalid(
            name.to_string(),
            "must be an RFC 3339 instant or a YYYY-MM-DD date, 1970-2099",
        )
    })
}

impl Edge {
    pub(crate) fn ledger(&self) -> Result<&Ledger, ApiError> {
        self.ledger.as_deref().ok_or_else(|| {
            ApiError::unavailable(
                "the review and payout API needs the ClickHouse sink (or `touchline serve`)",
                60,
            )
        })
    }

    pub(crate) async fn list_commissions(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let filter = filter_of(&call.query)?;
        let rows = self
            .ledger()?
            .view
            .entries(&filter)
            .await
            .map_err(LedgerError::from)?;
        let next = (rows.len() == filter.limit)
            .then(|| rows.last().map(|e| e.commission_id.to_string()))
            .flatten();
        Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({"commissions": rows, "next_cursor": next}),
        ))
    }

    pub(crate) async fn review(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let body: ReviewRequest = parse_known(&call.body)?;
        if !valid_id(&body.program_id) {
            return Err(ApiError::invalid(
                "program_id",
                "must be 1-64 of A-Z a-z 0-9 _ . -",
            ));
        }
        if body.commission_ids.is_empty() || body.commission_ids.len() > MAX_REVIEW {
            return Err(ApiError::invalid("commission_ids", "must name 1-1000 rows"));
        }
        if body.note.len() > 1000 || body.note.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "note",
                "must be at most 1000 characters, none of them control characters",
            ));
        }
        let mut ids = body.commission_ids.clone();
        ids.sort();
        ids.dedup();
        let done = self
            .ledger()?
            .review(
                &body.program_id,
                &ids,
                body.action,
                &body.note,
                &call.principal.actor(),
                Utc::now(),
            )
            .await?;
        Ok(http::json(StatusCode::OK, &done))
    }

    pub(crate) async fn create_payout(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let body: PayoutRequest = parse_known(&call.body)?;
        let program = self
            .registry
            .program(&body.program_id)
            .ok_or_else(|| ApiError::invalid("program_id", "unknown program"))?;
        let now = Utc::now();
        // Whole seconds: the payouts table keeps up_to as a DateTime.
        let up_to = DateTime::from_timestamp(body.up_to.timestamp(), 0).unwrap_or(body.up_to);
        if up_to > now {
            return Err(ApiError::invalid("up_to", "must not be in the future"));
        }
        let payout = self
            .ledger()?
            .payout(
                &program.id,
                &program.currency,
                program.min_payout,
                up_to,
                &call.principal.actor(),
                now,
            )
            .await?;
        Ok(http::json(StatusCode::OK, &payout))
    }

    pub(crate) async fn get_payout(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let id = Uuid::parse_str(call.param("id"))
            .map_err(|_| ApiError::not_found("payout not found"))?;
        let program = match call.query.as_slice() {
            [(k, v)] if k == "program_id" && valid_id(v) => v.clone(),
            _ => {
                return Err(ApiError::invalid(
                    "program_id",
                    "is required (and the only parameter)",
                ))
            }
        };
        let payout = self.ledger()?.get_payout(&program, id).await?;
        Ok(if call.wants_csv() {
            http::text(StatusCode::OK, "text/csv; charset=utf-8", payout.csv())
        } else {
            http::json(StatusCode::OK, &payout)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parameters_are_checked_by_name() {
        let p = |q: &str| filter_of(&crate::edge::api::query_pairs(q).unwrap());
        let f = p("program_id=acme&partner_id=p1&status=held&limit=5").unwrap();
        assert_eq!(
            (
                f.program_id.as_str(),
                f.partner_id.as_deref(),
                f.status,
                f.limit
            ),
            ("acme", Some("p1"), Some(Status::Held), 5)
        );
        for (q, field) in [
            ("status=held", "program_id"),
            ("program_id=acme&status=booked", "status"),
            ("program_id=acme&limit=0", "limit"),
            ("program_id=acme&limit=1001", "limit"),
            ("program_id=acme&cursor=x", "cursor"),
            ("program_id=a%00b", "program_id"),
            ("program_id=acme&colour=red", "colour"),
        ] {
            assert_eq!(p(q).unwrap_err().field.as_deref(), Some(field), "{q}");
        }
        assert_eq!(
            crate::edge::api::query_pairs("a=x%20y+z").unwrap(),
            vec![("a".into(), "x y z".into())]
        );
        assert!(crate::edge::api::query_pairs("a=1&a=2").is_err());
    }
}
