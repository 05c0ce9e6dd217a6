//! End to end on the real stack (SPEC §5, §6): registry through the admin API, clicks
//! through the edge, signed conversions of every kind, the pipeline, then ClickHouse:
//! every attribution and commission row as SPEC §5 says, to the cent.

mod common;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;

const UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36";

fn click_id_of(location: &str) -> String {
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "tl_click")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

async fn post_ok(url: &str, body: serde_json::Value) {
    let r = post_conversions(url, &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{body}: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_to_the_cent() {
    let config = config(&[
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "10"),
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "200"),
    ]);
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let pipeline = start_pipeline(&config);
    let url = edge.url("");

    // Registry: a three-level parent chain and a partner of its own.
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/acme"),
        program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (id, tier, parent) in [
        ("root", "platinum", None),
        ("mid", "silver", Some("root")),
        ("alice", "gold", Some("mid")),
        ("bob", "bronze", None),
    ] {
        let r = admin(
            Method::PUT,
            &format!("{url}/api/v1/partners/{id}"),
            json!({"program_id": "acme", "tier": tier, "parent_id": parent}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    for (code, partner, campaign) in [
        ("alice-spring", "alice", Some("spring")),
        ("bob-main", "bob", None),
    ] {
        let r = admin(Method::POST, &format!("{url}/api/v1/links"),
            json!({"program_id": "acme", "partner_id": partner, "code": code, "destination": "https://shop.example/", "campaign": campaign})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }

    // One visitor's journey: bob, then alice, then alice again (a duplicate); and a bot.
    let visitor = uuid::Uuid::new_v4();
    let cookie = format!("tl_vid={visitor}");
    let r = send(
        Method::GET,
        &format!("{url}/r/bob-main"),
        &[("user-agent", UA), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = send(
        Method::GET,
        &format!("{url}/r/alice-spring"),
        &[("user-agent", UA), ("cookie", &cookie)],
        "",
    )
    .await;
    let alice_click = click_id_of(r.header("location"));
    let r = send(
        Method::GET,
        &format!("{url}/r/alice-spring"),
        &[("user-agent", UA), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let r = send(
        Method::HEAD,
        &format!("{url}/r/alice-spring"),
        &[("user-agent", UA)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        wait_count(
            &config,
            "SELECT count() FROM clicks FINAL",
            4,
            Duration::from_secs(30)
        )
        .await,
        4
    );
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Conversions of every kind.
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    post_ok(&url, json!({"program_id": "acme", "order_id": "INV-1", "kind": "sale", "amount": "100.00", "currency": "USD",
        "occurred_at": at, "click_id": alice_click, "customer_id": "c-1"})).await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "INV-2", "kind": "sale", "amount": "129.99", "currency": "EUR",
        "occurred_at": at, "visitor_id": visitor.to_string()})).await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "INV-1", "kind": "sale", "amount": "100.00", "currency": "USD",
        "occurred_at": at, "click_id": alice_click, "customer_id": "c-1"})).await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "L-1", "kind": "lead", "occurred_at": at, "referral_code": "bob-main"})).await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "R-1", "kind": "recurring", "amount": "49.99", "occurred_at": at, "customer_id": "c-1"})).await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "RF-1", "kind": "refund", "amount": "40", "occurred_at": at, "original_order_id": "INV-1"})).await;
    post_ok(
        &url,
        json!({"program_id": "acme", "order_id": "S-1", "kind": "signup", "occurred_at": at}),
    )
    .await;
    post_ok(&url, json!({"program_id": "acme", "order_id": "RF-2", "kind": "refund", "amount": "100", "occurred_at": at, "original_order_id": "INV-1"})).await;

    assert_eq!(
        wait_count(
            &config,
            "SELECT count() FROM conversions FINAL",
            8,
            Duration::from_secs(60)
        )
        .await,
        8
    );
    // Both refunds settled means every row is in: they depend on everything before them.
    assert_eq!(
        wait_count(
            &config,
            "SELECT count() FROM commissions FINAL WHERE kind = 'reversal'",
            6,
            Duration::from_secs(30)
        )
        .await,
        6
    );
    pipeline.stop().await;
    edge.stop().await;

    let clicks = ch_query(&config, "SELECT link_code, is_unique, is_bot, status FROM clicks FINAL ORDER BY ts, is_bot, is_unique DESC").await;
    let mut clicks: Vec<String> = clicks.iter().map(|r| r.join(" ")).collect();
    clicks.sort();
    assert_eq!(
        clicks,
        vec![
            "alice-spring 0 0 ok",
            "alice-spring 0 1 ok",
            "alice-spring 1 0 ok",
            "bob-main 1 0 ok"
        ]
    );

    let conversions = ch_query(&config,
        "SELECT order_id, kind, status, settled_amount, model, touches FROM conversions FINAL ORDER BY order_id, status").await;
    assert_eq!(
        conversions,
        vec![
            vec!["INV-1", "sale", "attributed", "100.0000", "last_touch", "2"],
            vec!["INV-1", "sale", "duplicate", "100.0000", "", "0"],
            vec!["INV-2", "sale", "attributed", "140.8702", "last_touch", "2"],
            vec!["L-1", "lead", "attributed", "0.0000", "referral_code", "1"],
            vec![
                "R-1",
                "recurring",
                "attributed",
                "49.9900",
                "last_touch",
                "1"
            ],
            vec!["RF-1", "refund", "attributed", "40.0000", "", "0"],
            vec!["RF-2", "refund", "attributed", "100.0000", "", "0"],
            vec!["S-1", "signup", "unattributed", "0.0000", "", "0"],
        ]
    );

    let attributions = ch_query(&config,
        "SELECT c.order_id, a.partner_id, a.position, a.weight, a.credited_amount, a.campaign \
         FROM attributions AS a FINAL ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL WHERE status = 'attributed') AS c USING conversion_id \
         ORDER BY c.order_id, a.position").await;
    assert_eq!(
        attributions,
        vec![
            vec!["INV-1", "bob", "1", "0.000000000000", "0.0000", ""],
            vec![
                "INV-1",
                "alice",
                "2",
                "1.000000000000",
                "100.0000",
                "spring"
            ],
            vec!["INV-2", "bob", "1", "0.000000000000", "0.0000", ""],
            vec![
                "INV-2",
                "alice",
                "2",
                "1.000000000000",
                "140.8702",
                "spring"
            ],
            vec!["L-1", "bob", "1", "1.000000000000", "0.0000", ""],
            vec!["R-1", "alice", "1", "1.000000000000", "49.9900", "spring"],
        ]
    );

    // The ledger, computed by hand:
    // INV-1 100.00 gold 25% → 25.00; mid 10% of it 2.50; root 5% 1.25.
    // INV-2 129.99 EUR × 1.0837 = 140.870163 → 35.21754075, 3.521754075, 1.7608770375;
    //   exact sum 40.4999718625 → 40.50, truncated 40.49, the cent to alice's .00754.
    // L-1 bob's bounty 5.00. R-1 49.99 × 10% = 4.999 → 5.00, 0.50, 0.25 (5.74885 → 5.75).
    // RF-1 40 of 100 = 40%: -10.00, -1.00, -0.50. RF-2 100 of 100 takes what is left:
    //   -15.00, -1.50, -0.75.
    let ledger = ch_query(&config,
        "SELECT c.order_id, m.partner_id, m.level, m.kind, m.amount, m.currency \
         FROM commissions AS m FINAL ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL) AS c USING conversion_id \
         ORDER BY c.order_id, m.level, m.partner_id").await;
    let ledger: Vec<String> = ledger.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        ledger,
        vec![
            "INV-1 alice 0 direct 25.0000 USD",
            "INV-1 mid 1 override 2.5000 USD",
            "INV-1 root 2 override 1.2500 USD",
            "INV-2 alice 0 direct 35.2200 USD",
            "INV-2 mid 1 override 3.5200 USD",
            "INV-2 root 2 override 1.7600 USD",
            "L-1 bob 0 direct 5.0000 USD",
            "R-1 alice 0 direct 5.0000 USD",
            "R-1 mid 1 override 0.5000 USD",
            "R-1 root 2 override 0.2500 USD",
            "RF-1 alice 0 reversal -10.0000 USD",
            "RF-1 mid 1 reversal -1.0000 USD",
            "RF-1 root 2 reversal -0.5000 USD",
            "RF-2 alice 0 reversal -15.0000 USD",
            "RF-2 mid 1 reversal -1.5000 USD",
            "RF-2 root 2 reversal -0.7500 USD",
        ]
    );

    // The dashboard queries.
    let pack = query_pack(&config, "acme").await;
    let get = |name: &str| {
        pack.iter()
            .find(|(n, _)| n == name)
            .map(|(_, rows)| rows.clone())
            .unwrap()
    };
    assert_eq!(
        get("partner_leaderboard.sql"),
        vec![
            vec!["alice", "3", "1", "3", "290.8602", "40.2200"],
            vec!["bob", "1", "1", "1", "0.0000", "5.0000"],
            vec!["mid", "0", "0", "0", "0.0000", "4.0200"],
            vec!["root", "0", "0", "0", "0.0000", "2.0100"],
        ]
    );
    assert_eq!(
        get("funnel_by_partner_campaign.sql"),
        vec![
            vec!["alice", "spring", "3", "1", "3", "290.8602"],
            vec!["bob", "", "1", "1", "1", "0.0000"]
        ]
    );
    let by_day = get("revenue_commission_by_day.sql");
    let revenue: rust_decimal::Decimal = by_day
        .iter()
        .map(|r| r[1].parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    let commission: rust_decimal::Decimal = by_day
        .iter()
        .map(|r| r[2].parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(revenue.to_string(), "150.8602");
    assert_eq!(commission.to_string(), "51.2500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dlq_and_the_pipeline_goes_on() {
    use base64::Engine;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let config = config(&[
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "100"),
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2"),
    ]);
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/acme"),
        program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let garbage: [(&str, &[u8]); 3] = [
        (config.kafka.topics.clicks.as_str(), b"not json at all"),
        (
            config.kafka.topics.conversions.as_str(),
            br#"{"v":1,"kind":"sale"}"#,
        ),
        (
            config.kafka.topics.conversions.as_str(),
            br#"{"v":2,"conversion_id":"x"}"#,
        ),
    ];
    for (topic, payload) in garbage {
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let pipeline = start_pipeline(&config);
    // A valid conversion after the garbage is still settled.
    post_ok(
        &url,
        json!({"program_id": "acme", "order_id": "AFTER", "kind": "signup"}),
    )
    .await;
    assert_eq!(
        wait_count(
            &config,
            "SELECT count() FROM conversions FINAL",
            1,
            Duration::from_secs(30)
        )
        .await,
        1
    );

    let letters = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.dlq,
        3,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(letters.len(), 3, "one dead letter per undecodable message");
    let mut originals: Vec<Vec<u8>> = letters
        .iter()
        .map(|(_, l)| {
            assert!(l["reason"].as_str().is_some_and(|r| !r.is_empty()), "{l}");
            assert_eq!(l["v"], 1);
            base64::engine::general_purpose::STANDARD
                .decode(l["original_base64"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    originals.sort();
    let mut expected: Vec<Vec<u8>> = garbage.iter().map(|(_, p)| p.to_vec()).collect();
    expected.sort();
    assert_eq!(
        originals, expected,
        "the original bytes travel with the reason"
    );
    pipeline.stop().await;
    edge.stop().await;
}

/// SPEC §5.6 on the stack: a program stored before today's bounds (an FX rate of 10²⁵)
/// and a EUR sale for it, produced straight onto the topic (the edge now refuses it).
/// The sale goes to the DLQ with its reason, and an ordinary sale after it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_beyond_the_ledger_is_dead_lettered_and_the_next_lands() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use touchline::registry::Entity;
    let config = config(&[
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "100"),
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2"),
    ]);
    migrate(&config).await;
    let store = touchline::app::registry_store(&config).await.unwrap();
    let mut program = program_json();
    program["fx"]["EUR"] = json!("10000000000000000000000000");
    let mut program: touchline::registry::Program = serde_json::from_value(program).unwrap();
    program.id = "acme".into();
    store
        .put(&Entity::Program(Box::new(program)))
        .await
        .unwrap();
    store
        .put(&Entity::Partner(
            serde_json::from_value(json!({"id": "alice", "program_id": "acme"})).unwrap(),
        ))
        .await
        .unwrap();
    store
        .put(&Entity::Link(
            serde_json::from_value(json!({"code": "alice-1", "program_id": "acme",
                "partner_id": "alice", "destination": "https://shop.example/"}))
            .unwrap(),
        ))
        .await
        .unwrap();
    let pipeline = start_pipeline(&config);

    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let now = chrono::Utc::now();
    for (i, currency) in [(1u128, "EUR"), (2, "USD")] {
        let at = touchline::events::to_millis(now);
        let kind = touchline::events::ConversionKind::Sale;
        let sale = touchline::events::ConversionEvent {
            order_id: format!("O-{i}"),
            currency: currency.into(),
            received_at: at + chrono::Duration::milliseconds(i as i64),
            referral_code: Some("alice-1".into()),
            ..touchline::testkit::fixtures::conversion(i, kind, "100", at)
        };
        producer
            .send(
                FutureRecord::to(&config.kafka.topics.conversions)
                    .key(&sale.partition_key())
                    .payload(&serde_json::to_vec(&sale).unwrap()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let landed = wait_count(
        &config,
        "SELECT count() FROM conversions FINAL WHERE order_id = 'O-2'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(landed, 1, "the ordinary sale after the hostile one lands");
    let rows = ch_query(
        &config,
        "SELECT order_id, status FROM conversions FINAL ORDER BY order_id",
    )
    .await;
    assert_eq!(
        rows,
        vec![vec!["O-2".to_string(), "attributed".to_string()]]
    );
    let letters = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.dlq,
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].1["reason"]
            .as_str()
            .is_some_and(|r| r.contains("beyond the ledger's range")),
        "{}",
        letters[0].1
    );
    pipeline.stop().await;
}

/// SPEC §6: event times keep their milliseconds; `migrate` adds the `*_ms` columns to
/// tables created before they existed (ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS),
/// and running it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_brings_older_tables_their_millisecond_columns() {
    let config = config(&[]);
    migrate(&config).await;
    for (table, column) in [
        ("clicks", "ts_ms"),
        ("commissions", "occurred_at_ms"),
        ("clicks", "sub_ids"),
        ("attributions", "source"),
    ] {
        ch_query(
            &config,
            &format!("ALTER TABLE {table} DROP COLUMN {column}"),
        )
        .await;
    }
    migrate(&config).await;
    migrate(&config).await;
    let columns = ch_query(
        &config,
        &format!(
            "SELECT table, name, type FROM system.columns WHERE database = '{}' AND name LIKE '%_ms' ORDER BY table, name",
            config.clickhouse.database
        ),
    )
    .await;
    let columns: Vec<String> = columns.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        columns,
        vec![
            "api_audit at_ms UInt16",
            "attributions occurred_at_ms UInt16",
            "clicks ts_ms UInt16",
            "commission_status at_ms UInt16",
            "commissions created_at_ms UInt16",
            "commissions occurred_at_ms UInt16",
            "conversions occurred_at_ms UInt16",
            "conversions received_at_ms UInt16",
            "disputes at_ms UInt16",
            "disputes opened_at_ms UInt16",
            "partner_tiers effective_at_ms UInt16",
            "webhook_deliveries attempted_at_ms UInt16",
            "webhook_deliveries duration_ms UInt32",
        ]
    );
    // The link's sub ids, added after the first schema, come back last (RowBinary
    // writes columns in order).
    let described = ch_query(&config, "DESCRIBE TABLE clicks").await;
    let last = described.last().map(|r| (r[0].as_str(), r[1].as_str()));
    assert_eq!(last, Some(("sub_ids", "Array(String)")));
    let described = ch_query(&config, "DESCRIBE TABLE attributions").await;
    let last: Vec<(&str, &str)> = described
        .iter()
        .rev()
        .take(3)
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        last,
        [
            ("country", "String"),
            ("customer_id", "String"),
            ("source", "String")
        ]
    );
    let described = ch_query(&config, "DESCRIBE TABLE commissions").await;
    let last = described.last().map(|r| (r[0].as_str(), r[1].as_str()));
    assert_eq!(last, Some(("customer_id", "String")));
}
