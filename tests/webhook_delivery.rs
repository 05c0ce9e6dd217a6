//! Webhook delivery on the real stack (SPEC §3.6) against real HTTP receivers started
//! here: Tansu carries the outbox, Redis (and a Redis Cluster) the queues, ClickHouse
//! the delivery log. Receivers that answer 2xx, 500 then 2xx, too slowly, not at all
//! (refused), or only after being down for a minute; a delivery process killed with
//! SIGKILL mid-burst, with a partner's postback beside the program's endpoint. Every event is delivered at least once, acknowledged exactly once
//! in the log, in ledger order per partner, with signatures that verify.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use touchline::bus::EventBus;
use touchline::config::Config;
use touchline::registry::{Registry, Webhook, WebhookEventType};
use touchline::webhooks::queue::{suite, RedisQueue};
use touchline::webhooks::WebhookEvent;
use uuid::Uuid;

const HOOK_SECRET: &str = "whsec-test-0123456789";

fn delivery_config(extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("TOUCHLINE__WEBHOOKS__TIMEOUT_MS", "1000"),
        ("TOUCHLINE__WEBHOOKS__RETRY_BASE_MS", "100"),
        ("TOUCHLINE__WEBHOOKS__RETRY_MAX_MS", "2000"),
        ("TOUCHLINE__WEBHOOKS__BREAKER_FAILURES", "3"),
        ("TOUCHLINE__WEBHOOKS__BREAKER_OPEN_MS", "500"),
        ("TOUCHLINE__WEBHOOKS__POLL_MS", "20"),
    ];
    vars.extend_from_slice(extra);
    config(&vars)
}

/// Program `acme` and its endpoints (name → url), subscribed to everything.
async fn registry_with(config: &Config, endpoints: &[(&str, String)]) -> Arc<Registry> {
    let store = touchline::app::registry_store(config)
        .await
        .expect("redis is required (scripts/stack.sh up)");
    let registry = Registry::open(store).await.unwrap();
    let program = serde_json::from_value(program_json()).unwrap();
    registry.put_program("acme", program).await.unwrap();
    for (name, url) in endpoints {
        let hook = Webhook {
            program_id: String::new(),
            name: String::new(),
            url: url.clone(),
            secret: HOOK_SECRET.into(),
            events: WebhookEventType::ALL.to_vec(),
            deleted: false,
            restricted: false,
            partner_id: None,
        };
        registry.put_webhook("acme", name, hook).await.unwrap();
    }
    registry
}

/// Publishes `per_partner` events for each partner to the outbox, interleaved, the
/// way the ledger would: each carries its sequence number in its partner's order.
async fn publish(config: &Config, partners: &[&str], per_partner: usize) -> Vec<WebhookEvent> {
    let bus = touchline::app::kafka_bus(config).await.unwrap();
    let mut events = Vec::new();
    for seq in 0..per_partner {
        for partner in partners {
            events.push(WebhookEvent {
                v: 1,
                id: Uuid::new_v4(),
                kind: WebhookEventType::CommissionCreated,
                program_id: "acme".into(),
                partner_id: partner.to_string(),
                // The outbox carries milliseconds.
                created_at: chrono::DateTime::from_timestamp_millis(
                    chrono::Utc::now().timestamp_millis(),
                )
                .unwrap(),
                data: json!({"seq": seq}),
            });
        }
    }
    let messages: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.key(), serde_json::to_vec(e).unwrap()))
        .collect();
    for chunk in messages.chunks(200) {
        bus.publish_outbox(chunk).await.unwrap();
    }
    events
}

/// Per partner, the sequence numbers in the order their first 2xx arrived.
fn first_acknowledged_order(requests: &[Received]) -> HashMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for r in requests.iter().filter(|r| (200..300).contains(&r.status)) {
        if seen.insert(r.event_id.clone()) {
            let body = r.json();
            order
                .entry(body["partner_id"].as_str().unwrap().to_string())
                .or_default()
                .push(body["data"]["seq"].as_u64().unwrap());
        }
    }
    order
}

fn assert_in_order(requests: &[Received], partners: &[&str], per_partner: usize) {
    let order = first_acknowledged_order(requests);
    for p in partners {
        assert_eq!(
            order.get(*p).cloned().unwrap_or_default(),
            (0..per_partner as u64).collect::<Vec<_>>(),
            "partner {p}: events acknowledged out of ledger order"
        );
    }
}

