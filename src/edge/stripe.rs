//! `POST /api/v1/integrations/stripe/{id}` (SPEC §11.1): Stripe's webhook deliveries,
//! verified with the program's `stripe_webhook_secret` and published as conversions.
//!
//! Order of checks: size (413) → program with a Stripe secret (404, the same answer for
//! both) → `Stripe-Signature` (400, as Stripe expects) → the event (400 naming the
//! field) → the conversion it maps to, checked as `POST /api/v1/conversions` checks one
//! (400) → publish (200 once the broker acknowledged, 503 when it is away, and Stripe
//! retries). Unmapped types and events that book nothing are acknowledged with `200`.

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::conversions::parse_conversion;
use super::Edge;
use crate::events::{to_millis, ConversionEvent};
use crate::http::{self, ApiError, HttpResponse, MAX_BODY_BYTES};
use crate::integrations::stripe::{self, Envelope, Mapped};
use crate::metrics as m;
use crate::signature::{self, SignatureError};

fn count(kind: &str, outcome: &'static str) {
    metrics::counter!(m::EDGE_STRIPE_EVENTS_TOTAL, "type" => stripe::type_label(kind), "outcome" => outcome)
        .increment(1);
}

/// A refusal, counted under the event's type when it is known.
fn refused(kind: &str, e: ApiError) -> HttpResponse {
    count(kind, "refused");
    e.into_response()
}

impl Edge {
    pub(crate) async fn stripe_events(
        &self,
        req: Request<Incoming>,
        program_id: &str,
    ) -> HttpResponse {
        let header = req
            .headers()
            .get(stripe::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match http::read_body(req, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(e) => return refused("", e),
        };
        let Some(program) = self.registry.program(program_id) else {
            return refused("", no_endpoint());
        };
        let Some(secret) = program.stripe_webhook_secret.as_deref() else {
            return refused("", no_endpoint());
        };
        let now = Utc::now();
        if let Err(e) = signature::verify(
            secret,
            header.as_deref(),
            &body,
            now.timestamp(),
            stripe::TOLERANCE_SECS,
        ) {
            return refused(
                "",
                ApiError::invalid("Stripe-Signature", signature_message(e)),
            );
        }
        let event: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return refused("", ApiError::malformed(format!("invalid JSON: {e}"))),
        };
        let envelope = match Envelope::of(&event) {
            Ok(env) => env,
            Err(e) => return refused("", ApiError::invalid(e.field, e.message)),
        };
        let outcome = self.book(&envelope, &program, now).await;
        match outcome {
            Ok(answer) => http::json(StatusCode::OK, &answer),
            Err(e) => {
                tracing::warn!(event = envelope.id, kind = envelope.kind, error = %e.message, "Stripe event refused");
                refused(envelope.kind, e)
            }
        }
    }

    /// Maps a verified event and publishes its conversion; the answer Stripe sees.
    async fn book(
        &self,
        event: &Envelope<'_>,
        program: &crate::registry::Program,
        now: chrono::DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let item = match stripe::map(event, &program.id) {
            Ok(Mapped::Conversion(item)) => item,
            Ok(Mapped::Ignored(why)) => {
                count(event.kind, why);
                return Ok(json!({"received": true, "booked": null, "ignored": why}));
            }
            Err(e) => return Err(ApiError::invalid(e.field, e.message)),
        };
        let registry_version = self.registry.version();
        let conversion = parse_conversion(&item, program, to_millis(now))?;
        let conversion = ConversionEvent {
            registry_version,
            ..conversion
        };
        self.publish(std::slice::from_ref(&conversion))
            .await
            .map_err(|(_, e)| e)?;
        count(event.kind, "booked");
        tracing::info!(event = event.id, kind = conversion.kind.as_str(), order = %conversion.order_id, "Stripe event booked");
        Ok(json!({"received": true, "booked": {
            "kind": conversion.kind.as_str(),
            "order_id": conversion.order_id,
            "conversion_id": conversion.conversion_id,
        }}))
    }
}

/// A program without a Stripe secret answers as a missing one: nobody learns which.
fn no_endpoint() -> ApiError {
    ApiError::not_found("no Stripe endpoint for this program (set its stripe_webhook_secret)")
}

fn signature_message(e: SignatureError) -> &'static str {
    match e {
        SignatureError::Missing => "is missing",
        SignatureError::Malformed => "must be t={unix seconds},v1={hex HMAC-SHA256}",
        SignatureError::Stale => "timestamp is more than 300 s from the edge's clock",
        SignatureError::Mismatch => "does not match the program's stripe_webhook_secret",
    }
}
