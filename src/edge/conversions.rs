//! `POST /api/v1/conversions` (SPEC §3.2): signed intake of merchant conversions.
//!
//! Order of checks: size (413) → JSON shape (400) → program (400) → signature (401) →
//! fields (400) → publish (202 once acknowledged, 503 when the broker is away). Nothing
//! is published unless every item of an array is valid.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::Edge;
use crate::events::{to_millis, ConversionEvent, ConversionKind, EVENT_VERSION};
use crate::http::{self, ApiError, HttpResponse, MAX_BODY_BYTES};
use crate::metrics as m;
use crate::money::{self, AmountError};
use crate::registry::Program;
use crate::signature::{self, SignatureError};

/// Most conversions in one request.
pub const MAX_BATCH: usize = 1000;

/// The fields a conversion may have.
pub(crate) const FIELDS: &[&str] = &[
    "program_id",
    "order_id",
    "kind",
    "amount",
    "currency",
    "occurred_at",
    "click_id",
    "visitor_id",
    "referral_code",
    "customer_id",
    "original_order_id",
    "customer_email_sha256",
    "country",
    "product_id",
    "metadata",
    "promo_code",
];

/// Why a request was refused: the metric's reason and the answer.
pub(super) type Rejection = (&'static str, ApiError);

fn reject(reason: &'static str, e: ApiError) -> HttpResponse {
    metrics::counter!(m::EDGE_CONVERSIONS_REJECTED_TOTAL, "reason" => reason).increment(1);
    e.into_response()
}

/// The request's body items, each an object, and whether it was an array (errors then
/// name the item).
fn items_of(body: &[u8]) -> Result<(Vec<Map<String, Value>>, bool), Rejection> {
    http::strict_json(body).map_err(|e| ("malformed", e))?;
    let malformed = |e: ApiError| ("malformed", e);
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok((vec![o], false)),
        Ok(Value::Array(a)) => {
            if a.is_empty() {
                return Err(malformed(ApiError::malformed("empty array")));
            }
            if a.len() > MAX_BATCH {
                let e = ApiError::too_large(format!("at most {MAX_BATCH} conversions per request"));
                return Err(("too_large", e));
            }
            let objects = a.into_iter().enumerate().map(|(i, v)| match v {
                Value::Object(o) => Ok(o),
                _ => Err(malformed(
                    ApiError::malformed("expected an object").in_item(i),
                )),
            });
            Ok((objects.collect::<Result<_, _>>()?, true))
        }
        Ok(_) => Err(malformed(ApiError::malformed(
            "expected a JSON object or array",
        ))),
        Err(e) => Err(malformed(ApiError::malformed(format!("invalid JSON: {e}")))),
    }
}

/// The one program all items name: its secret signs the whole body.
fn program_id_of(
    items: &[Map<String, Value>],
    at: impl Fn(ApiError, usize) -> ApiError,
) -> Result<&str, Rejection> {
    let mut program_id: Option<&str> = None;
    for (i, item) in items.iter().enumerate() {
        let invalid = |why: &str| ("invalid", at(ApiError::invalid("program_id", why), i));
        let id = match item.get("program_id") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid("must be a string")),
            None => return Err(invalid("is required")),
        };
        match program_id {
            None => program_id = Some(id),
            Some(p) if p != id => {
                return Err(invalid(
                    "all conversions of a request must share one program",
                ))
            }
            Some(_) => {}
        }
    }
    program_id.ok_or(("malformed", ApiError::malformed("empty array")))
}

