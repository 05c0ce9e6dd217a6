//! The embedded default (SPEC §1): `touchline demo` runs with nothing external, and the
//! JSONEachRow files it writes load into ClickHouse as they are, where the
//! `partner_stats_daily` view agrees with the file the demo computed.

mod common;

use std::collections::BTreeMap;

use common::*;
use hyper::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_files_load_into_clickhouse_and_agree() {
    let dir = std::env::temp_dir().join(format!("touchline-demo-{}", uuid::Uuid::new_v4()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_touchline"))
        .args(["demo", "--visitors", "200", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("commission USD"), "{stdout}");
    assert!(stdout.contains("partner_stats_daily.jsonl"), "{stdout}");

    let config = config(&[]);
    migrate(&config).await;
    assert!(stdout.contains("ana      silver → gold from"), "{stdout}");
    for table in [
        "clicks",
        "conversions",
        "attributions",
        "commissions",
        "partner_tiers",
    ] {
        let body = std::fs::read(dir.join(format!("{table}.jsonl"))).unwrap();
        assert!(!body.is_empty(), "{table}.jsonl is empty");
        let url = format!(
            "{}/?query=INSERT%20INTO%20{}.{table}%20FORMAT%20JSONEachRow",
            config.clickhouse.url, config.clickhouse.database
        );
        let r = send(Method::POST, &url, &[], body).await;
        assert_eq!(
            r.status,
            hyper::StatusCode::OK,
            "{table}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Every kind and status the demo promises is there.
    let kinds = ch_query(&config, "SELECT kind, status, count() FROM conversions FINAL GROUP BY kind, status ORDER BY kind, status").await;
    let kinds: Vec<String> = kinds.iter().map(|r| format!("{} {}", r[0], r[1])).collect();
    for expected in [
        "sale attributed",
        "sale duplicate",
        "lead attributed",
        "signup attributed",
        "recurring attributed",
        "refund attributed",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:?}"
        );
    }
    // The demo's reward rules paid and its cap clipped (SPEC §10.1).
    let reasons = ch_query(
        &config,
        "SELECT DISTINCT reason FROM commissions FINAL WHERE kind = 'direct' ORDER BY reason",
    )
    .await;
    let reasons: Vec<&str> = reasons.iter().map(|r| r[0].as_str()).collect();
    assert!(reasons.contains(&"rule eu-shoppers"), "{reasons:?}");
    // A partner moved up at the month's start, and promo codes took credit (SPEC §10).
    let moves = ch_query(
        &config,
        "SELECT partner_id, previous, tier, source FROM partner_tiers FINAL ORDER BY partner_id",
    )
    .await;
    assert!(
        moves.contains(&vec![
            "ana".into(),
            "silver".into(),
            "gold".into(),
            "auto".into()
        ]),
        "{moves:?}"
    );
    let promo = ch_query(
        &config,
        "SELECT DISTINCT partner_id FROM attributions FINAL WHERE source = 'promo_code'",
    )
    .await;
    assert_eq!(promo, vec![vec!["cat".to_string()]]);
    let bots = ch_query(
        &config,
        "SELECT sum(is_bot), sum(is_unique), count() FROM clicks FINAL",
    )
    .await;
    let (bots, unique, all): (u64, u64, u64) = (
        bots[0][0].parse().unwrap(),
        bots[0][1].parse().unwrap(),
        bots[0][2].parse().unwrap(),
    );
    assert!(
        bots > 0 && unique < all - bots,
        "bots and duplicate clicks are in the traffic"
    );

    // ClickHouse's view over the loaded tables equals the demo's own file.
    let view = ch_query(&config,
        "SELECT toString(day), program_id, partner_id, clicks, unique_clicks, bot_clicks, conversions, revenue, commission \
         FROM partner_stats_daily ORDER BY day, program_id, partner_id").await;
    let file = std::fs::read_to_string(dir.join("partner_stats_daily.jsonl")).unwrap();
    let mut from_file = Vec::new();
    for line in file.lines() {
        // Raw JSON text: decimals exactly as written, never through a float.
        let v: BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(line).unwrap();
        let text = |k: &str| v[k].get().trim_matches('"').to_string();
        from_file.push(vec![
            text("day"),
            text("program_id"),
            text("partner_id"),
            text("clicks"),
            text("unique_clicks"),
            text("bot_clicks"),
            text("conversions"),
            text("revenue"),
            text("commission"),
        ]);
    }
    assert_eq!(view, from_file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_on_both_ports_and_its_metrics_lint_clean() {
    let dir = std::env::temp_dir().join(format!("touchline-serve-{}", uuid::Uuid::new_v4()));
    let config = embedded_config(&dir);
    let (trigger, shutdown) = touchline::shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(touchline::app::run_serve(config, shutdown, Some(tx)));
    let addrs = rx.await.unwrap();
    for (addr, path, status) in [
        (addrs.edge, "/healthz", 200),
        (addrs.edge, "/readyz", 200),
        (addrs.admin, "/healthz", 200),
        (addrs.admin, "/readyz", 200),
        (addrs.admin, "/nope", 404),
    ] {
        let r = send(Method::GET, &format!("http://{addr}{path}"), &[], "").await;
        assert_eq!(r.status.as_u16(), status, "{addr}{path}");
    }
    let r = send(
        Method::GET,
        &format!("http://{}/metrics", addrs.admin),
        &[],
        "",
    )
    .await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    // Metrics appear once touched: the requests above are counted by route template.
    assert!(
        text.contains("# TYPE touchline_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/healthz",method="GET",status="200""#),
        "{text}"
    );
    assert_promtool_clean(&text);
    trigger.fire();
    serve.await.unwrap().unwrap();
    // Stopping the file sink leaves every table's file, partner stats included.
    for table in [
        "clicks",
        "conversions",
        "attributions",
        "commissions",
        "partner_stats_daily",
    ] {
        assert!(dir.join(format!("{table}.jsonl")).exists(), "{table}.jsonl");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SPEC §7: a configuration with an unknown key or a bad value exits 2 with one line
/// naming the key, before anything starts.
#[test]
fn bad_configuration_exits_2_naming_the_key() {
    for (var, value, key) in [
        ("TOUCHLINE__EDGE__LISEN", "127.0.0.1:1", "edge.lisen"),
        (
            "TOUCHLINE__PIPELINE__LATE_GRACE_SECS",
            "1",
            "pipeline.late_grace_secs",
        ),
        ("TOUCHLINE__REDIS__CLUSTER", "maybe", "redis.cluster"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_touchline"))
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{var}: {stderr}");
    }
}
