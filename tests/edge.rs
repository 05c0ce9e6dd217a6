//! The edge against the real stack (SPEC §3, §4, §7): Tansu, Redis.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_yields_exactly_one_click_event_with_every_field() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    seed(&edge.url("")).await;

    let visitor = uuid::Uuid::new_v4();
    let r = send(
        Method::GET,
        &edge.url("/r/alice-spring?utm_source=newsletter&gclid=g1&tl_click=forged"),
        &[
            ("user-agent", BROWSER_UA),
            ("referer", "https://blog.example/post"),
            ("cookie", &format!("tl_vid={visitor}")),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("cache-control"), "no-store");
    let location = r.header("location").to_string();
    let cookie = r.header("set-cookie").to_string();
    assert_eq!(
        cookie,
        format!("tl_vid={visitor}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax")
    );
    let (base, query) = location.split_once('?').unwrap();
    assert_eq!(base, "https://shop.example/spring");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let click_id = params
        .iter()
        .find(|(k, _)| k == "tl_click")
        .unwrap()
        .1
        .clone();
    assert_ne!(click_id, "forged");
    assert_eq!(
        params.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["lang", "utm_source", "gclid", "utm_medium", "tl_click"]
    );
    assert_eq!(
        params[1].1, "newsletter",
        "the visit's utm_source wins over the link default"
    );

    let events = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.clicks,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(events.len(), 1, "exactly one click event: {events:?}");
    let (key, e) = &events[0];
    assert_eq!(
        key.as_deref(),
        Some(visitor.to_string().as_bytes()),
        "keyed by visitor"
    );
    let expected_ip_hash =
        hex::encode(Sha256::digest(format!("{}127.0.0.1", config.edge.ip_salt)))[..32].to_string();
    let ts = e["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 UTC with milliseconds: {ts}"
    );
    let parsed = uuid::Uuid::parse_str(e["click_id"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.get_version_num(), 7);
    assert_eq!(
        e,
        &json!({
            "v": 1, "click_id": click_id, "ts": ts, "program_id": "acme", "partner_id": "alice",
            "link_code": "alice-spring", "campaign": "spring", "visitor_id": visitor.to_string(),
            "ip_hash": expected_ip_hash, "user_agent": BROWSER_UA, "referer": "https://blog.example/post",
            "utm_source": "newsletter", "utm_medium": "affiliate", "utm_campaign": null,
            "utm_term": null, "utm_content": null, "is_bot": false, "status": "ok",
            // The registry the edge answered with: it wrote the link itself.
            "registry_version": edge.registry.version()
        })
    );
    assert!(edge.registry.version() > 0);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_unknown_codes_and_paused_links() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    seed(&edge.url("")).await;

    // Unknown code: 404 page, no event.
    let r = send(
        Method::GET,
        &edge.url("/r/no-such-code"),
        &[("user-agent", BROWSER_UA)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("content-type").starts_with("text/html"));

    // HEAD and crawlers: redirected normally, flagged; a fresh visitor cookie is set.
    let r = send(
        Method::HEAD,
        &edge.url("/r/alice-spring"),
        &[("user-agent", BROWSER_UA)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(r
        .header("location")
        .starts_with("https://shop.example/spring?"));
    assert!(r.header("set-cookie").starts_with("tl_vid="));
    let r = send(
        Method::GET,
        &edge.url("/r/alice-spring"),
        &[("user-agent", "Slackbot-LinkExpanding 1.0")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let r = send(Method::GET, &edge.url("/r/alice-spring"), &[], "").await;
    assert_eq!(r.status, StatusCode::FOUND);

    // Paused link: fallback, recorded as paused.
    let r = admin(
        Method::PATCH,
        &edge.url("/api/v1/links/alice-spring"),
        json!({"status": "paused"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = send(
        Method::GET,
        &edge.url("/r/alice-spring"),
        &[("user-agent", BROWSER_UA)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), "https://acme.example/");

    let events = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.clicks,
        5,
        Duration::from_secs(10),
    )
    .await;
    // Each request had a fresh visitor, so events spread over partitions: compare sorted.
    let mut flags: Vec<(bool, &str)> = events
        .iter()
        .map(|(_, e)| {
            (
                e["is_bot"].as_bool().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect();
    flags.sort();
    assert_eq!(
        flags,
        vec![(false, "paused"), (true, "ok"), (true, "ok"), (true, "ok")]
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_from_forwarded_for_only_when_trusted() {
    for trusted in [false, true] {
        let config = config(&[(
            "TOUCHLINE__EDGE__TRUST_FORWARDED_FOR",
            if trusted { "true" } else { "false" },
        )]);
        create_topics(&config).await;
        let edge = start_edge(&config).await;
        seed(&edge.url("")).await;
        let r = send(
            Method::GET,
            &edge.url("/r/alice-spring"),
            &[
                ("user-agent", BROWSER_UA),
                ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
        let events = read_topic(
            &config.kafka.brokers,
            &config.kafka.topics.clicks,
            1,
            Duration::from_secs(10),
        )
        .await;
        let ip = if trusted { "203.0.113.9" } else { "127.0.0.1" };
        let expected =
            hex::encode(Sha256::digest(format!("{}{ip}", config.edge.ip_salt)))[..32].to_string();
        assert_eq!(events[0].1["ip_hash"], expected, "trusted={trusted}");
        edge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_round_trip_and_bad_input_publishes_nothing() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    seed(&url).await;
    let click = uuid::Uuid::now_v7();

    // One valid sale.
    let sale = json!({"program_id": "acme", "order_id": "INV-1001", "kind": "sale", "amount": "129.99",
        "currency": "EUR", "occurred_at": "2026-11-20T10:15:00Z", "click_id": click.to_string(),
        "visitor_id": null, "referral_code": null, "customer_id": "c-42", "original_order_id": null});
    let r = post_conversions(&url, &sale.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.json(), json!({"accepted": 1}));

    // A batch of two: lead and refund.
    let batch = json!([
        {"program_id": "acme", "order_id": "L-1", "kind": "lead", "referral_code": "alice-spring"},
        {"program_id": "acme", "order_id": "R-1", "kind": "refund", "amount": "10", "currency": "USD",
         "original_order_id": "INV-1001"}
    ]);
    let r = post_conversions(&url, &batch.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.json(), json!({"accepted": 2}));

    // SPEC §7, nothing of which may be published.
    let stale_sig = touchline::signature::sign(
        SECRET,
        chrono::Utc::now().timestamp() - 301,
        sale.to_string().as_bytes(),
    );
    let wrong_sig = touchline::signature::sign(
        "another-secret-of-16",
        chrono::Utc::now().timestamp(),
        sale.to_string().as_bytes(),
    );
    for (sig, what) in [
        (Some(stale_sig), "stale"),
        (Some(wrong_sig), "wrong"),
        (None, "missing"),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(s) = &sig {
            headers.push(("x-touchline-signature", s));
        }
        let r = send(
            Method::POST,
            &format!("{url}/api/v1/conversions"),
            &headers,
            sale.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, None),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "-1"}).to_string(), StatusCode::BAD_REQUEST, Some("amount")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1.00001"}).to_string(), StatusCode::BAD_REQUEST, Some("amount")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": 12.5}).to_string(), StatusCode::BAD_REQUEST, Some("amount")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "currency": "GBP"}).to_string(), StatusCode::BAD_REQUEST, Some("currency")),
        (json!({"program_id": "nope", "order_id": "X", "kind": "sale", "amount": "1"}).to_string(), StatusCode::BAD_REQUEST, Some("program_id")),
        (json!({"program_id": "acme", "order_id": 7, "kind": "sale", "amount": "1"}).to_string(), StatusCode::BAD_REQUEST, Some("order_id")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "currency": ""}).to_string(), StatusCode::BAD_REQUEST, Some("currency")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "occurred_at": ""}).to_string(), StatusCode::BAD_REQUEST, Some("occurred_at")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "occurred_at": "0000-01-01T00:00:00Z"}).to_string(), StatusCode::BAD_REQUEST, Some("occurred_at")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "occurred_at": "9999-12-31T23:59:59Z"}).to_string(), StatusCode::BAD_REQUEST, Some("occurred_at")),
        (json!({"program_id": "acme", "order_id": "X\r\nY", "kind": "sale", "amount": "1"}).to_string(), StatusCode::BAD_REQUEST, Some("order_id")),
        (json!({"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "90000000000000", "currency": "EUR"}).to_string(), StatusCode::BAD_REQUEST, Some("amount")),
        (r#"{"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1", "amount": "1000"}"#.into(), StatusCode::BAD_REQUEST, Some("amount")),
        (r#"{"program_id": "acme", "order_id": "X", "kind": "sale", "amount": "1"}}}}garbage"#.into(), StatusCode::BAD_REQUEST, None),
        // All or nothing: the first item is valid, the second is not.
        (json!([{"program_id": "acme", "order_id": "OK-1", "kind": "sale", "amount": "1"},
                {"program_id": "acme", "order_id": "BAD", "kind": "sale", "amount": "x"}]).to_string(),
         StatusCode::BAD_REQUEST, Some("[1].amount")),
    ];
    for (body, status, field) in cases {
        let r = post_conversions(&url, &body).await;
        assert_eq!(r.status, status, "{body}");
        let err = r.json();
        assert!(err["error"]["message"].is_string(), "{err}");
        assert_eq!(err["error"]["field"].as_str(), field, "{body}");
    }
    let too_many = serde_json::Value::Array(
        (0..1001)
            .map(|i| json!({"program_id": "acme", "order_id": format!("B{i}"), "kind": "lead"}))
            .collect(),
    );
    let r = post_conversions(&url, &too_many.to_string()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let huge = format!(
        "{{\"program_id\":\"acme\",\"order_id\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let r = post_conversions(&url, &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let events = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.conversions,
        4,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        events.len(),
        3,
        "only the accepted conversions were published"
    );
    let e = &events
        .iter()
        .find(|(_, e)| e["order_id"] == "INV-1001")
        .unwrap()
        .1;
    assert_eq!(e["amount"], "129.99");
    assert_eq!(e["currency"], "EUR");
    assert_eq!(e["occurred_at"], "2026-11-20T10:15:00.000Z");
    assert_eq!(e["click_id"], click.to_string());
    assert_eq!(e["customer_id"], "c-42");
    assert_eq!(e["v"], 1);
    assert!(e["received_at"].as_str().unwrap().ends_with('Z'));
    let lead = &events
        .iter()
        .find(|(_, e)| e["order_id"] == "L-1")
        .unwrap()
        .1;
    assert_eq!(lead["amount"], "0");
    assert_eq!(lead["currency"], "USD");
    assert_eq!(lead["referral_code"], "alice-spring");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_validates() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("/api/v1/programs/acme");
    let r = send(
        Method::PUT,
        &url,
        &[],
        serde_json::to_vec(&program_json()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        Method::GET,
        &url,
        &[("authorization", "Bearer wrong-token")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(edge.registry.program("acme").is_none(), "nothing written");

    let mut bad = program_json();
    bad["lookback_days"] = json!(120);
    let r = admin(Method::PUT, &url, bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "lookback_days");

    seed(&edge.url("")).await;
    let r = admin(Method::GET, &url, serde_json::Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["secret"], "(hidden)");
    assert_eq!(r.json()["fx"]["EUR"], "1.0837");
    // Parent cycles are refused.
    let partners = edge.url("/api/v1/partners");
    assert_eq!(
        admin(
            Method::PUT,
            &format!("{partners}/bob"),
            json!({"program_id": "acme", "parent_id": "alice"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = admin(
        Method::PATCH,
        &format!("{partners}/alice"),
        json!({"parent_id": "bob"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin(
        Method::PATCH,
        &format!("{partners}/bob"),
        json!({"tier": "diamond"}),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "tier");
    // A link to a non-http destination is refused.
    let r = admin(
        Method::POST,
        &edge.url("/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "bob", "destination": "javascript:alert(1)"}),
    )
    .await;
    assert_eq!(r.json()["error"]["field"], "destination");
    let r = admin(
        Method::POST,
        &edge.url("/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "bob", "destination": "https://shop.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let code = r.json()["code"].as_str().unwrap().to_string();
    assert_eq!(
        r.json()["url"],
        format!("{}/r/{code}", config.edge.public_url)
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    seed(&edge.url("")).await;
    let _ = send(
        Method::GET,
        &edge.url("/r/alice-spring"),
        &[("user-agent", BROWSER_UA)],
        "",
    )
    .await;
    assert_eq!(
        send(Method::GET, &edge.url("/healthz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let r = send(Method::GET, &edge.url("/readyz"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"broker": "ok", "registry": "ok"}));
    let r = send(Method::GET, &edge.url("/metrics"), &[], "").await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.contains(
            "touchline_http_requests_total{route=\"/r/{code}\",method=\"GET\",status=\"302\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("# HELP touchline_edge_clicks_total"),
        "{text}"
    );
    assert!(
        !text.contains("alice-spring"),
        "no raw paths or ids in labels"
    );
    assert_promtool_clean(&text);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_change_reaches_a_second_edge_process_within_a_second() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    seed(&edge.url("")).await;

    // A second edge as its own process, on the same Redis prefix and topics.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_touchline"))
        .args(["edge", "--config"])
        .arg(&local)
        .envs(env_for(&config))
        .env("TOUCHLINE__EDGE__LISTEN", format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let other = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "second edge did not start");
    assert_eq!(
        send(
            Method::GET,
            &format!("{other}/r/alice-spring"),
            &[("user-agent", BROWSER_UA)],
            ""
        )
        .await
        .status,
        StatusCode::FOUND
    );

    // Pause the link through the first edge; the second must follow within a second.
    let r = admin(
        Method::PATCH,
        &edge.url("/api/v1/links/alice-spring"),
        json!({"status": "paused"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let changed_at = std::time::Instant::now();
    let mut seen = None;
    while changed_at.elapsed() < Duration::from_secs(1) {
        let r = send(
            Method::GET,
            &format!("{other}/r/alice-spring"),
            &[("user-agent", BROWSER_UA)],
            "",
        )
        .await;
        if r.header("location") == "https://acme.example/" {
            seen = Some(changed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.is_some(),
        "the second edge still redirects to the destination after 1s"
    );

    // SIGTERM: the process flushes and exits 0.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_an_edge_and_reports_json() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_touchline"))
        .args([
            "loadgen",
            "--target",
            &edge.url(""),
            "--rate",
            "200",
            "--duration",
            "1",
        ])
        .args([
            "--conversion-percent",
            "20",
            "--json",
            "--setup-admin-token",
            ADMIN_TOKEN,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let sent = report["sent"].as_u64().unwrap();
    assert!((190..=200).contains(&sent), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let clicks = report["clicks"].as_u64().unwrap();
    let conversions = report["conversions"].as_u64().unwrap();
    assert_eq!(clicks + conversions, sent);
    assert!(conversions > 10 && clicks > 100, "{report}");
    // Every answer is a redirect or an accepted conversion.
    assert_eq!(report["statuses"]["302"].as_u64(), Some(clicks), "{report}");
    assert_eq!(
        report["statuses"]["202"].as_u64(),
        Some(conversions),
        "{report}"
    );
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][p].as_f64().unwrap() > 0.0, "{report}");
    }
    // The clicks it sent are on the topic.
    let events = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.clicks,
        clicks as usize,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(events.len() as u64, clicks);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_touchline"))
        .args(["loadgen", "--target", &edge.url(""), "--rate", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a zero rate is a bad argument");
    edge.stop().await;
}

/// SPEC §7 for the admin API and slow clients: what a hostile or careless caller sends
/// is refused at the door, naming the key, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_input_and_slow_bodies_are_refused() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    seed(&url).await;

    // The bearer scheme is case-insensitive.
    let r = send(
        Method::GET,
        &format!("{url}/api/v1/programs/acme"),
        &[("authorization", &format!("bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // 405 says what is allowed.
    let r = send(Method::DELETE, &format!("{url}/r/alice-spring"), &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD");
    let r = admin(
        Method::DELETE,
        &format!("{url}/api/v1/programs/acme"),
        json!(null),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, PUT");

    let mut program = program_json();
    program["attribution"] = json!({"model": "last_touch", "half_life": "7"});
    let mut fx = program_json();
    fx["fx"]["EUR"] = json!("1e25");
    let mut months = program_json();
    months["commission"]["recurring"]["months"] = json!(4294967295u64);
    let link = |destination: &str| json!({"program_id": "acme", "partner_id": "alice", "destination": destination});
    let cases: Vec<(Method, &str, String, &str)> = vec![
        (
            Method::PUT,
            "/api/v1/programs/p2",
            program.to_string(),
            "attribution.half_life",
        ),
        (Method::PUT, "/api/v1/programs/p2", fx.to_string(), "fx.EUR"),
        (
            Method::PUT,
            "/api/v1/programs/p2",
            months.to_string(),
            "commission.recurring.months",
        ),
        (
            Method::PUT,
            "/api/v1/programs/p2",
            format!("{}}}}}garbage", program_json()),
            "",
        ),
        (
            Method::PUT,
            "/api/v1/programs/..",
            program_json().to_string(),
            "id",
        ),
        (
            Method::PUT,
            "/api/v1/partners/bob",
            r#"{"program_id": "acme", "tier": "gold", "tier": "bronze"}"#.into(),
            "tier",
        ),
        (
            Method::POST,
            "/api/v1/links",
            link("https://shop.example@evil.com/").to_string(),
            "destination",
        ),
        (
            Method::POST,
            "/api/v1/links",
            link("http://user@evil.com").to_string(),
            "destination",
        ),
        (
            Method::POST,
            "/api/v1/links",
            link("https://ok.example:99999/").to_string(),
            "destination",
        ),
        (
            Method::POST,
            "/api/v1/links",
            link("https://ok.example/caf\u{e9}").to_string(),
            "destination",
        ),
    ];
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for (method, path, body, field) in cases {
        let r = send(
            method,
            &format!("{url}{path}"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {body}");
        let err = r.json();
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{path} {body}");
        }
    }
    let r = admin(
        Method::GET,
        &format!("{url}/api/v1/programs/p2"),
        json!(null),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was written");

    // A body announced and never sent: 408 within the body timeout, connection closed.
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the edge answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(25));
    edge.stop().await;
}

/// SPEC §7: query values beyond the stored limits redirect as usual, are stored
/// truncated and counted; a user agent that is not UTF-8 is still a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_query_values_are_truncated_and_odd_user_agents_kept() {
    use http_body_util::{BodyExt, Full};
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    seed(&url).await;
    let long = "x".repeat(60_000);
    let req = hyper::Request::get(format!("{url}/r/alice-spring?utm_source={long}"))
        .header(
            "user-agent",
            hyper::header::HeaderValue::from_bytes(b"Mozilla/5.0 (caf\xe9; \xff)").unwrap(),
        )
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = touchline::http::client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains(&long),
        "the redirect carries the value whole"
    );
    let _ = resp.into_body().collect().await;
    let events = read_topic(
        &config.kafka.brokers,
        &config.kafka.topics.clicks,
        1,
        Duration::from_secs(10),
    )
    .await;
    let e = &events[0].1;
    assert_eq!(e["utm_source"].as_str().unwrap().len(), 256);
    assert_eq!(e["is_bot"], false);
    assert_eq!(e["user_agent"], "Mozilla/5.0 (caf\u{fffd}; \u{fffd})");
    let metrics = send(Method::GET, &format!("{url}/metrics"), &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("touchline_edge_truncated_fields_total{field=\"utm_source\"}")),
        "{text}"
    );
    edge.stop().await;
}
