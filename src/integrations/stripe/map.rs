//! One Stripe event to one conversion item, or the reason it books nothing (the module
//! doc has the table).

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::amount::decimal_of_minor;
use super::envelope::{Envelope, EnvelopeError};

/// What an event becomes.
#[derive(Debug, PartialEq)]
pub enum Mapped {
    /// A conversion item, as `POST /api/v1/conversions` takes one.
    Conversion(Map<String, Value>),
    /// Acknowledged, booking nothing: why (a metric label).
    Ignored(&'static str),
}

type Object = Map<String, Value>;

/// Maps `event` for `program_id`; an error names the event's field that is missing or
/// not what Stripe sends.
pub fn map(event: &Envelope<'_>, program_id: &str) -> Result<Mapped, EnvelopeError> {
    let mapped = match event.kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout(event.object)?
        }
        "invoice.paid" => invoice(event.object)?,
        "charge.refunded" => refund(event.object, event.previous)?,
        _ => Mapped::Ignored("unmapped_type"),
    };
    let Mapped::Conversion(mut item) = mapped else {
        return Ok(mapped);
    };
    item.insert("program_id".into(), program_id.into());
    item.insert("occurred_at".into(), occurred_at(event.created)?.into());
    Ok(Mapped::Conversion(item))
}

/// A Checkout Session: the sale (or signup) with the visitor's click.
fn checkout(s: &Object) -> Result<Mapped, EnvelopeError> {
    match text(s, "payment_status") {
        Some("paid" | "no_payment_required") => {}
        // Delayed methods: `checkout.session.async_payment_succeeded` follows.
        _ => return Ok(Mapped::Ignored("unpaid")),
    }
    let amount = match s.get("amount_total") {
        None | Some(Value::Null) => 0,
        Some(_) => minor(s, "amount_total")?,
    };
    let session = required_id(s, "id")?;
    let (kind, order) = if amount == 0 {
        ("signup", session.to_string())
    } else if text(s, "mode") == Some("subscription") {
        // The first invoice is the order, so its `invoice.paid` is this same sale.
        (
            "sale",
            id_of(s.get("invoice")).unwrap_or(session).to_string(),
        )
    } else {
        let intent = id_of(s.get("payment_intent"));
        ("sale", intent.unwrap_or(session).to_string())
    };
    let mut item = base(kind, order, s, amount)?;
    let metadata = s.get("metadata").and_then(Value::as_object);
    put_click(
        &mut item,
        [text(s, "client_reference_id"), tl_click(metadata)],
    );
    let details = s.get("customer_details").and_then(Value::as_object);
    put_email(&mut item, details.and_then(|d| text(d, "email")));
    put_country(&mut item, details.and_then(|d| d.get("address")));
    put_promo(&mut item, promotion_codes(s.get("discounts")));
    put_metadata(&mut item, &[metadata]);
    Ok(Mapped::Conversion(item))
}

/// A paid invoice: a subscription's first is a sale, its later ones recurring payments.
fn invoice(i: &Object) -> Result<Mapped, EnvelopeError> {
    let amount = minor(i, "amount_paid")?;
    if amount == 0 {
        return Ok(Mapped::Ignored("nothing_paid"));
    }
    let subscription = subscription_details(i);
    let has_subscription = id_of(i.get("subscription")).is_some() || subscription.is_some();
    let first = !has_subscription || text(i, "billing_reason") == Some("subscription_create");
    let kind = if first { "sale" } else { "recurring" };
    let mut item = base(kind, required_id(i, "id")?.to_string(), i, amount)?;
    let sub_meta = subscription
        .and_then(|d| d.get("metadata"))
        .and_then(Value::as_object);
    let own_meta = i.get("metadata").and_then(Value::as_object);
    put_email(&mut item, text(i, "customer_email"));
    put_country(&mut item, i.get("customer_address"));
    put_metadata(&mut item, &[sub_meta, own_meta]);
    if first {
        put_click(&mut item, [tl_click(own_meta), tl_click(sub_meta)]);
        let codes = promotion_codes(i.get("discounts"))
            .or_else(|| promotion_code(i.get("discount")?.get("promotion_code")?));
        put_promo(&mut item, codes);
    }
    Ok(Mapped::Conversion(item))
}

