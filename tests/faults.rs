//! Faults (SPEC §5.6): ClickHouse or Redis unreachable for a while, the broker
//! restarted. The pipeline backs off, commits nothing it has not written, pauses rather
//! than double-counting, resumes, and ends with exactly what an undisturbed run has.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use touchline::config::Config;

/// Runs the disturbed configuration with `disturb` applied once rows flow, then the
/// reference, and compares everything.
async fn disturbed_run_matches(
    disturbed: Config,
    reference: Config,
    stream: Stream,
    retried: Option<&str>,
    disturb: impl std::future::Future<Output = ()>,
) {
    // The test itself reads the database directly, never through a proxy.
    let mut view = disturbed.clone();
    view.clickhouse.url = reference.clickhouse.url.clone();
    let pipeline = start_pipeline(&disturbed);
    let rows = "SELECT (SELECT count() FROM clicks) + (SELECT count() FROM conversions)";
    wait_count(&view, rows, 1, Duration::from_secs(60)).await;
    let settled: u64 = ch_query(&view, "SELECT count() FROM conversions FINAL").await[0][0]
        .parse()
        .unwrap();
    assert!(
        settled < stream.conversions,
        "the fault must come mid-stream"
    );
    disturb.await;
    wait_done(&view, &stream).await;
    pipeline.stop().await;
    run_reference(&reference, &stream).await;
    assert_same(&snapshot(&reference).await, &snapshot(&view).await);
    if let Some(dependency) = retried {
        let metrics = touchline::metrics::install().render();
        let line = format!("touchline_pipeline_retries_total{{dependency=\"{dependency}\"}}");
        assert!(
            metrics.contains(&line),
            "the pipeline should have retried {dependency}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_unreachable_for_a_while() {
    clickhouse_unreachable(21, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_unreachable_for_a_while_on_redis_cluster() {
    clickhouse_unreachable(31, CLUSTER).await;
}

async fn clickhouse_unreachable(seed: u64, extra: &[(&str, &str)]) {
    let proxy = Proxy::start("127.0.0.1:8123").await;
    let url = format!("http://{}", proxy.addr);
    let (reference, mut disturbed, stream) = setup_pair(seed, extra).await;
    disturbed.clickhouse.url = url;
    let p = &proxy;
    disturbed_run_matches(
        disturbed,
        reference,
        stream,
        Some("clickhouse"),
        async move {
            p.cut();
            tokio::time::sleep(Duration::from_secs(4)).await;
            p.restore();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_for_a_while() {
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let (reference, mut disturbed, stream) = setup_pair(22, &[]).await;
    disturbed.redis.url = format!("redis://{}/0", proxy.addr);
    let p = &proxy;
    disturbed_run_matches(disturbed, reference, stream, Some("redis"), async move {
        p.cut();
        tokio::time::sleep(Duration::from_secs(4)).await;
        p.restore();
    })
    .await;
}

/// Redis answers `PING` but refuses writes (its memory limit reached, `noeviction`):
/// the pipeline pauses and `/readyz` says why instead of looking ready while it gets
/// nowhere; with the limit lifted it resumes with the same result. On a Redis of its
/// own, so that no other test meets the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_is_not_ready_then_heals() {
    let port = free_port();
    let _redis = Proc(
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdout(child_log("redis"))
            .spawn()
            .expect("redis-server is required (scripts/stack.sh up installs it)"),
    );
    wait_port(port, true).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let admin_port = free_port();
    let (reference, disturbed, stream) = setup_pair_where(
        24,
        &[],
        chrono::Utc::now() - chrono::Duration::hours(3),
        |c| {
            c.redis.url = url.clone();
            c.pipeline.admin_listen = ([127, 0, 0, 1], admin_port).into();
        },
    )
    .await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let client = &client;
    let set_limit = |bytes: &'static str| async move {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query_async(&mut c)
            .await
            .unwrap();
    };
    disturbed_run_matches(disturbed, reference, stream, Some("redis"), async move {
        set_limit("1").await;
        readiness_names(admin_port, "OOM", true, Duration::from_secs(30)).await;
        // Redis itself still answers: only the pipeline's retries tell.
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        assert_eq!(pong, "PONG");
        set_limit("0").await;
        let settle = touchline::retry::FAILING_FOR + Duration::from_secs(15);
        readiness_names(admin_port, "OOM", false, settle).await;
    })
    .await;
}

/// Waits until the pipeline's `/readyz` on `port` is a 503 naming `what` (`named`), or
/// no longer names it, failing after `within`. Other tests of this binary retry their
/// own dependencies in the same process, so only `what` counts.
async fn readiness_names(port: u16, what: &str, named: bool, within: Duration) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let resp = send(Method::GET, &url, &[], "").await;
        let body = String::from_utf8_lossy(&resp.body).to_string();
        let says = resp.status == StatusCode::SERVICE_UNAVAILABLE && body.contains(what);
        if says == named {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz {} {what}: {} {body}",
            if named { "never named" } else { "still names" },
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ClickHouse stops answering without closing anything (a stopped server, packets
/// dropped): inserts give up after `clickhouse.insert_timeout_secs` and are retried,
/// `/readyz` names the sink meanwhile, and the run ends as an undisturbed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_hanging_times_out_and_is_retried() {
    let proxy = Proxy::start("127.0.0.1:8123").await;
    let (reference, mut disturbed, stream) = setup_pair(25, &[]).await;
    disturbed.clickhouse.url = format!("http://{}", proxy.addr);
    disturbed.clickhouse.insert_timeout_secs = 2;
    let admin_port = free_port();
    disturbed.pipeline.admin_listen = ([127, 0, 0, 1], admin_port).into();
    let p = &proxy;
    disturbed_run_matches(
        disturbed,
        reference,
        stream,
        Some("clickhouse"),
        async move {
            p.freeze();
            // The insert's own timeout, not the probe's: the pipeline is retrying.
            readiness_names(admin_port, "timeout expired", true, Duration::from_secs(30)).await;
            p.restore();
        },
    )
    .await;
}

/// A master of the Redis Cluster stops answering for a while (SIGSTOP: 7 s, past the
/// client's 5 s response timeout and short of the stack's 15 s node timeout, so no
/// failover): the pipeline pauses, retries and resumes with the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_node_unresponsive_for_a_while() {
    let pidfile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".stack/redis-cluster/7001/redis.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| {
            panic!(
                "the redis cluster of scripts/stack.sh up --redis-cluster is required ({}): {e}",
                pidfile.display()
            )
        })
        .trim()
        .to_string();
    let (reference, disturbed, stream) = setup_pair(32, CLUSTER).await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    disturbed_run_matches(disturbed, reference, stream, Some("redis"), async move {
        signal("-STOP");
        tokio::time::sleep(Duration::from_secs(7)).await;
        signal("-CONT");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart() {
    restart_broker(23, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_on_redis_cluster() {
    restart_broker(33, CLUSTER).await;
}

async fn restart_broker(seed: u64, extra: &[(&str, &str)]) {
    let dir = std::env::temp_dir().join(format!("touchline-broker-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut broker = start_tansu(&dir, port);
    wait_port(port, true).await;
    let brokers = format!("127.0.0.1:{port}");
    let mut settings = vec![("TOUCHLINE__KAFKA__BROKERS", brokers.as_str())];
    settings.extend_from_slice(extra);
    let (reference, disturbed, stream) = setup_pair(seed, &settings).await;
    let restarted = {
        let dir = dir.clone();
        let broker = &mut broker;
        async move {
            broker.kill().unwrap();
            broker.wait().unwrap();
            wait_port(port, false).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            *broker = start_tansu(&dir, port);
            wait_port(port, true).await;
        }
    };
    disturbed_run_matches(disturbed, reference, stream, None, restarted).await;
    broker.kill().unwrap();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while ClickHouse is away: the pipeline gives its last write a deadline and
/// exits cleanly (what it could not write it did not commit: a restart replays it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_clickhouse_away_still_exits() {
    let proxy = Proxy::start("127.0.0.1:8123").await;
    let (reference, mut disturbed, _stream) = setup_pair(23, &[]).await;
    disturbed.clickhouse.url = format!("http://{}", proxy.addr);
    let mut child = spawn_pipeline_process(&disturbed, &[]);
    let mut view = disturbed.clone();
    view.clickhouse.url = reference.clickhouse.url.clone();
    let rows = "SELECT (SELECT count() FROM clicks) + (SELECT count() FROM conversions)";
    wait_count(&view, rows, 1, Duration::from_secs(60)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the pipeline must exit while ClickHouse is away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
}