impl Edge {
    pub(crate) async fn conversions(&self, req: Request<Incoming>) -> HttpResponse {
        let sig_header = req
            .headers()
            .get(signature::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match http::read_body(req, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(e) if e.status == StatusCode::REQUEST_TIMEOUT => return reject("timeout", e),
            Err(e) => return reject("too_large", e),
        };
        match self.accept(sig_header.as_deref(), &body).await {
            Ok(accepted) => http::json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "accepted": accepted }),
            ),
            Err((reason, e)) => reject(reason, e),
        }
    }

    /// Checks a signed body of conversions and publishes them all; how many.
    async fn accept(&self, sig_header: Option<&str>, body: &[u8]) -> Result<usize, Rejection> {
        let (items, is_batch) = items_of(body)?;
        let at = |e: ApiError, i: usize| if is_batch { e.in_item(i) } else { e };
        let program_id = program_id_of(&items, at)?;
        let Some(program) = self.registry.program(program_id) else {
            let e = ApiError::invalid("program_id", "unknown program");
            return Err(("unknown_program", at(e, 0)));
        };
        let now = Utc::now();
        let tolerance = self.config.edge.signature_tolerance_secs;
        if let Err(e) = signature::verify(
            &program.secret,
            sig_header,
            body,
            now.timestamp(),
            tolerance,
        ) {
            let reason = match e {
                SignatureError::Stale => "stale_signature",
                _ => "bad_signature",
            };
            return Err((reason, ApiError::unauthorized(e.to_string())));
        }
        let received_at = to_millis(now);
        // Read after the program: at least the version the events were checked with.
        let registry_version = self.registry.version();
        let events = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let e = parse_conversion(item, &program, received_at)
                    .map_err(|e| ("invalid", at(e, i)))?;
                Ok(ConversionEvent {
                    registry_version,
                    ..e
                })
            })
            .collect::<Result<Vec<_>, Rejection>>()?;
        self.publish(&events).await?;
        Ok(events.len())
    }

    /// Publishes the events as one batch; `2xx` only once the broker has them all.
    pub(super) async fn publish(&self, events: &[ConversionEvent]) -> Result<(), Rejection> {
        let batch = events
            .iter()
            .map(|e| {
                let payload = serde_json::to_vec(e).map_err(|err| {
                    let e = ApiError::internal(format!("cannot encode event: {err}"));
                    ("internal", e)
                })?;
                Ok((e.partition_key(), payload))
            })
            .collect::<Result<Vec<_>, Rejection>>()?;
        if let Err(e) = self.bus.publish_conversions(&batch).await {
            tracing::warn!(error = %e, "conversions not acknowledged");
            let e = ApiError::unavailable(format!("{e}; retry later"), 5);
            return Err(("unavailable", e));
        }
        for e in events {
            metrics::counter!(m::EDGE_CONVERSIONS_ACCEPTED_TOTAL, "kind" => e.kind.as_str())
                .increment(1);
        }
        Ok(())
    }
}

fn opt_string(
    item: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match item.get(field) {
        None | Some(Value::Null) => Ok(None),
        // An empty string is a mistake, not an absence: saying so beats guessing.
        Some(Value::String(s)) if s.is_empty() => Err(ApiError::invalid(
            field,
            "must not be empty (omit it or send null)",
        )),
        Some(Value::String(s)) if s.len() > max => Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        // CR, LF and NUL in an id end up in logs, CSV exports and headers.
        Some(Value::String(s)) if s.chars().any(char::is_control) => Err(ApiError::invalid(
            field,
            "must not contain control characters",
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, "must be a string or null")),
    }
}

fn opt_uuid(item: &Map<String, Value>, field: &'static str) -> Result<Option<Uuid>, ApiError> {
    opt_string(item, field, 64)?
        .map(|s| Uuid::parse_str(&s).map_err(|_| ApiError::invalid(field, "must be a UUID")))
        .transpose()
}

/// Validates one conversion object into an event; the error names the field.
pub fn parse_conversion(
    item: &Map<String, Value>,
    program: &Program,
    received_at: DateTime<Utc>,
) -> Result<ConversionEvent, ApiError> {
    if let Some(unknown) = item.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(unknown.clone(), "unknown field"));
    }
    let order_id = opt_string(item, "order_id", 256)?
        .ok_or_else(|| ApiError::invalid("order_id", "is required"))?;
    let kind_str =
        opt_string(item, "kind", 16)?.ok_or_else(|| ApiError::invalid("kind", "is required"))?;
    let kind = ConversionKind::parse(&kind_str).ok_or_else(|| {
        ApiError::invalid(
            "kind",
            "must be one of sale, lead, signup, recurring, refund",
        )
    })?;
    let amount = amount_of(item, kind)?;
    let currency = opt_string(item, "currency", 3)?.unwrap_or_else(|| program.currency.clone());
    settles_in(program, amount, &currency)?;
    let occurred_at = occurred_at_of(item, received_at)?;
    let click_id = opt_uuid(item, "click_id")?;
    let visitor_id = opt_uuid(item, "visitor_id")?;
    let referral_code = opt_string(item, "referral_code", 64)?;
    let customer_id = opt_string(item, "customer_id", 256)?;
    let original_order_id = opt_string(item, "original_order_id", 256)?;
    let customer_email_sha256 = opt_string(item, "customer_email_sha256", 64)?;
    if customer_email_sha256
        .as_deref()
        .is_some_and(|h| !crate::engine::fraud::valid_sha256_hex(h))
    {
        return Err(ApiError::invalid(
            "customer_email_sha256",
            "must be 64 lower-case hex digits (SHA-256 of the lower-cased e-mail)",
        ));
    }
    let (country, product_id, metadata) = reward_fields(item)?;
    let promo_code = opt_string(item, "promo_code", 64)?;
    let event = ConversionEvent {
        v: EVENT_VERSION,
        conversion_id: Uuid::now_v7(),
        program_id: program.id.clone(),
        order_id,
        kind,
        amount,
        currency,
        occurred_at,
        received_at,
        click_id,
        visitor_id,
        referral_code,
        customer_id,
        original_order_id,
        registry_version: 0,
        customer_email_sha256,
        country,
        product_id,
        metadata,
        promo_code,
    };
    links_required(&event)?;
    Ok(event)
}

