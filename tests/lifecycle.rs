//! The commission lifecycle on the real stack (SPEC §3.5, §5.7, §5.8): fraud rules flag
//! conversions that are stored and settled, their rows held; review releases or rejects
//! them; payouts pay approved rows once, net a clawback after payout in the next batch,
//! and a repeated request returns the same batch. Amounts are worked out to the cent.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

const ALICE_EMAIL: &str = "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90";

async fn get(url: &str) -> Value {
    let r = admin(Method::GET, url, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{url}: {:?}", r.body);
    serde_json::from_slice(&r.body).unwrap()
}

/// `(commission_id, amount, status, reason)` of every row of program acme.
async fn rows(edge: &str) -> Vec<(String, String, String, String)> {
    let v = get(&format!(
        "{edge}/api/v1/commissions?program_id=acme&limit=1000"
    ))
    .await;
    v["commissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["commission_id"].as_str().unwrap().to_string(),
                r["amount"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The commission id of the row that conversion `order` earned.
async fn row_of(config: &touchline::config::Config, order: &str) -> String {
    let got = ch_query(
        config,
        &format!(
            "SELECT toString(c.commission_id) FROM commissions AS c FINAL \
             ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL) USING conversion_id \
             WHERE order_id = '{order}'"
        ),
    )
    .await;
    assert_eq!(got.len(), 1, "one row for {order}: {got:?}");
    got[0][0].clone()
}

async fn payout(edge: &str, up_to: &str) -> Value {
    let r = admin(
        Method::POST,
        &format!("{edge}/api/v1/payouts"),
        json!({"program_id": "acme", "up_to": up_to}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    serde_json::from_slice(&r.body).unwrap()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_holds_review_and_payouts_on_the_stack() {
    let config = config(&[("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2")]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    let url = url.trim_end_matches('/');
    let mut program = program_json();
    program["hold_days"] = json!(0);
    program["fraud"] = json!({"review_above": "100", "self_referral": true,
        "min_click_to_conversion_secs": 3600});
    let r = admin(Method::PUT, &format!("{url}/api/v1/programs/acme"), program).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/alice"),
        json!({"program_id": "acme", "tier": "gold", "email_sha256": ALICE_EMAIL}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring",
            "destination": "https://shop.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let pipeline = start_pipeline(&config);

    // A click, and at once a sale with its click id: fast_conversion.
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";
    let click = click_through(url, "alice-spring", browser).await;
    let sales = json!([
        // Gold (25%) on 150.00: 37.50, above review_above 100.
        {"program_id": "acme", "order_id": "S1", "kind": "sale", "amount": "150.00", "referral_code": "alice-spring"},
        {"program_id": "acme", "order_id": "S2", "kind": "sale", "amount": "40.00", "click_id": click},
        {"program_id": "acme", "order_id": "S3", "kind": "sale", "amount": "40.00", "referral_code": "alice-spring",
         "customer_email_sha256": ALICE_EMAIL},
        {"program_id": "acme", "order_id": "S4", "kind": "sale", "amount": "40.00", "referral_code": "alice-spring"}
    ]);
    let r = post_conversions(url, &sales.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM commission_status FINAL",
        4,
        Duration::from_secs(60),
    )
    .await;

    // The flagged conversions are stored and settled like any other.
    let stored = ch_query(
        &config,
        "SELECT order_id, status FROM conversions FINAL ORDER BY order_id",
    )
    .await;
    assert_eq!(
        stored,
        [
            ["S1", "attributed"],
            ["S2", "attributed"],
            ["S3", "attributed"],
            ["S4", "attributed"]
        ]
    );
    let (s1, s2, s3, s4) = (
        row_of(&config, "S1").await,
        row_of(&config, "S2").await,
        row_of(&config, "S3").await,
        row_of(&config, "S4").await,
    );
    let mut got = rows(url).await;
    got.sort_by(|a, b| a.1.cmp(&b.1).then(a.3.cmp(&b.3)));
    let expect = |id: &str, amount: &str, status: &str, reason: &str| {
        (
            id.to_string(),
            amount.to_string(),
            status.to_string(),
            reason.to_string(),
        )
    };
    let mut want = vec![
        expect(&s1, "37.5000", "held", "review_above"),
        expect(&s2, "10.0000", "held", "fast_conversion"),
        expect(&s3, "10.0000", "held", "self_referral"),
        expect(&s4, "10.0000", "approved", "hold period over"),
    ];
    want.sort_by(|a, b| a.1.cmp(&b.1).then(a.3.cmp(&b.3)));
    assert_eq!(got, want);
    let held = get(&format!(
        "{url}/api/v1/commissions?program_id=acme&status=held"
    ))
    .await;
    assert_eq!(held["commissions"].as_array().unwrap().len(), 3);

    // Review: two released, one rejected; repeating is harmless, contradicting is not.
    let review_url = format!("{url}/api/v1/commissions/review");
    let review = |ids: Vec<&str>, action: &str| {
        let body = json!({"program_id": "acme", "commission_ids": ids, "action": action,
            "note": "checked the order"});
        admin(Method::POST, &review_url, body)
    };
    let r = review(vec![&s1, &s2], "approve").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = review(vec![&s3], "reject").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = review(vec![&s1], "approve").await;
    let again: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(again["changed"], json!([]));
    assert_eq!(again["unchanged"], json!([s1]));
    assert_eq!(
        review(vec![&s1], "reject").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        review(vec![&s4], "approve").await.status,
        StatusCode::CONFLICT
    );

    // Payout: 37.50 + 10.00 + 10.00, the rejected row not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let up_to = now_rfc3339();
    let first = payout(url, &up_to).await;
    assert_eq!(
        first["lines"],
        json!([{"partner_id": "alice", "amount": "57.5000", "currency": "USD", "rows": 3}])
    );
    // The same request: the same batch, nothing paid twice; and as CSV.
    assert_eq!(payout(url, &up_to).await, first);
    let id = first["payout_id"].as_str().unwrap();
    let csv = send(
        Method::GET,
        &format!("{url}/api/v1/payouts/{id}?program_id=acme"),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("accept", "text/csv"),
        ],
        "",
    )
    .await;
    assert_eq!(csv.status, StatusCode::OK);
    let csv = String::from_utf8(csv.body.to_vec()).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .ends_with(",alice,57.5000,USD,3"),
        "{csv}"
    );

    // After payout: a partial refund of S4 (20.00 of 40.00: −5.00, a clawback) and a
    // new sale (10.00): the next payout nets them, 5.00.
    let later = json!([
        {"program_id": "acme", "order_id": "RF-S4", "kind": "refund", "amount": "20.00", "original_order_id": "S4"},
        {"program_id": "acme", "order_id": "S5", "kind": "sale", "amount": "40.00", "referral_code": "alice-spring"}
    ]);
    let r = post_conversions(url, &later.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM commissions FINAL",
        6,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = payout(url, &now_rfc3339()).await;
    assert_ne!(second["payout_id"], first["payout_id"]);
    assert_eq!(
        second["lines"],
        json!([{"partner_id": "alice", "amount": "5.0000", "currency": "USD", "rows": 2}])
    );

    // Balances by status: everything paid but the rejected row.
    let balances = query_pack(&config, "acme")
        .await
        .into_iter()
        .find(|(name, _)| name == "balances_by_status.sql")
        .unwrap()
        .1;
    assert_eq!(
        balances,
        [
            ["alice", "paid", "5", "62.5000"],
            ["alice", "rejected", "1", "10.0000"]
        ]
    );
    let metrics = send(Method::GET, &edge.url("/metrics"), &[], "").await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    for rule in ["review_above", "fast_conversion", "self_referral"] {
        assert!(
            metrics.contains(&format!(
                "touchline_pipeline_fraud_flags_total{{rule=\"{rule}\"}}"
            )),
            "{rule} counted"
        );
    }
    pipeline.stop().await;
    edge.stop().await;
}

/// The two rules that count what came before (SPEC §5.8) on the real stack, Redis
/// tallies and all: click_spam marks the clicks past the hourly limit from one address
/// suspicious, so a sale following one finds no touchpoint; refund_rate holds a
/// partner's new commissions once more than half of her recent sales were refunded,
/// and review releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_spam_and_refund_rate_on_the_stack() {
    let config = config(&[("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2")]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    let url = url.trim_end_matches('/');
    let mut program = program_json();
    program["hold_days"] = json!(0);
    program["fraud"] = json!({"max_clicks_per_ip_hour": 2, "refund_rate": "0.5"});
    let r = admin(Method::PUT, &format!("{url}/api/v1/programs/acme"), program).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    seed_partner_and_link(url).await;
    let pipeline = start_pipeline(&config);

    // Four clicks from this address, each its own browser (distinct fingerprints).
    let mut clicks = Vec::new();
    for i in 0..4 {
        let agent =
            format!("Mozilla/5.0 (X11; Linux x86_64; rv:12{i}.0) Gecko/20100101 Firefox/12{i}.0");
        clicks.push(click_through(url, "alice-spring", &agent).await);
        // Distinct milliseconds: the limit applies in (ts, click id) order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // One request each, so that intake order is the order below.
    let sale = |order: &str| {
        json!([{"program_id": "acme", "order_id": order, "kind": "sale", "amount": "40.00",
            "referral_code": "alice-spring"}])
    };
    let refund = |order: &str, of: &str| {
        json!([{"program_id": "acme", "order_id": order, "kind": "refund", "amount": "40.00",
            "original_order_id": of}])
    };
    let by_click = |order: &str, click: &str| {
        json!([{"program_id": "acme", "order_id": order, "kind": "sale", "amount": "40.00",
            "click_id": click}])
    };
    for body in [
        sale("R1"),
        sale("R2"),
        refund("RF1", "R1"),
        // 1 of 2 refunded: not above half.
        sale("R3"),
        refund("RF2", "R2"),
        // 2 of 3: above half, held.
        sale("R4"),
        // 2 of 4: not above.
        by_click("C1", &clicks[0]),
        // A suspicious click is no touchpoint.
        by_click("C3", &clicks[2]),
    ] {
        let r = post_conversions(url, &body.to_string()).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_count(
        &config,
        "SELECT count() FROM conversions FINAL",
        8,
        Duration::from_secs(60),
    )
    .await;
    wait_count(
        &config,
        "SELECT count() FROM clicks FINAL",
        4,
        Duration::from_secs(60),
    )
    .await;

    let stored = ch_query(
        &config,
        "SELECT toString(click_id), status, is_unique FROM clicks FINAL ORDER BY ts, ts_ms, click_id",
    )
    .await;
    let want: Vec<Vec<String>> = clicks
        .iter()
        .zip([
            ("ok", "1"),
            ("ok", "1"),
            ("suspicious", "0"),
            ("suspicious", "0"),
        ])
        .map(|(id, (status, unique))| vec![id.clone(), status.into(), unique.into()])
        .collect();
    assert_eq!(stored, want);
    let stored = ch_query(
        &config,
        "SELECT order_id, status FROM conversions FINAL WHERE kind = 'sale' ORDER BY order_id",
    )
    .await;
    assert_eq!(
        stored,
        [
            ["C1", "attributed"],
            ["C3", "unattributed"],
            ["R1", "attributed"],
            ["R2", "attributed"],
            ["R3", "attributed"],
            ["R4", "attributed"]
        ]
    );

    let r4 = row_of(&config, "R4").await;
    let held = get(&format!(
        "{url}/api/v1/commissions?program_id=acme&status=held"
    ))
    .await;
    let held: Vec<(&str, &str)> = held["commissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["commission_id"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(held, [(r4.as_str(), "refund_rate")]);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/commissions/review"),
        json!({"program_id": "acme", "commission_ids": [r4], "action": "approve"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let statuses: Vec<String> = rows(url).await.into_iter().map(|r| r.2).collect();
    assert!(
        statuses.iter().all(|s| s == "approved"),
        "every row approved after review: {statuses:?}"
    );

    let metrics = send(Method::GET, &edge.url("/metrics"), &[], "").await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    for rule in ["click_spam", "refund_rate"] {
        assert!(
            metrics.contains(&format!(
                "touchline_pipeline_fraud_flags_total{{rule=\"{rule}\"}}"
            )),
            "{rule} counted"
        );
    }
    pipeline.stop().await;
    edge.stop().await;
}