/// The subscription an invoice belongs to: `subscription_details` (API versions up to
/// 2025-02), `parent.subscription_details` (since).
fn subscription_details(i: &Object) -> Option<&Object> {
    let parent = i.get("parent").and_then(|p| p.get("subscription_details"));
    i.get("subscription_details")
        .filter(|d| !d.is_null())
        .or(parent)
        .and_then(Value::as_object)
}

/// A refunded charge: what this event refunded, against the charge's order.
fn refund(c: &Object, previous: Option<&Object>) -> Result<Mapped, EnvelopeError> {
    let total = minor(c, "amount_refunded")?;
    let before = match previous.and_then(|p| p.get("amount_refunded")) {
        None => 0,
        Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
            EnvelopeError::new(
                "data.previous_attributes.amount_refunded",
                "must be a non-negative integer",
            )
        })?,
    };
    if total <= before {
        return Ok(Mapped::Ignored("nothing_refunded"));
    }
    let charge = required_id(c, "id")?;
    // One order per refunded total: a redelivery is the same order, a second refund not.
    let order = format!("{charge}/refunded/{total}");
    let mut item = base("refund", order, c, total - before)?;
    let original = id_of(c.get("invoice"))
        .or_else(|| id_of(c.get("payment_intent")))
        .unwrap_or(charge);
    item.insert("original_order_id".into(), original.into());
    Ok(Mapped::Conversion(item))
}

/// Kind, order, amount, currency and customer, common to every mapped object.
fn base(kind: &str, order: String, o: &Object, amount: i64) -> Result<Object, EnvelopeError> {
    let mut item = Object::new();
    item.insert("kind".into(), kind.into());
    item.insert("order_id".into(), order.into());
    if amount > 0 || o.get("currency").is_some_and(|c| !c.is_null()) {
        let currency = currency(o)?;
        item.insert(
            "amount".into(),
            decimal_of_minor(amount, &currency).to_string().into(),
        );
        item.insert("currency".into(), currency.into());
    }
    if let Some(customer) = id_of(o.get("customer")) {
        item.insert("customer_id".into(), customer.into());
    }
    Ok(item)
}

fn occurred_at(created: i64) -> Result<String, EnvelopeError> {
    DateTime::from_timestamp(created, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .ok_or_else(|| EnvelopeError::new("created", "is not a time"))
}

fn text<'a>(o: &'a Object, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An expandable field: the id, or the expanded object's `id`.
fn id_of(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(o) => text(o, "id"),
        _ => None,
    }
}

fn required_id<'a>(o: &'a Object, key: &str) -> Result<&'a str, EnvelopeError> {
    text(o, key).ok_or_else(|| EnvelopeError::new(format!("data.object.{key}"), "is required"))
}

/// A non-negative integer amount in minor units.
fn minor(o: &Object, key: &str) -> Result<i64, EnvelopeError> {
    o.get(key)
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            EnvelopeError::new(
                format!("data.object.{key}"),
                "must be a non-negative integer of minor units",
            )
        })
}

fn currency(o: &Object) -> Result<String, EnvelopeError> {
    text(o, "currency")
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(str::to_ascii_uppercase)
        .ok_or_else(|| {
            EnvelopeError::new("data.object.currency", "must be a three-letter ISO code")
        })
}

fn tl_click(metadata: Option<&Object>) -> Option<&str> {
    metadata.and_then(|m| text(m, "tl_click"))
}

/// The first candidate that is a UUID: merchants also use `client_reference_id` for
/// their carts, which is no click.
fn put_click(item: &mut Object, candidates: [Option<&str>; 2]) {
    let click = candidates
        .into_iter()
        .flatten()
        .find(|c| Uuid::parse_str(c).is_ok());
    if let Some(c) = click {
        item.insert("click_id".into(), c.into());
    }
}

/// The e-mail as the fraud rules compare it (SPEC §5.8): SHA-256 of its lower case.
fn put_email(item: &mut Object, email: Option<&str>) {
    if let Some(e) = email {
        let digest = Sha256::digest(e.trim().to_lowercase().as_bytes());
        item.insert("customer_email_sha256".into(), hex::encode(digest).into());
    }
}

fn put_country(item: &mut Object, address: Option<&Value>) {
    let country = address
        .and_then(Value::as_object)
        .and_then(|a| text(a, "country"));
    if let Some(c) = country.filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        item.insert("country".into(), c.to_ascii_uppercase().into());
    }
}

fn put_promo(item: &mut Object, code: Option<&str>) {
    if let Some(c) = code {
        item.insert("promo_code".into(), c.into());
    }
}