/// A conversion's country, product id and metadata.
type RewardFields = (Option<String>, Option<String>, BTreeMap<String, String>);

/// What reward rules read (SPEC §10.1): `country` (ISO 3166-1 alpha-2, stored upper
/// case), `product_id`, and `metadata` of at most 16 string pairs of at most 64 bytes.
fn reward_fields(item: &Map<String, Value>) -> Result<RewardFields, ApiError> {
    let country = opt_string(item, "country", 2)?;
    if country
        .as_deref()
        .is_some_and(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(ApiError::invalid(
            "country",
            "must be an ISO 3166-1 alpha-2 code such as \"DE\"",
        ));
    }
    let product_id = opt_string(item, "product_id", 64)?;
    let metadata = match item.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) if m.len() <= 16 => {
            let mut out = BTreeMap::new();
            let text = |s: &str| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control);
            for (k, v) in m {
                // A hostile key is not echoed back.
                let field = if text(k) {
                    format!("metadata.{k}")
                } else {
                    "metadata".to_string()
                };
                match v {
                    Value::String(s) if text(k) && text(s) => out.insert(k.clone(), s.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            field,
                            "keys and values are strings of 1 to 64 bytes, no control characters",
                        ))
                    }
                };
            }
            out
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata",
                "must be an object of at most 16 string keys and values",
            ))
        }
    };
    Ok((
        country.map(|c| c.to_ascii_uppercase()),
        product_id,
        metadata,
    ))
}

/// The amount: a decimal string (numbers lose precision); leads and signups may omit it.
fn amount_of(item: &Map<String, Value>, kind: ConversionKind) -> Result<Decimal, ApiError> {
    match item.get("amount") {
        Some(Value::String(s)) => money::parse_amount(s).map_err(|e| {
            let msg = match e {
                AmountError::NotDecimal => {
                    "must be a decimal string such as \"129.99\"".to_string()
                }
                other => other.to_string(),
            };
            ApiError::invalid("amount", msg)
        }),
        // Leads and signups often carry no amount.
        None | Some(Value::Null)
            if matches!(kind, ConversionKind::Lead | ConversionKind::Signup) =>
        {
            Ok(Decimal::ZERO)
        }
        None | Some(Value::Null) => Err(ApiError::invalid("amount", "is required")),
        Some(_) => Err(ApiError::invalid(
            "amount",
            "must be a decimal string such as \"129.99\" (numbers lose precision)",
        )),
    }
}

/// The currency is in the program's FX table and the settled amount within the
/// ledger's bound.
fn settles_in(program: &Program, amount: Decimal, currency: &str) -> Result<(), ApiError> {
    let Some(rate) = program.fx.get(currency) else {
        return Err(ApiError::invalid(
            "currency",
            "is not in the program's FX table",
        ));
    };
    if amount
        .checked_mul(*rate)
        .is_none_or(|settled| settled > crate::money::max_settled())
    {
        return Err(ApiError::invalid(
            "amount",
            "is too large: amount × fx must be at most 10000000000000 in the program currency",
        ));
    }
    Ok(())
}

/// `occurred_at`, the edge's clock when absent, from 2000 to one day ahead.
fn occurred_at_of(
    item: &Map<String, Value>,
    received_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    let occurred_at = match opt_string(item, "occurred_at", 64)? {
        None => received_at,
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| to_millis(t.with_timezone(&Utc)))
            .map_err(|_| ApiError::invalid("occurred_at", "must be an RFC 3339 timestamp"))?,
    };
    let earliest = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
    if earliest.is_some_and(|e| occurred_at < e)
        || occurred_at > received_at + chrono::Duration::days(1)
    {
        return Err(ApiError::invalid(
            "occurred_at",
            "must be from 2000-01-01 to one day ahead of the edge's clock",
        ));
    }
    Ok(occurred_at)
}

