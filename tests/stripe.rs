//! Stripe intake on the real stack (SPEC §11.1): Stripe's documented payloads
//! (`tests/fixtures/stripe/`), signed as Stripe signs, through the edge and the pipeline
//! into the ledger; a subscription story equals the same story posted as signed
//! conversions, row for row; redeliveries book nothing; bad signatures are `400`.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

const WHSEC: &str = "whsec_test_0123456789abcdefghij";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Posts `body` to the program's Stripe endpoint with `signature` as `Stripe-Signature`.
async fn deliver_raw(url: &str, program: &str, body: &str, signature: &str) -> Resp {
    send(
        Method::POST,
        &format!("{url}/api/v1/integrations/stripe/{program}"),
        &[
            ("stripe-signature", signature),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Signs as Stripe does: a `v1` of the secret, here beside a stale `v0` and a `v1` of
/// a rolled secret, which the edge must skip.
fn stripe_signature(secret: &str, t: i64, body: &str) -> String {
    let good = touchline::signature::sign(secret, t, body.as_bytes());
    let old = touchline::signature::sign("whsec_rolled_away_0000000000", t, body.as_bytes());
    let old_v1 = old.split("v1=").nth(1).unwrap();
    format!(
        "{good},v1={old_v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    )
}

async fn deliver(url: &str, event: &Value) -> Resp {
    let body = event.to_string();
    let t = chrono::Utc::now().timestamp();
    deliver_raw(url, "acme", &body, &stripe_signature(WHSEC, t, &body)).await
}

/// Programs `acme` (with a Stripe endpoint) and `hand` (without), each with a partner
/// and a link; the click id of one click through each.
async fn two_programs(url: &str) -> (String, String) {
    for (program, partner, code, stripe) in [
        ("acme", "alice", "alice-stripe", Some(WHSEC)),
        ("hand", "hank", "hank-hand", None),
    ] {
        let mut p = program_json();
        if let Some(s) = stripe {
            p["stripe_webhook_secret"] = s.into();
        }
        let shown = seed_program(url, program, p, (partner, code, "https://acme.example/")).await;
        assert_eq!(
            shown.get("stripe_webhook_secret").map(|s| s == "(hidden)"),
            stripe.map(|_| true)
        );
    }
    let ua = "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0";
    (
        click_through(url, "alice-stripe", ua).await,
        click_through(url, "hank-hand", ua).await,
    )
}

/// The subscription story as Stripe delivers it: the checkout and its first invoice
/// (one sale), two later invoices, a partial refund of the third.
fn stripe_story(click: &str, t: i64) -> Vec<Value> {
    let mut checkout = fixture("checkout.session.completed");
    checkout["created"] = t.into();
    checkout["data"]["object"]["client_reference_id"] = click.into();
    let mut invoices = Vec::new();
    for (n, reason) in [
        (1, "subscription_create"),
        (2, "subscription_cycle"),
        (3, "subscription_cycle"),
    ] {
        let mut e = fixture("invoice.paid");
        e["id"] = format!("evt_invoice_{n}").into();
        e["created"] = (t + n).into();
        let i = &mut e["data"]["object"];
        i["id"] = format!("in_{n}").into();
        i["billing_reason"] = reason.into();
        i["subscription_details"]["metadata"]["tl_click"] = click.into();
        invoices.push(e);
    }
    checkout["data"]["object"]["invoice"] = "in_1".into();
    let mut refund = fixture("charge.refunded");
    refund["created"] = (t + 4).into();
    refund["data"]["object"]["invoice"] = "in_3".into();
    let mut story = vec![checkout];
    story.extend(invoices);
    story.push(refund);
    story
}

/// The same story as a merchant would post it by hand.
fn hand_story(click: &str, t: i64) -> Value {
    let at = |s: i64| {
        chrono::DateTime::from_timestamp(t + s, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let c = "cus_QhPxDqZXr7L0Ks";
    json!([
        {"program_id": "hand", "order_id": "in_1", "kind": "sale", "amount": "29.00", "currency": "USD",
         "click_id": click, "customer_id": c, "occurred_at": at(0), "country": "DE",
         "promo_code": "promo_1PqRsTLkdIwHu7ixSPRING", "metadata": {"plan": "pro"}},
        {"program_id": "hand", "order_id": "in_2", "kind": "recurring", "amount": "29.00", "currency": "USD",
         "customer_id": c, "occurred_at": at(2)},
        {"program_id": "hand", "order_id": "in_3", "kind": "recurring", "amount": "29.00", "currency": "USD",
         "customer_id": c, "occurred_at": at(3)},
        {"program_id": "hand", "order_id": "ch_3PqRsTLkdIwHu7ix0Third/refunded/1000", "kind": "refund",
         "amount": "10.00", "currency": "USD", "original_order_id": "in_3", "customer_id": c,
         "occurred_at": at(4)}
    ])
}

/// The program's ledger without its ids: order, kind, level, amount, status, reason.
async fn ledger(config: &touchline::config::Config, program: &str) -> Vec<String> {
    let sql = format!(
        "SELECT c.order_id, m.kind, m.level, m.amount, m.status, m.reason \
         FROM commissions AS m FINAL ANY INNER JOIN \
         (SELECT conversion_id, order_id FROM conversions FINAL WHERE program_id = '{program}') AS c \
         USING conversion_id WHERE m.program_id = '{program}' ORDER BY c.order_id, m.level"
    );
    ch_query(config, &sql)
        .await
        .iter()
        .map(|r| r.join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_subscription_books_what_signed_conversions_book() {
    let (config, edge, pipeline, url) = live().await;
    let (click_a, click_h) = two_programs(&url).await;
    let t = chrono::Utc::now().timestamp() - 60;
    let story = stripe_story(&click_a, t);
    let mut booked = Vec::new();
    for event in &story {
        let r = deliver(&url, event).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        booked.push(r.json()["booked"]["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(booked, ["sale", "sale", "recurring", "recurring", "refund"]);
    // Stripe redelivers: the same events again book nothing more.
    for event in [&story[0], &story[2]] {
        assert_eq!(deliver(&url, event).await.status, StatusCode::OK);
    }
    let r = post_conversions(&url, &hand_story(&click_h, t).to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM conversions FINAL",
        11,
        Duration::from_secs(60),
    )
    .await;
    for p in ["acme", "hand"] {
        let sql = format!("SELECT count() FROM commissions FINAL WHERE program_id = '{p}'");
        wait_count(&config, &sql, 4, Duration::from_secs(30)).await;
    }
    let stripe = ledger(&config, "acme").await;
    assert_eq!(stripe, ledger(&config, "hand").await);
    assert_eq!(stripe.len(), 4, "{stripe:?}");
    assert!(stripe[1].starts_with("in_1 "), "{stripe:?}");
    // The session's sale and its invoice's are one order: the later is a duplicate, as
    // are the redeliveries.
    let statuses = ch_query(
        &config,
        "SELECT order_id, kind, status FROM conversions FINAL WHERE program_id = 'acme' \
         ORDER BY order_id, received_at",
    )
    .await;
    let dups = statuses.iter().filter(|r| r[2] == "duplicate").count();
    assert_eq!(dups, 3, "{statuses:?}");
    let attributed = ch_query(
        &config,
        &format!("SELECT partner_id FROM attributions FINAL WHERE program_id = 'acme' AND click_id = '{click_a}'"),
    )
    .await;
    assert_eq!(attributed, vec![vec!["alice".to_string()]]);
    let metrics = send(Method::GET, &format!("{url}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains(
            r#"touchline_edge_stripe_events_total{type="invoice.paid",outcome="booked"} 4"#
        ),
        "{text}"
    );
    pipeline.stop().await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_and_unknown_types_acknowledged() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    two_programs(&url).await;
    let body = fixture("invoice.paid").to_string();
    let now = chrono::Utc::now().timestamp();
    let refused = [
        ("no header", None),
        (
            "another secret",
            Some(touchline::signature::sign(
                "whsec_someone_else_0123456",
                now,
                body.as_bytes(),
            )),
        ),
        (
            "stale",
            Some(touchline::signature::sign(
                WHSEC,
                now - 301,
                body.as_bytes(),
            )),
        ),
        ("malformed", Some("t=now,v1=zz".to_string())),
    ];
    for (why, sig) in refused {
        let r = match &sig {
            Some(s) => deliver_raw(&url, "acme", &body, s).await,
            None => {
                let endpoint = format!("{url}/api/v1/integrations/stripe/acme");
                send(Method::POST, &endpoint, &[], body.clone()).await
            }
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], "Stripe-Signature", "{why}");
    }
    // A program without a Stripe secret answers as a missing one.
    for program in ["hand", "nobody"] {
        let r = deliver_raw(&url, program, &body, &stripe_signature(WHSEC, now, &body)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{program}");
    }
    let r = deliver(&url, &fixture("customer.created")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"received": true, "booked": null, "ignored": "unmapped_type"})
    );
    // Signed, but not what Stripe sends, or a conversion the program cannot take.
    let mut gbp = fixture("invoice.paid");
    gbp["data"]["object"]["currency"] = "gbp".into();
    let r = deliver(&url, &gbp).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "currency");
    let r = deliver(
        &url,
        &json!({"id": "evt_1", "type": "invoice.paid", "created": now}),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "data.object");
    let junk = "{\"id\": ";
    let r = deliver_raw(&url, "acme", junk, &stripe_signature(WHSEC, now, junk)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    edge.stop().await;
}
