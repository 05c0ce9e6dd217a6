//! Review and payouts (SPEC §3.5): ledger rows with their current status, review of
//! held rows, payout batches as JSON or CSV. Behind the admin token like the registry.

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::header::ACCEPT;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::parse_known;
use super::Edge;
use crate::engine::Status;
use crate::http::{self, ApiError, HttpResponse, MAX_BODY_BYTES};
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

/// The query string's parameters, each at most once.
fn query_params(req: &Request<Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url_pairs(req.uri().query().unwrap_or("")) {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::invalid(k, "given more than once"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `a=1&b=x%20y` → pairs, percent-decoded; a pair that does not decode is kept raw
/// (and then fails validation by name).
pub(crate) fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec =
                |s: &str| percent_decode(&s.replace('+', " ")).unwrap_or_else(|| s.to_string());
            (dec(k), dec(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
            other => return Err(ApiError::invalid(other.to_string(), "unknown parameter")),
        }
    }
    if f.program_id.is_empty() {
        return Err(ApiError::invalid("program_id", "is required"));
    }
    Ok(f)
}

impl Edge {
    fn ledger(&self) -> Result<&Ledger, ApiError> {
        self.ledger.as_deref().ok_or_else(|| {
            ApiError::unavailable(
                "the review and payout API needs the ClickHouse sink (or `touchline serve`)",
                60,
            )
        })
    }

    /// `/api/v1/commissions…` and `/api/v1/payouts…`; `None` for other routes.
    pub(crate) async fn lifecycle_route(
        &self,
        req: Request<Incoming>,
        parts: &[&str],
    ) -> Option<Result<HttpResponse, ApiError>> {
        let method = req.method().clone();
        Some(match (method, parts) {
            (Method::GET, ["commissions"]) => self.list(&req).await,
            (Method::POST, ["commissions", "review"]) => self.review(req).await,
            (Method::POST, ["payouts"]) => self.create_payout(req).await,
            (Method::GET, ["payouts", id]) => self.get_payout(&req, id).await,
            (_, ["commissions"]) => Err(ApiError::method_not_allowed("GET")),
            (_, ["commissions", "review"]) | (_, ["payouts"]) => {
                Err(ApiError::method_not_allowed("POST"))
            }
            (_, ["payouts", _]) => Err(ApiError::method_not_allowed("GET")),
            _ => return None,
        })
    }

    async fn list(&self, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
        let filter = filter_of(&query_params(req)?)?;
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

    async fn review(&self, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        let body: ReviewRequest = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
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
            .review(&body.program_id, &ids, body.action, &body.note, Utc::now())
            .await?;
        Ok(http::json(StatusCode::OK, &done))
    }

    async fn create_payout(&self, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        let body: PayoutRequest = parse_known(&http::read_body(req, MAX_BODY_BYTES).await?)?;
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
                now,
            )
            .await?;
        Ok(http::json(StatusCode::OK, &payout))
    }

    async fn get_payout(
        &self,
        req: &Request<Incoming>,
        id: &str,
    ) -> Result<HttpResponse, ApiError> {
        let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("payout not found"))?;
        let params = query_params(req)?;
        let program = match params.as_slice() {
            [(k, v)] if k == "program_id" && valid_id(v) => v.clone(),
            _ => {
                return Err(ApiError::invalid(
                    "program_id",
                    "is required (and the only parameter)",
                ))
            }
        };
        let payout = self.ledger()?.get_payout(&program, id).await?;
        let wants_csv = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"));
        Ok(if wants_csv {
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
        let p = |q: &str| filter_of(&url_pairs(q));
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
        assert_eq!(url_pairs("a=x%20y+z"), vec![("a".into(), "x y z".into())]);
    }
}
