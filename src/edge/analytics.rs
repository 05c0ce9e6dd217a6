//! The analytics API over HTTP (SPEC §9.2): `GET /api/v1/analytics/{report}`. A
//! program key (or the operator) reads its program, or one partner of it with
//! `?partner_id=`; a partner key reads only its own rows, whatever it asks. The access
//! layer sets the scope from the key (`Check::Reader`), and every source filters by it
//! in its query.

use std::sync::Arc;

use chrono::Utc;
use hyper::StatusCode;

use super::api::Call;
use super::Edge;
use crate::analytics::report::{self, Failure};
use crate::analytics::{Params, Source};
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

    pub(crate) async fn analytics_report(&self, call: Call) -> Result<HttpResponse, ApiError> {
        // Set by the access layer (`Check::Reader`), from the caller's key.
        let scope = call
            .scope
            .clone()
            .ok_or_else(|| ApiError::internal("the report has no reader"))?;
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
