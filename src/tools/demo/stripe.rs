//! The integrations in the demo (SPEC §11): the shop's `tl.js`, and a subscription sold
//! through Stripe Checkout whose events Stripe posts to the edge, signed with the
//! program's endpoint secret. The merchant writes no signing code; the ledger rows they
//! booked are printed after the drain.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::Http;
use super::traffic::BROWSERS;
use super::{text, PROGRAM};

/// The demo program's Stripe endpoint secret (`whsec_…` in Stripe's dashboard).
pub(super) const STRIPE_SECRET: &str = "whsec_demo_shop_0123456789abcdef";

/// The partner whose video the subscriber came from (two override levels above it).
const PARTNER_LINK: &str = "ben-video";

const CUSTOMER: &str = "cus_DemoJapanSubscriber";

/// Fetches `tl.js` as a browser would and prints what the shop pastes.
async fn show_tljs(http: &Http) -> anyhow::Result<()> {
    let r = http.send(Method::GET, "/tl.js", &[], Vec::new()).await?;
    if r.status != StatusCode::OK {
        bail!("/tl.js answered {}", r.status);
    }
    println!();
    println!(
        "tl.js: {} bytes at {}/tl.js, cached a day by browsers; the shop pastes",
        r.body.len(),
        http.base
    );
    println!(
        "  <script src=\"{}/tl.js\" data-lookback-days=\"30\" defer></script>",
        http.base
    );
    println!("  and passes touchline.clickId() as client_reference_id to Stripe Checkout");
    Ok(())
}

/// One visitor through the partner's link: the click id the landing URL carries, which
/// tl.js keeps in a cookie until checkout.
async fn click_id(http: &Http) -> anyhow::Result<String> {
    let r = http
        .send(
            Method::GET,
            &format!("/r/{PARTNER_LINK}"),
            &[
                ("user-agent", BROWSERS[0].into()),
                ("x-forwarded-for", "203.0.113.77".into()),
            ],
            Vec::new(),
        )
        .await?;
    let location = r.location.context("the redirect has no Location")?;
    let click = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("tl_click="))
        .context("the redirect carries no tl_click")?;
    Ok(click.to_string())
}

/// What Stripe sends for a ¥4,980 monthly plan (JPY has no minor unit, so Stripe's
/// 4980 is 4,980 yen): the checkout, the first invoice (the same sale), the second
/// month's invoice and a refund of ¥1,000 of it.
fn events(click: &str, t: i64) -> Vec<Value> {
    let invoice = |n: i64, reason: &str| {
        json!({"id": format!("evt_demo_invoice_{n}"), "type": "invoice.paid", "created": t + n,
               "data": {"object": {"object": "invoice", "id": format!("in_demo_{n}"),
                 "customer": CUSTOMER, "subscription": "sub_demo_1", "billing_reason": reason,
                 "amount_paid": 4980, "currency": "jpy",
                 "subscription_details": {"metadata": {"tl_click": click}}}}})
    };
    vec![
        json!({"id": "evt_demo_checkout", "type": "checkout.session.completed", "created": t,
               "data": {"object": {"object": "checkout.session", "id": "cs_demo_1",
                 "mode": "subscription", "payment_status": "paid", "amount_total": 4980,
                 "currency": "jpy", "customer": CUSTOMER, "invoice": "in_demo_1",
                 "client_reference_id": click,
                 "customer_details": {"address": {"country": "JP"}}}}}),
        invoice(1, "subscription_create"),
        invoice(2, "subscription_cycle"),
        json!({"id": "evt_demo_refund", "type": "charge.refunded", "created": t + 3,
               "data": {"object": {"object": "charge", "id": "ch_demo_2", "customer": CUSTOMER,
                 "invoice": "in_demo_2", "amount": 4980, "amount_refunded": 1000,
                 "currency": "jpy"},
                 "previous_attributes": {"amount_refunded": 0}}}),
        json!({"id": "evt_demo_customer", "type": "customer.created", "created": t,
               "data": {"object": {"object": "customer", "id": CUSTOMER}}}),
    ]
}

/// Posts one event as Stripe does, `Stripe-Signature` over the raw body.
async fn deliver(http: &Http, event: &Value) -> anyhow::Result<Value> {
    let body = event.to_string();
    let now = chrono::Utc::now().timestamp();
    let signature = touchline::signature::sign(STRIPE_SECRET, now, body.as_bytes());
    let path = format!("/api/v1/integrations/stripe/{PROGRAM}");
    let headers = [
        ("stripe-signature", signature),
        ("content-type", "application/json".into()),
    ];
    let r = http
        .send(Method::POST, &path, &headers, body.into_bytes())
        .await?;
    let answer: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != StatusCode::OK {
        bail!("{path}: {} {answer}", r.status);
    }
    Ok(answer)
}

/// The conversions the Stripe events booked: conversion id → `{kind} {order}`.
pub(super) type Booked = BTreeMap<String, String>;

/// tl.js and the Stripe subscription; what it booked, for the ledger print.
pub(super) async fn stripe_story(http: &Http) -> anyhow::Result<Booked> {
    show_tljs(http).await?;
    let click = click_id(http).await?;
    println!("Stripe: a subscriber from /r/{PARTNER_LINK} (click {click}) pays ¥4,980 a month;");
    println!("  Stripe posts to /api/v1/integrations/stripe/{PROGRAM}:");
    let mut booked = Booked::new();
    for event in events(&click, chrono::Utc::now().timestamp() - 60) {
        let answer = deliver(http, &event).await?;
        let what = match &answer["booked"] {
            Value::Null => format!("ignored ({})", text(&answer["ignored"])),
            b => {
                let label = format!("{} {}", text(&b["kind"]), text(&b["order_id"]));
                let again = booked.values().any(|l| *l == label);
                booked.insert(text(&b["conversion_id"]), label.clone());
                if again {
                    format!(
                        "booked {label}: the checkout's order again, a duplicate earning nothing"
                    )
                } else {
                    format!("booked {label}")
                }
            }
        };
        println!("    {:<27} → 200 {what}", text(&event["type"]));
    }
    Ok(booked)
}

/// The ledger rows the Stripe events booked, from the embedded sink's files: the
/// direct commission, the two overrides above it, and the refund's reversals.
pub(super) fn print_ledger(dir: &std::path::Path, booked: &Booked) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Row<'a> {
        conversion_id: String,
        partner_id: String,
        level: u8,
        kind: &'a str,
        // JSONEachRow writes Decimal(18,4) as a number: read its text, never a float.
        #[serde(borrow)]
        base_amount: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        amount: &'a serde_json::value::RawValue,
        currency: String,
    }
    let text = std::fs::read_to_string(dir.join("commissions.jsonl"))?;
    println!();
    println!("the Stripe subscription's ledger rows (¥ at the program's rate of 0.006571 USD):");
    for line in text.lines() {
        let row: Row = serde_json::from_str(line)?;
        let Some(label) = booked.get(&row.conversion_id) else {
            continue;
        };
        let base: rust_decimal::Decimal = row.base_amount.get().parse()?;
        let amount: rust_decimal::Decimal = row.amount.get().parse()?;
        println!(
            "  {label:<30} {:<8} level {} {:<9} on {:>9} → {:>6} {}",
            row.partner_id,
            row.level,
            row.kind,
            base.normalize(),
            super::money(amount),
            row.currency
        );
    }
    Ok(())
}
