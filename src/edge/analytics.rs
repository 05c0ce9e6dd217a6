//! The analytics API over HTTP (SPEC §9.2): `GET /api/v1/analytics/{report}`. A
//! program key (or the operator) reads its program, or one partner of it with
//! `?partner_id=`; a partner key reads only its own rows, whatever it asks. The scope
//! is set here, from the key, and every source filters by it in its query.

use std::sync::Arc;

use chrono::Utc;
use hyper::StatusCode;

use super::api::Call;
use super::Edge;
use crate::access::Role;
use crate::analytics::report::{self, Failure};
use crate::analytics::{Params, Scope, Source};
use crate::http::{self, ApiError, HttpResponse};
use crate::sink::SinkError;

impl Edge {
    fn analytics(&self) -> Result<&Arc<dyn Source>, ApiError> {
        self.analytics.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "the analytics API needs the ClickHouse sink (or `touchline serve`)",
                60,
            )
        })
    }

    /// The scope of the call: the program (the key's, or `program_id` for the
    /// operator) and, for a partner key or a `partner_id` asked for, one partner of it.
    /// Another tenant's partner answers as a missing one.
    fn analytics_scope(&self, call: &Call) -> Result<Scope, ApiError> {
        let asked = |name: &str| {
            call.query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let program_id = match (call.principal.program(), asked("program_id")) {
            (Some(own), _) => own.to_string(),
            (None, Some(p)) => p,
            (None, None) => return Err(ApiError::invalid("program_id", "required")),
        };
        if self.registry.program(&program_id).is_none() {
            return Err(ApiError::not_found("program not found"));
        }
        let missing = || ApiError::not_found("partner not found");
        let partner_id = match (
            call.principal.role(),
            call.principal.key(),
            asked("partner_id"),
        ) {
            (Role::Partner, Some(key), asked) => {
                let own = key.partner_id.clone().unwrap_or_default();
                if asked.is_some_and(|a| a != own) {
                    return Err(missing());
                }
                Some(own)
            }
            (_, _, Some(p)) => {
                let found = self
                    .registry
                    .partner(&p)
                    .filter(|x| x.program_id == program_id);
                Some(found.ok_or_else(missing)?.id.clone())
            }
            (_, _, None) => None,
        };
        Ok(Scope {
            program_id,
            partner_id,
        })
    }

    pub(crate) async fn analytics_report(&self, call: Call) -> Result<HttpResponse, ApiError> {
        let scope = self.analytics_scope(&call)?;
        let params = Params::parse(call.param("report"), &call.query, Utc::now())
            .map_err(|(field, message)| ApiError::invalid(field, message))?;
        let program = self
            .registry
            .program(&scope.program_id)
            .ok_or_else(|| ApiError::not_found("program not found"))?;
        let minor = crate::money::minor_units(&program.currency);
        let table = report::run(
            self.analytics()?.as_ref(),
            &scope,
            &params,
            minor,
            program.lookback_days,
        )
        .await
        .map_err(|e| match e {
            Failure::Refused((field, message)) => ApiError::invalid(field, message),
            Failure::Source(SinkError::Transient(m)) => {
                tracing::warn!(error = %m, "analytics source unavailable");
                ApiError::unavailable("the analytics store is unavailable", 5)
            }
            Failure::Source(e) => {
                tracing::error!(error = %e, "analytics query failed");
                ApiError::internal("the analytics query failed")
            }
        })?;
        if call.wants_csv() {
            return Ok(http::text(
                StatusCode::OK,
                "text/csv; charset=utf-8",
                table.csv(),
            ));
        }
        let body = serde_json::json!({
            "report": params.report.as_str(),
            "program_id": scope.program_id,
            "partner_id": scope.partner_id,
            "currency": program.currency,
            "from": params.from.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "to": params.to.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "rows": table.json_rows(),
            "truncated": table.truncated,
        });
        Ok(http::json(StatusCode::OK, &body))
    }
}