/// Outcome counts per endpoint in the delivery log, final rows collapsed.
async fn log_counts(config: &Config) -> HashMap<(String, String), u64> {
    ch_query(
        config,
        "SELECT endpoint, outcome, count() FROM webhook_deliveries FINAL GROUP BY endpoint, outcome",
    )
    .await
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].clone()), r[2].parse().unwrap()))
    .collect()
}

/// Waits until `endpoint` has `n` final rows with `outcome` in the log.
async fn wait_logged(config: &Config, endpoint: &str, outcome: &str, n: u64, timeout: Duration) {
    wait_count(
        config,
        &format!(
            "SELECT count() FROM webhook_deliveries FINAL \
             WHERE endpoint = '{endpoint}' AND outcome = '{outcome}'"
        ),
        n,
        timeout,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_suite_on_redis_and_on_a_cluster() {
    for extra in [&[][..], CLUSTER] {
        let config = config(extra);
        let redis = touchline::app::redis_connection(&config)
            .await
            .expect("redis is required (scripts/stack.sh up --redis-cluster)");
        suite::run(&RedisQueue::new(redis, &config.redis.prefix)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_are_retried_and_none_holds_up_the_others() {
    let config = delivery_config(&[]);
    create_topics(&config).await;
    migrate(&config).await;
    let ok = Receiver::start(Behavior::Ok).await;
    let flaky = Receiver::start(Behavior::FailFirst(2)).await;
    let slow = Receiver::start(Behavior::SlowFirst(Duration::from_secs(3))).await;
    let refused = free_port();
    let down_port = free_port();
    let _registry = registry_with(
        &config,
        &[
            ("ok", ok.url("/hook")),
            ("flaky", flaky.url("/hook")),
            ("slow", slow.url("/hook")),
            ("refused", format!("http://127.0.0.1:{refused}/hook")),
            ("down", format!("http://127.0.0.1:{down_port}/hook")),
        ],
    )
    .await;
    let delivery = start_webhooks(&config);
    let partners = ["alice", "bob", "carol"];
    let events = publish(&config, &partners, 10).await;
    let n = events.len();

    // The endpoints that answer get everything in order, while two endpoints do not
    // answer at all (their breakers open; their events wait).
    let got = ok.wait_acknowledged(n, Duration::from_secs(30)).await;
    assert_eq!(got.len(), n, "2xx at once: one request per event");
    assert_signed(&got, HOOK_SECRET);
    assert_in_order(&got, &partners, 10);
    let ids: HashSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    let delivered: HashSet<String> = got.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(delivered, ids);
    // The body is the outbox event as the ledger published it.
    let first = got
        .iter()
        .find(|r| r.event_id == events[0].id.to_string())
        .unwrap();
    let body: WebhookEvent = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body, events[0]);

    let got = flaky.wait_acknowledged(n, Duration::from_secs(60)).await;
    assert_signed(&got, HOOK_SECRET);
    assert_in_order(&got, &partners, 10);
    let attempts = got
        .iter()
        .filter(|r| r.event_id == events[0].id.to_string())
        .count();
    assert_eq!(attempts, 3, "500, 500, then 2xx");

    let got = slow.wait_acknowledged(n, Duration::from_secs(90)).await;
    assert_signed(&got, HOOK_SECRET);
    assert_in_order(&got, &partners, 10);

    // The log: one acknowledged row per event and endpoint; failures one per attempt.
    wait_logged(
        &config,
        "ok",
        "acknowledged",
        n as u64,
        Duration::from_secs(10),
    )
    .await;
    wait_logged(
        &config,
        "flaky",
        "acknowledged",
        n as u64,
        Duration::from_secs(10),
    )
    .await;
    wait_logged(
        &config,
        "slow",
        "acknowledged",
        n as u64,
        Duration::from_secs(10),
    )
    .await;
    let counts = log_counts(&config).await;
    assert_eq!(
        counts.get(&("flaky".into(), "failed".into())),
        Some(&(2 * n as u64))
    );
    assert_eq!(
        counts.get(&("slow".into(), "failed".into())),
        Some(&(n as u64))
    );
    assert_eq!(counts.get(&("ok".into(), "failed".into())), None);
    let refused_failures = counts
        .get(&("refused".into(), "failed".into()))
        .copied()
        .unwrap_or(0);
    assert!(
        refused_failures >= 1,
        "refused connections are attempts too"
    );
    let timeouts = ch_query(
        &config,
        "SELECT count() FROM webhook_deliveries WHERE endpoint = 'slow' AND outcome = 'failed' \
         AND status_code = 0 AND error LIKE 'no answer within%'",
    )
    .await;
    assert_eq!(timeouts[0][0], n.to_string());
    let flaky_status = ch_query(
        &config,
        "SELECT DISTINCT status_code FROM webhook_deliveries WHERE endpoint = 'flaky' AND outcome = 'failed'",
    )
    .await;
    assert_eq!(flaky_status, vec![vec!["500".to_string()]]);

    // The breaker keeps the refused endpoint's attempts few: its 30 events wait without
    // an attempt each while it rests.
    let metrics = touchline::metrics::install().render();
    assert!(metrics.contains("touchline_webhooks_attempts_total{outcome=\"acknowledged\"}"));
    assert!(metrics.contains("touchline_webhooks_failures_total{reason=\"connect\"}"));
    assert!(metrics.contains("touchline_webhooks_failures_total{reason=\"timeout\"}"));
    assert!(metrics.contains("touchline_webhooks_failures_total{reason=\"status\"}"));
    assert_promtool_clean(&metrics);
    let oldest = gauge(&metrics, "touchline_webhooks_oldest_undelivered_seconds");
    assert!(
        oldest > 0.0,
        "the refused endpoint's events are waiting: {oldest}"
    );

    // The endpoint that was down comes up after a minute: everything arrives, in order.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let refused_before = log_counts(&config)
        .await
        .get(&("refused".into(), "failed".into()))
        .copied()
        .unwrap_or(0);
    // Without the breaker each of its three queues would be tried every 1-2 s.
    assert!(
        refused_before <= 60,
        "the circuit breaker spares a dead endpoint: {refused_before} attempts in a minute"
    );
    let down = Receiver::start_on(down_port, Behavior::Ok).await;
    let got = down.wait_acknowledged(n, Duration::from_secs(30)).await;
    assert_signed(&got, HOOK_SECRET);
    assert_in_order(&got, &partners, 10);
    assert_eq!(got.len(), n, "nothing sent twice once the endpoint answers");
    wait_logged(
        &config,
        "down",
        "acknowledged",
        n as u64,
        Duration::from_secs(10),
    )
    .await;
    delivery.stop().await;
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_window_are_given_up_and_recorded() {
    let config = delivery_config(&[("TOUCHLINE__WEBHOOKS__GIVE_UP_AFTER_SECS", "3")]);
    create_topics(&config).await;
    migrate(&config).await;
    let refused = format!("http://127.0.0.1:{}/hook", free_port());
    let registry = registry_with(&config, &[("gone", refused.clone()), ("removed", refused)]).await;
    let delivery = start_webhooks(&config);
    let events = publish(&config, &["alice", "bob"], 3).await;
    // An endpoint removed while its events wait: they are given up at their next turn.
    wait_count(
        &config,
        "SELECT count() FROM webhook_deliveries WHERE endpoint = 'removed'",
        1,
        Duration::from_secs(30),
    )
    .await;
    registry.delete_webhook("acme", "removed").await.unwrap();
    wait_logged(
        &config,
        "gone",
        "given_up",
        events.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    wait_logged(
        &config,
        "removed",
        "given_up",
        events.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    let reasons = ch_query(
        &config,
        "SELECT DISTINCT error FROM webhook_deliveries FINAL \
         WHERE endpoint = 'removed' AND outcome = 'given_up'",
    )
    .await;
    assert_eq!(
        reasons,
        vec![vec![
            "the endpoint no longer subscribes to this event".to_string()
        ]]
    );
    let rows = ch_query(
        &config,
        "SELECT toString(event_id), status_code FROM webhook_deliveries FINAL \
         WHERE outcome = 'given_up' AND endpoint = 'gone'",
    )
    .await;
    let mut given_up: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    given_up.sort();
    let mut ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    ids.sort();
    assert_eq!(given_up, ids);
    assert!(rows.iter().all(|r| r[1] == "0"));
    // Given up means gone from the queues: nothing is waiting any more.
    let redis = touchline::app::redis_connection(&config).await.unwrap();
    let queue = RedisQueue::new(redis, &config.redis.prefix);
    use touchline::webhooks::queue::DeliveryQueue;
    assert_eq!(queue.backlog().await.unwrap().queues, 0);
    delivery.stop().await;
}

/// Waits until a third of `n` requests arrived, then kills `process` (SIGKILL).
async fn kill_a_third_in(receiver: &Receiver, n: usize, process: &mut Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < n / 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "delivery did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process.kill().unwrap();
    process.wait().unwrap();
}

/// Every event of the burst arrives signed and in order per partner, at most
/// `max_resent` of them twice (those in flight at a kill), and the log holds exactly one
/// acknowledgement per event.
async fn assert_delivered_once(
    config: &Config,
    receiver: &Receiver,
    partners: &[&str],
    per_partner: usize,
    max_resent: usize,
) {
    let n = partners.len() * per_partner;
    let got = receiver
        .wait_acknowledged(n, Duration::from_secs(120))
        .await;
    assert_signed(&got, HOOK_SECRET);
    assert_in_order(&got, partners, per_partner);
    let resent = got.len() - n;
    assert!(resent <= max_resent, "{resent} events sent twice");
    wait_logged(
        config,
        "crm",
        "acknowledged",
        n as u64,
        Duration::from_secs(30),
    )
    .await;
    let twice = ch_query(
        config,
        "SELECT count() FROM (SELECT endpoint, event_id FROM webhook_deliveries FINAL \
         WHERE outcome = 'acknowledged' GROUP BY endpoint, event_id HAVING count() > 1)",
    )
    .await;
    assert_eq!(twice[0][0], "0");
}

const POSTBACK_SECRET: &str = "pb-secret-of-p2-0123456789";

/// Partner `p2`'s own postback (SPEC §9.1) on `url`, stored as a partner key registers
/// it: restricted, with its own secret.
async fn add_postback(registry: &Registry, url: String) {
    let hook = Webhook {
        program_id: String::new(),
        name: String::new(),
        url,
        secret: POSTBACK_SECRET.into(),
        events: WebhookEventType::ALL.to_vec(),
        deleted: false,
        restricted: true,
        partner_id: Some("p2".into()),
    };
    let name = Webhook::postback_name("p2", "pb");
    registry.put_webhook("acme", &name, hook).await.unwrap();
}

/// The postback got p2's events only, each signed with p2's secret, in order, and the
/// log acknowledged each exactly once.
async fn assert_postback_delivered_once(config: &Config, postback: &Receiver, per_partner: usize) {
    let got = postback
        .wait_acknowledged(per_partner, Duration::from_secs(120))
        .await;
    assert_signed(&got, POSTBACK_SECRET);
    let partners: HashSet<String> = got
        .iter()
        .map(|r| r.json()["partner_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        partners,
        HashSet::from(["p2".to_string()]),
        "another partner's event"
    );
    assert_in_order(&got, &["p2"], per_partner);
    wait_logged(
        config,
        "p2~pb",
        "acknowledged",
        per_partner as u64,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_delivery_process_loses_nothing_and_acknowledges_once() {
    // The postback's receiver is local: the operator lists it, as for a local receiver.
    let config = delivery_config(&[
        ("TOUCHLINE__WEBHOOKS__CONCURRENCY", "8"),
        (
            "TOUCHLINE__WEBHOOKS__ALLOWED_PRIVATE_HOSTS",
            r#"["127.0.0.1"]"#,
        ),
    ]);
    create_topics(&config).await;
    migrate(&config).await;
    // Each request takes 50 ms: the burst lasts seconds, long enough to kill mid-way.
    let receiver = Receiver::start(Behavior::Delay(Duration::from_millis(50))).await;
    let postback = Receiver::start(Behavior::Delay(Duration::from_millis(50))).await;
    let registry = registry_with(&config, &[("crm", receiver.url("/hook"))]).await;
    add_postback(&registry, postback.url("/postback")).await;
    let partners = ["p1", "p2", "p3", "p4"];
    let n = publish(&config, &partners, 60).await.len();
    let port = free_port();
    let mut first = spawn_webhooks_process(&config, port);
    kill_a_third_in(&receiver, n, &mut first).await;
    let at_kill = receiver.received().len();
    assert!(at_kill < n, "killed before the end of the burst");

    let _second = spawn_webhooks_process(&config, port);
    // At least once: only what was in flight at the kill may come twice.
    assert_delivered_once(&config, &receiver, &partners, 60, 8).await;
    assert_postback_delivered_once(&config, &postback, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_delivery_log_pauses_delivery_and_resends_nothing() {
    let direct = delivery_config(&[]);
    create_topics(&direct).await;
    migrate(&direct).await;
    // Delivery reaches ClickHouse through a proxy the test switches off.
    let proxy = Proxy::start("127.0.0.1:8123").await;
    let mut config = direct.clone();
    config.clickhouse.url = format!("http://{}", proxy.addr);
    let receiver = Receiver::start(Behavior::Ok).await;
    let _registry = registry_with(&config, &[("crm", receiver.url("/hook"))]).await;
    let delivery = start_webhooks(&config);
    let partners = ["alice", "bob"];
    let first = publish(&config, &partners, 5).await;
    receiver
        .wait_acknowledged(first.len(), Duration::from_secs(30))
        .await;
    wait_logged(&direct, "crm", "acknowledged", 10, Duration::from_secs(30)).await;

    proxy.cut();
    let second = publish(&config, &partners, 5).await;
    // While the log cannot record, at most the attempts already under way (one per
    // queue) go out; none starts after.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = receiver.received().len() - first.len();
    assert!(
        during <= partners.len(),
        "{during} requests while the log was down"
    );
    proxy.restore();

    let n = first.len() + second.len();
    let got = receiver.wait_acknowledged(n, Duration::from_secs(60)).await;
    wait_logged(
        &direct,
        "crm",
        "acknowledged",
        n as u64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got.len(), n, "an acknowledged event is never sent again");
    assert_signed(&got, HOOK_SECRET);
    delivery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_delivery_processes_share_the_queues_and_one_takes_over_from_the_other() {
    let config = delivery_config(&[("TOUCHLINE__WEBHOOKS__CONCURRENCY", "4")]);
    create_topics(&config).await;
    migrate(&config).await;
    let receiver = Receiver::start(Behavior::Delay(Duration::from_millis(50))).await;
    let _registry = registry_with(&config, &[("crm", receiver.url("/hook"))]).await;
    let partners = ["p1", "p2", "p3", "p4", "p5", "p6"];
    let n = publish(&config, &partners, 30).await.len();
    // Two members of one group: each parks its partitions' events, both send from the
    // shared queues, one queue at a time each.
    let mut first = spawn_webhooks_process(&config, free_port());
    let _second = spawn_webhooks_process(&config, free_port());
    // One dies; the other takes its queues over when their leases run out.
    kill_a_third_in(&receiver, n, &mut first).await;
    assert_delivered_once(&config, &receiver, &partners, 30, 4).await;
}

/// SPEC §9: an endpoint a key registered never reaches the operator's network, checked
/// again at connect time on the resolved address. The endpoints here are stored as if
/// their names had pointed elsewhere at registration (DNS rebinding): `localhost` and a
/// literal loopback address, both with a live receiver behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_endpoints_never_connect_into_the_operators_network() {
    let config = delivery_config(&[]);
    create_topics(&config).await;
    migrate(&config).await;
    let open = Receiver::start(Behavior::Ok).await;
    let by_name = Receiver::start(Behavior::Ok).await;
    let by_address = Receiver::start(Behavior::Ok).await;
    let registry = registry_with(&config, &[("open", open.url("/hook"))]).await;
    for (name, url) in [
        ("by-name", format!("http://localhost:{}/hook", by_name.port)),
        ("by-address", by_address.url("/hook")),
    ] {
        let hook = Webhook {
            program_id: "acme".into(),
            name: name.into(),
            url,
            secret: HOOK_SECRET.into(),
            events: WebhookEventType::ALL.to_vec(),
            deleted: false,
            restricted: true,
            partner_id: None,
        };
        registry
            .store()
            .put(&touchline::registry::Entity::Webhook(hook))
            .await
            .unwrap();
    }
    let delivery = start_webhooks(&config);
    let events = publish(&config, &["alice"], 3).await;
    // The operator's own endpoint gets everything; by then the restricted ones have
    // been tried, and refused before any byte was sent.
    assert_eq!(
        open.wait_acknowledged(3, Duration::from_secs(30))
            .await
            .len(),
        3
    );
    for name in ["by-name", "by-address"] {
        let refused = wait_count(
            &config,
            &format!(
                "SELECT count() FROM webhook_deliveries WHERE endpoint = '{name}' \
                 AND outcome = 'failed' AND position(error, 'operator') > 0"
            ),
            1,
            Duration::from_secs(30),
        )
        .await;
        assert!(refused >= 1, "{name}: no refused attempt in the log");
    }
    assert!(
        by_name.received().is_empty(),
        "a restricted endpoint reached localhost"
    );
    assert!(
        by_address.received().is_empty(),
        "a restricted endpoint reached 127.0.0.1"
    );
    assert_eq!(events.len(), 3);
    delivery.stop().await;
}
