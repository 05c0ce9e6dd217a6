//! Determinism (SPEC §5 "Determinism"): the tables are a pure function of the events and
//! the registry. The same events, published in a shuffled order before any pipeline
//! runs and then read by two instances at once, must leave every table and every query
//! of schemas/queries/ exactly as one instance leaves them reading the events in intake
//! order. And a partner created a moment before its first sale is credited like any
//! other, with the pipeline in a process of its own (SPEC §5.3).

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use touchline::testkit::synthetic::Order;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_backlog_read_by_two_instances_matches_intake_order() {
    // A shuffled backlog is late by up to the whole stream's span (its clicks span 20 s
    // of event time): the grace must cover that for arrival order not to matter. The
    // conversions were received an hour ago, well past the grace.
    let small = [
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "1800"),
        ("TOUCHLINE__PIPELINE__POLL_BATCH", "100"),
        ("TOUCHLINE__PIPELINE__BATCH_ROWS", "200"),
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "100"),
        // Conversions on two partitions, spread over both instances: each settles its
        // own in lockstep with the other's, where intake order is hardest to keep.
        ("TOUCHLINE__KAFKA__CONVERSION_PARTITIONS", "2"),
    ];
    let reference = config(&small);
    let shuffled = config(&small);
    for c in [&reference, &shuffled] {
        migrate(c).await;
        // Reward rules and caps too (SPEC §10.1): the customer's history and the caps'
        // running totals are read in intake order like every other count.
        seed_registry_rewards(c, PARTNERS, true).await;
    }
    // Three bursts 31 days apart: three calendar months, with tier moves (SPEC §10.2)
    // at each month's start between them.
    let now = chrono::Utc::now() - chrono::Duration::hours(3);
    let bases = [62, 31, 0].map(|days| now - chrono::Duration::days(days));
    let stream = touchline::testkit::synthetic::produce_bursts(
        &reference.kafka,
        5,
        VISITORS,
        PARTNERS,
        &bases,
        Order::Intake,
    )
    .await
    .expect("broker acknowledged");
    touchline::testkit::synthetic::produce_bursts(
        &shuffled.kafka,
        5,
        VISITORS,
        PARTNERS,
        &bases,
        Order::Shuffled(9),
    )
    .await
    .expect("broker acknowledged");

    run_reference(&reference, &stream).await;
    let expected = snapshot(&reference).await;
    // The scenario exercises what arrival order used to change: last month's signups
    // earn p1 its volume bonus on sales received after them, and only on those.
    // p1 is silver (0.20); with the 5% bonus its sales earn 0.21.
    let rates = ch_query(
        &reference,
        "SELECT toString(c.rate), count() FROM commissions AS c FINAL \
         ANY INNER JOIN (SELECT conversion_id, kind AS conversion_kind FROM conversions FINAL) USING conversion_id \
         WHERE c.kind = 'direct' AND c.partner_id = 'p1' AND conversion_kind = 'sale' \
         AND c.conversion_id IN (SELECT conversion_id FROM conversions FINAL WHERE order_id NOT LIKE 'm%') \
         GROUP BY toString(c.rate) ORDER BY toString(c.rate)",
    )
    .await;
    let rates: Vec<&str> = rates.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        rates,
        vec!["0.200000000000", "0.210000000000"],
        "p1's sales earn the bonus only once received after 50 of last month's signups"
    );
    // Rules paid and caps clipped: the scenario exercises both.
    let reasons = ch_query(
        &reference,
        "SELECT reason, count() FROM commissions FINAL WHERE kind = 'direct' AND reason != ''          GROUP BY reason ORDER BY reason",
    )
    .await;
    let reasons: Vec<&str> = reasons.iter().map(|r| r[0].as_str()).collect();
    for expected in [
        "capped",
        "rule eu-enterprise",
        "rule first-sale",
        "rule gold-leads",
        "rule pro-plan",
    ] {
        assert!(reasons.contains(&expected), "{expected} among {reasons:?}");
    }

    // Partners moved at both month starts, up and down, and were paid at their new tiers.
    let moves = ch_query(
        &reference,
        "SELECT toStartOfMonth(effective_at), countIf(tier != previous) FROM partner_tiers FINAL \
         WHERE source = 'auto' GROUP BY toStartOfMonth(effective_at) ORDER BY toStartOfMonth(effective_at)",
    )
    .await;
    assert_eq!(moves.len(), 2, "moves at two month starts: {moves:?}");
    // Promo codes took some conversions' credit (SPEC §10.3).
    let promo = ch_query(
        &reference,
        "SELECT count() FROM attributions FINAL WHERE source = 'promo_code' AND partner_id = 'p3'",
    )
    .await;
    assert_ne!(promo[0][0], "0", "promo-code credits");
    // Backlog: everything is on the topics before either instance starts.
    let mut first = spawn_pipeline_process(&shuffled, &[]);
    let mut second = spawn_pipeline_process(&shuffled, &[]);
    wait_done(&shuffled, &stream).await;
    for child in [&mut first, &mut second] {
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }
    for child in [&mut first, &mut second] {
        assert!(child.wait().unwrap().success());
    }
    assert_same(&expected, &snapshot(&shuffled).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_created_a_moment_before_its_first_sale_is_credited() {
    let config = config(&[("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2")]);
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/acme"),
        program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The pipeline runs in a process of its own, with its own copy of the registry.
    let _pipeline = spawn_pipeline_process(&config, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        let partner = format!("fresh{i}");
        let r = admin(
            Method::PUT,
            &format!("{url}/api/v1/partners/{partner}"),
            serde_json::json!({"program_id": "acme", "tier": "gold"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = admin(
            Method::POST,
            &format!("{url}/api/v1/links"),
            serde_json::json!({"program_id": "acme", "partner_id": partner, "code": format!("code-{partner}"),
                "destination": "https://shop.example/"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = send(
            Method::GET,
            &format!("{url}/r/code-{partner}"),
            &[("user-agent", "Mozilla/5.0 test")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
        let location = r.header("location").to_string();
        let click = form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "tl_click")
            .unwrap()
            .1
            .into_owned();
        let body = serde_json::json!({"program_id": "acme", "order_id": format!("F-{i}"), "kind": "sale",
            "amount": "100.00", "currency": "USD", "click_id": click});
        let r = post_conversions(&url, &body.to_string()).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    }
    let got = wait_count(
        &config,
        "SELECT count() FROM conversions FINAL",
        5,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(got, 5);
    let rows = ch_query(
        &config,
        "SELECT order_id, status FROM conversions FINAL ORDER BY order_id",
    )
    .await;
    for row in &rows {
        assert_eq!(row[1], "attributed", "{rows:?}");
    }
    // gold: 25% of 100.00, each to its own fresh partner (the ledger is written right
    // after the conversions).
    wait_count(
        &config,
        "SELECT count() FROM commissions FINAL",
        5,
        Duration::from_secs(10),
    )
    .await;
    let ledger = ch_query(
        &config,
        "SELECT partner_id, toString(amount) FROM commissions FINAL ORDER BY partner_id",
    )
    .await;
    assert_eq!(
        ledger,
        (0..5)
            .map(|i| vec![format!("fresh{i}"), "25.0000".to_string()])
            .collect::<Vec<_>>()
    );
    edge.stop().await;
}
