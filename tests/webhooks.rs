//! Webhooks on the real stack (SPEC §3.6), end to end: endpoints through the admin API,
//! the outbox the ledger fills, and delivery to a receiver. Events come from the ledger:
//! the pipeline publishes them with the rows it settles, review and payouts with their
//! steps; ids are stable, so a repeated payout publishes the same events again, and
//! delivery sends none of them twice; only subscribed types go out.
//! (tests/webhook_delivery.rs covers failing receivers and crashes.)

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_the_outbox_the_ledger_fills() {
    let config = config(&[("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2")]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    let url = url.trim_end_matches('/');
    let hook_url = format!("{url}/api/v1/programs/acme/webhooks/crm");
    let receiver = Receiver::start(Behavior::Ok).await;
    let hook = json!({"url": receiver.url("/touchline"), "secret": "whsec-0123456789abcdef",
        "events": ["commission.created", "commission.status_changed", "payout.created"]});

    // No program yet; then bad values name their field.
    let r = admin(Method::PUT, &hook_url, hook.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let mut program = program_json();
    program["hold_days"] = json!(0);
    program["fraud"] = json!({"review_above": "100"});
    let r = admin(Method::PUT, &format!("{url}/api/v1/programs/acme"), program).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for (field, bad) in [
        ("url", json!({"url": "ftp://crm.example/"})),
        ("secret", json!({"secret": "short"})),
        ("events", json!({"events": []})),
    ] {
        let mut body = hook.clone();
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let r = admin(Method::PUT, &hook_url, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], json!(field), "{:?}", r.body);
    }
    let r = admin(Method::PUT, &hook_url, hook.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let shown = r.json();
    assert_eq!(shown["url"], hook["url"]);
    assert!(shown.get("secret").is_none(), "the secret is write-only");
    assert_eq!(
        admin(Method::PUT, &hook_url, hook.clone()).await.status,
        StatusCode::OK
    );
    let listed = admin(
        Method::GET,
        &format!("{url}/api/v1/programs/acme/webhooks"),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert!(
        !String::from_utf8_lossy(&admin(Method::GET, &hook_url, Value::Null).await.body)
            .contains("whsec")
    );

    seed_partner_and_link(url).await;
    let pipeline = start_pipeline(&config);
    let delivery = start_webhooks(&config);

    // Gold 25%: 37.50 held for review, 10.00 approved at once.
    let sales = json!([
        {"program_id": "acme", "order_id": "S1", "kind": "sale", "amount": "150.00", "referral_code": "alice-spring"},
        {"program_id": "acme", "order_id": "S2", "kind": "sale", "amount": "40.00", "referral_code": "alice-spring"}
    ]);
    let r = post_conversions(url, &sales.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM commission_status FINAL",
        2,
        Duration::from_secs(60),
    )
    .await;
    let held = ch_query(
        &config,
        "SELECT toString(commission_id) FROM commission_status FINAL WHERE status = 'held'",
    )
    .await;
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/commissions/review"),
        json!({"program_id": "acme", "commission_ids": [held[0][0]], "action": "approve"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let up_to = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let payouts_url = format!("{url}/api/v1/payouts");
    let payout = |up_to: String| {
        admin(
            Method::POST,
            &payouts_url,
            json!({"program_id": "acme", "up_to": up_to}),
        )
    };
    let r = payout(up_to.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["lines"][0]["amount"], json!("47.5000"));

    let topic = &config.kafka.topics.webhooks;
    let events = read_topic(&config.kafka.brokers, topic, 6, Duration::from_secs(30)).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    // One partner: one key, one partition, the ledger's order. No conversion.settled:
    // nobody subscribed to it.
    assert_eq!(
        kinds,
        [
            "commission.created",
            "commission.created",
            "commission.status_changed",
            "commission.status_changed",
            "commission.status_changed",
            "payout.created"
        ],
        "{events:?}"
    );
    assert!(events
        .iter()
        .all(|(k, e)| k.as_deref() == Some(b"acme|alice".as_slice())
            && e["program_id"] == "acme"
            && e["partner_id"] == "alice"));
    // Money leaves as decimal strings with its currency (v 2): no float in any body.
    for (_, e) in &events {
        assert_eq!(e["v"], 2);
        let data = e["data"].as_object().unwrap();
        assert!(
            data["amount"].is_string() && data["currency"].is_string(),
            "{e}"
        );
        assert!(
            data.values().all(|v| !v.is_f64()),
            "a decimal left as a JSON number: {e}"
        );
    }
    let amount: rust_decimal::Decimal = events[0].1["data"]["amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(amount > rust_decimal::Decimal::ZERO);
    let statuses: Vec<(&str, &str)> = events[2..5]
        .iter()
        .map(|(_, e)| {
            (
                e["data"]["status"].as_str().unwrap(),
                e["data"]["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [("approved", "admin"), ("paid", "admin"), ("paid", "admin")]
    );
    // Status events carry the audit trail's step ids.
    let steps: HashSet<String> = ch_query(
        &config,
        "SELECT toString(event_id) FROM commission_status FINAL WHERE step > 0",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    let ids: HashSet<String> = events[2..5]
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, steps);

    // The same payout again: the same batch, and its events again with the same ids
    // (a request that stopped before publishing loses nothing).
    let r = payout(up_to).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let again = read_topic(&config.kafka.brokers, topic, 9, Duration::from_secs(30)).await;
    assert_eq!(again.len(), 9);
    let first: HashSet<&Value> = events[3..].iter().map(|(_, e)| &e["id"]).collect();
    let second: HashSet<&Value> = again[6..].iter().map(|(_, e)| &e["id"]).collect();
    assert_eq!(first, second);

    // Delivered: each event once, signed with the endpoint's secret, in ledger order, the
    // body as published; the republished payout events are known and not sent again.
    let got = receiver.wait_acknowledged(6, Duration::from_secs(30)).await;
    assert_signed(&got, "whsec-0123456789abcdef");
    let sent: Vec<&Value> = events.iter().map(|(_, e)| e).collect();
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    assert_eq!(bodies.iter().collect::<Vec<_>>(), sent);
    wait_count(
        &config,
        "SELECT count() FROM webhook_deliveries FINAL WHERE outcome = 'acknowledged'",
        6,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 6, "nothing sent twice");

    // Removed: gone from the API, and removing it again is a 404.
    let r = admin(Method::DELETE, &hook_url, Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(
        admin(Method::GET, &hook_url, Value::Null).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin(Method::DELETE, &hook_url, Value::Null).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = admin(
        Method::GET,
        &format!("{url}/api/v1/programs/acme/webhooks"),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(listed["webhooks"], json!([]));
    delivery.stop().await;
    pipeline.stop().await;
    edge.stop().await;
}

/// The embedded default delivers too: `touchline serve` with the in-process bus, memory
/// queues and the file sink's `webhook_deliveries.jsonl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_delivers_webhooks() {
    let dir = std::env::temp_dir().join(format!("touchline-hooks-{}", uuid::Uuid::new_v4()));
    let mut config = embedded_config(&dir);
    config.pipeline.late_grace_secs = 2;
    config.admin.token = ADMIN_TOKEN.into();
    let (trigger, shutdown) = touchline::shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(touchline::app::run_serve(config, shutdown, Some(tx)));
    let url = format!("http://{}", rx.await.unwrap().edge);
    let receiver = Receiver::start(Behavior::FailFirst(1)).await;
    seed(&url).await;
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/acme/webhooks/shop"),
        json!({"url": receiver.url("/hooks"), "secret": "whsec-embedded-0123456789",
            "events": ["conversion.settled", "commission.created"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sale = json!({"program_id": "acme", "order_id": "E1", "kind": "sale",
        "amount": "80.00", "referral_code": "alice-spring"});
    let r = post_conversions(&url, &sale.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);

    // 500 first, then 2xx: both events arrive, in ledger order, signed.
    let got = receiver.wait_acknowledged(2, Duration::from_secs(30)).await;
    assert_signed(&got, "whsec-embedded-0123456789");
    let acked: Vec<String> = got
        .iter()
        .filter(|r| r.status < 300)
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(acked, ["conversion.settled", "commission.created"]);
    trigger.fire();
    serve.await.unwrap().unwrap();
    let log = std::fs::read_to_string(dir.join("webhook_deliveries.jsonl")).unwrap();
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["event_type"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("conversion.settled", "failed"),
            ("conversion.settled", "acknowledged"),
            ("commission.created", "failed"),
            ("commission.created", "acknowledged"),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
