//! A Stripe event's envelope: `id`, `type`, `created` and `data.object`, checked before
//! any of its object is read.

use serde_json::{Map, Value};

/// What a delivery is about.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// `evt_…`: logged with every outcome, so an operator can find the delivery in
    /// Stripe's dashboard.
    pub id: &'a str,
    pub kind: &'a str,
    /// Unix seconds: the conversion's event time.
    pub created: i64,
    pub object: &'a Map<String, Value>,
    /// `data.previous_attributes`: what an update changed (the refunded amount before).
    pub previous: Option<&'a Map<String, Value>>,
}

/// Why a body is not a Stripe event, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EnvelopeError {
    pub field: String,
    pub message: String,
}

impl EnvelopeError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        EnvelopeError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Longest `id` and `type` taken: Stripe's are far shorter.
const MAX_ID: usize = 255;

impl<'a> Envelope<'a> {
    pub fn of(event: &'a Value) -> Result<Self, EnvelopeError> {
        let text = |field: &'static str| match event.get(field) {
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= MAX_ID && !s.chars().any(char::is_control) =>
            {
                Ok(s.as_str())
            }
            _ => Err(EnvelopeError::new(
                field,
                "must be a string of 1-255 characters",
            )),
        };
        let id = text("id")?;
        let kind = text("type")?;
        let created = event
            .get("created")
            .and_then(Value::as_i64)
            .ok_or_else(|| EnvelopeError::new("created", "must be unix seconds"))?;
        let data = event.get("data");
        let object = data
            .and_then(|d| d.get("object"))
            .and_then(Value::as_object)
            .ok_or_else(|| EnvelopeError::new("data.object", "must be an object"))?;
        let previous = data
            .and_then(|d| d.get("previous_attributes"))
            .and_then(Value::as_object);
        Ok(Envelope {
            id,
            kind,
            created,
            object,
            previous,
        })
    }
}