/// The first promotion code of a `discounts` list: an expanded one's `code`, else its id.
fn promotion_codes(discounts: Option<&Value>) -> Option<&str> {
    discounts?
        .as_array()?
        .iter()
        .find_map(|d| promotion_code(d.get("promotion_code")?))
}

fn promotion_code(p: &Value) -> Option<&str> {
    match p {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(o) => text(o, "code").or_else(|| text(o, "id")),
        _ => None,
    }
}

/// What reward rules may read of Stripe's metadata: the pairs within SPEC §10.1's
/// bounds (1-64 bytes, no control characters, at most 16, by key), touchline's own
/// `tl_` keys left out. Later maps win.
fn put_metadata(item: &mut Object, maps: &[Option<&Object>]) {
    let fits = |s: &str| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control);
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in maps.iter().flatten().flat_map(|m| m.iter()) {
        if let Some(v) = v
            .as_str()
            .filter(|v| fits(v) && fits(k) && !k.starts_with("tl_"))
        {
            out.insert(k.clone(), Value::from(v));
        }
    }
    if !out.is_empty() {
        let kept: Object = out.into_iter().take(16).collect();
        item.insert("metadata".into(), Value::Object(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/stripe/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn mapped(event: &Value) -> Mapped {
        map(&Envelope::of(event).unwrap(), "acme").unwrap()
    }

    fn item(event: &Value) -> Value {
        match mapped(event) {
            Mapped::Conversion(o) => Value::Object(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_subscription_checkout_is_the_sale_of_its_first_invoice() {
        let checkout = item(&fixture("checkout.session.completed"));
        assert_eq!(
            checkout,
            json!({"program_id": "acme", "kind": "sale", "order_id": "in_1PqRsTLkdIwHu7ixFirst",
                "amount": "29.00", "currency": "USD", "customer_id": "cus_QhPxDqZXr7L0Ks",
                "click_id": "0193a3b2-7c4e-7000-8000-000000000001",
                "customer_email_sha256": hex::encode(Sha256::digest(b"jenny.rosen@example.com")),
                "country": "DE", "promo_code": "promo_1PqRsTLkdIwHu7ixSPRING",
                "metadata": {"plan": "pro"}, "occurred_at": "2024-08-30T06:40:00Z"})
        );
        // The invoice's delivery is the same sale (key) with the same click.
        let invoice = item(&fixture("invoice.paid"));
        for k in [
            "kind",
            "order_id",
            "amount",
            "currency",
            "customer_id",
            "click_id",
        ] {
            assert_eq!(invoice[k], checkout[k], "{k}");
        }
    }

    #[test]
    fn payment_mode_checkouts_are_the_order_of_their_payment_intent() {
        let mut e = fixture("checkout.session.completed");
        let s = &mut e["data"]["object"];
        s["mode"] = "payment".into();
        s["invoice"] = Value::Null;
        s["payment_intent"] = json!({"id": "pi_9", "object": "payment_intent"});
        s["client_reference_id"] = "cart-77".into();
        s["metadata"] = json!({"tl_click": "0193a3b2-7c4e-7000-8000-000000000002"});
        let i = item(&e);
        assert_eq!(i["order_id"], "pi_9");
        // A cart id is not a click; the metadata's is.
        assert_eq!(i["click_id"], "0193a3b2-7c4e-7000-8000-000000000002");
        s_zero(&mut e);
        let i = item(&e);
        assert_eq!(
            (i["kind"].as_str(), i["amount"].as_str()),
            (Some("signup"), Some("0.00"))
        );
        e["data"]["object"]["payment_status"] = "unpaid".into();
        assert_eq!(mapped(&e), Mapped::Ignored("unpaid"));
    }

    fn s_zero(e: &mut Value) {
        e["data"]["object"]["amount_total"] = 0.into();
    }

    #[test]
    fn later_invoices_are_recurring_payments_without_click_or_code() {
        let mut e = fixture("invoice.paid");
        let i = &mut e["data"]["object"];
        i["billing_reason"] = "subscription_cycle".into();
        i["id"] = "in_2".into();
        i["discount"] = json!({"promotion_code": "promo_x"});
        let r = item(&e);
        assert_eq!(r["kind"], "recurring");
        assert!(r.get("click_id").is_none() && r.get("promo_code").is_none());
        // Newer API versions keep the subscription under `parent`.
        let i = &mut e["data"]["object"];
        i["subscription"] = Value::Null;
        i["subscription_details"] = Value::Null;
        i["parent"] = json!({"subscription_details": {"subscription": "sub_1", "metadata": {}}});
        assert_eq!(item(&e)["kind"], "recurring");
        e["data"]["object"]["amount_paid"] = 0.into();
        assert_eq!(mapped(&e), Mapped::Ignored("nothing_paid"));
    }

    #[test]
    fn refunds_book_the_newly_refunded_amount_against_the_invoice() {
        let mut e = fixture("charge.refunded");
        let r = item(&e);
        assert_eq!(r["kind"], "refund");
        assert_eq!(r["amount"], "10.00");
        assert_eq!(r["original_order_id"], "in_1PqRsTLkdIwHu7ixThird");
        assert_eq!(r["order_id"], "ch_3PqRsTLkdIwHu7ix0Third/refunded/1000");
        // A second refund of the same charge: only its delta, under another order.
        e["data"]["object"]["amount_refunded"] = 2900.into();
        e["data"]["previous_attributes"] = json!({"amount_refunded": 1000, "refunded": false});
        let r = item(&e);
        assert_eq!(
            (r["amount"].as_str(), r["order_id"].as_str()),
            (
                Some("19.00"),
                Some("ch_3PqRsTLkdIwHu7ix0Third/refunded/2900")
            )
        );
        e["data"]["previous_attributes"] = json!({"amount_refunded": 2900});
        assert_eq!(mapped(&e), Mapped::Ignored("nothing_refunded"));
    }

    #[test]
    fn zero_decimal_currencies_are_whole_units() {
        let mut e = fixture("invoice.paid");
        e["data"]["object"]["currency"] = "jpy".into();
        e["data"]["object"]["amount_paid"] = 5000.into();
        assert_eq!(item(&e)["amount"], "5000");
    }

    #[test]
    fn unmapped_types_are_acknowledged() {
        assert_eq!(
            mapped(&fixture("customer.created")),
            Mapped::Ignored("unmapped_type")
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let mut e = fixture("invoice.paid");
        e["data"]["object"]["amount_paid"] = json!(-5);
        let err = map(&Envelope::of(&e).unwrap(), "acme").unwrap_err();
        assert_eq!(err.field, "data.object.amount_paid");
        e["data"]["object"]["amount_paid"] = json!("29.00");
        assert!(map(&Envelope::of(&e).unwrap(), "acme").is_err());
        e["data"]["object"]["amount_paid"] = 1.into();
        e["data"]["object"]["currency"] = json!("usdollar");
        let err = map(&Envelope::of(&e).unwrap(), "acme").unwrap_err();
        assert_eq!(err.field, "data.object.currency");
        assert_eq!(
            Envelope::of(&json!({"id": "evt"})).unwrap_err().field,
            "type"
        );
        assert_eq!(
            Envelope::of(&json!({"id": "e", "type": "t", "created": 1}))
                .unwrap_err()
                .field,
            "data.object"
        );
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![
                "paid",
                "subscription",
                "usd",
                "jpy",
                "in_1",
                "subscription_create",
                "0193a3b2-7c4e-7000-8000-000000000001",
                "",
                "x\u{0}",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop::sample::select(vec![
                "id",
                "amount_total",
                "amount_paid",
                "amount_refunded",
                "currency",
                "mode",
                "payment_status",
                "invoice",
                "payment_intent",
                "customer",
                "discounts",
                "promotion_code",
                "metadata",
                "tl_click",
                "subscription",
                "parent",
                "subscription_details",
                "billing_reason",
                "customer_details",
                "address",
                "country",
                "discount",
                "client_reference_id",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(keys, inner, 0..8).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a signed body holds, mapping answers (a conversion, an ignore or a
        /// named error) and never panics.
        #[test]
        fn arbitrary_objects_never_panic(
            object in arbitrary_json(),
            previous in arbitrary_json(),
            kind in proptest::sample::select(vec!["checkout.session.completed", "invoice.paid", "charge.refunded", "x"]),
            created in proptest::prelude::any::<i64>(),
        ) {
            let event = json!({"id": "evt_1", "type": kind, "created": created,
                "data": {"object": object, "previous_attributes": previous}});
            if let Ok(env) = Envelope::of(&event) {
                let _ = map(&env, "acme");
            }
        }
    }
}