/// Recurring payments name their customer, refunds their order.
fn links_required(e: &ConversionEvent) -> Result<(), ApiError> {
    match e.kind {
        ConversionKind::Recurring if e.customer_id.is_none() => Err(ApiError::invalid(
            "customer_id",
            "is required for recurring payments",
        )),
        ConversionKind::Refund if e.original_order_id.is_none() => Err(ApiError::invalid(
            "original_order_id",
            "is required for refunds",
        )),
        ConversionKind::Recurring | ConversionKind::Refund if e.promo_code.is_some() => Err(
            ApiError::invalid("promo_code", "is for sales, leads and signups only"),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program() -> Program {
        let mut p: Program =
            serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
        p.id = "acme".into();
        p.validate().unwrap();
        p
    }

    fn parse(v: Value) -> Result<ConversionEvent, ApiError> {
        let Value::Object(o) = v else { panic!() };
        parse_conversion(&o, &program(), Utc::now())
    }

    fn field_of(v: Value) -> String {
        parse(v).unwrap_err().field.unwrap()
    }

    #[test]
    fn valid_sale() {
        let e = parse(
            json!({"program_id": "acme", "order_id": "INV-1", "kind": "sale", "amount": "129.99",
            "currency": "EUR", "occurred_at": "2026-11-20T10:15:00Z",
            "click_id": "0193a3b2-7c4e-7000-8000-000000000001", "visitor_id": null,
            "referral_code": null, "customer_id": "c-42", "original_order_id": null}),
        )
        .unwrap();
        assert_eq!(e.amount.to_string(), "129.99");
        assert_eq!(e.kind, ConversionKind::Sale);
        assert_eq!(e.conversion_id.get_version_num(), 7);
    }

    #[test]
    fn field_errors() {
        let base = json!({"program_id": "acme", "order_id": "1", "kind": "sale", "amount": "1.00", "currency": "USD"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(field_of(with("amount", json!("-1"))), "amount");
        assert_eq!(field_of(with("amount", json!("1.00001"))), "amount");
        assert_eq!(field_of(with("amount", json!(1.5))), "amount");
        assert_eq!(field_of(with("currency", json!("GBP"))), "currency");
        assert_eq!(field_of(with("kind", json!("purchase"))), "kind");
        assert_eq!(field_of(with("order_id", json!(5))), "order_id");
        assert_eq!(field_of(with("click_id", json!("nope"))), "click_id");
        assert_eq!(
            field_of(with("occurred_at", json!("yesterday"))),
            "occurred_at"
        );
        assert_eq!(field_of(with("surprise", json!(1))), "surprise");
        assert_eq!(field_of(with("kind", json!("recurring"))), "customer_id");
        assert_eq!(field_of(with("kind", json!("refund"))), "original_order_id");
        // Empty strings are mistakes, not absences (SPEC §7).
        assert_eq!(field_of(with("currency", json!(""))), "currency");
        assert_eq!(field_of(with("order_id", json!("a\r\nb"))), "order_id");
        assert_eq!(
            field_of(with("customer_id", json!("c\u{0}"))),
            "customer_id"
        );
        assert_eq!(field_of(with("occurred_at", json!(""))), "occurred_at");
        // Event times a ClickHouse DateTime cannot hold, or far ahead of the edge.
        for t in [
            "0000-01-01T00:00:00Z",
            "1999-12-31T23:59:59Z",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(
                field_of(with("occurred_at", json!(t))),
                "occurred_at",
                "{t}"
            );
        }
        let ahead = (Utc::now() + chrono::Duration::hours(23))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert!(parse(with("occurred_at", json!(ahead))).is_ok());
    }

    #[test]
    fn settlement_amounts_are_bounded() {
        // ¥ at 0.006571: 10^14 − 1 yen settles well under the bound; 10^12 EUR does not.
        let sale = |amount: &str, currency: &str| json!({"program_id": "acme", "order_id": "1", "kind": "sale", "amount": amount, "currency": currency});
        assert!(parse(sale("99999999999999", "JPY")).is_ok());
        assert_eq!(field_of(sale("10000000000000", "EUR")), "amount");
        assert!(parse(sale("9000000000000", "USD")).is_ok());
    }
}
