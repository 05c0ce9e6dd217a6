//! Webhook delivery throughput (SPEC §3.6): events already in the outbox → queues in
//! Redis → signed POSTs to a local receiver answering 204 → `webhook_deliveries` in
//! ClickHouse, with the default concurrency and one queue per partner.
//!
//! Needs the local stack (`scripts/stack.sh up`): its broker, Redis and ClickHouse.
//!
//! `cargo bench --bench webhooks -- [events] [partners]` (default 20000 events, 200 partners)

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use touchline::bus::EventBus;
use touchline::config::Config;
use touchline::registry::{Webhook, WebhookEventType};
use touchline::webhooks::WebhookEvent;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench targets in test mode: this one needs services.
    if !args.iter().any(|a| a == "--bench") {
        println!("webhooks bench: run with `cargo bench --bench webhooks`");
        return;
    }
    let mut numbers = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let events = numbers.next().unwrap_or(20_000);
    let partners = numbers.next().unwrap_or(200).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(events, partners));
}

/// A receiver answering 204 at once; the distinct event ids it saw.
async fn receiver() -> (u16, Arc<Mutex<HashSet<String>>>, Arc<Mutex<u64>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let requests = Arc::new(Mutex::new(0u64));
    let (s, r) = (Arc::clone(&seen), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, requests) = (Arc::clone(&s), Arc::clone(&r));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let id = req
                            .headers()
                            .get("x-touchline-event-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        seen.lock().unwrap().insert(id);
                        *requests.lock().unwrap() += 1;
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, seen, requests)
}

async fn acknowledged_rows(config: &Config) -> u64 {
    let url = format!(
        "{}/?database={}",
        config.clickhouse.url, config.clickhouse.database
    );
    let req = hyper::Request::post(url)
        .body(Full::new(Bytes::from(
            "SELECT count() FROM webhook_deliveries FINAL WHERE outcome = 'acknowledged' \
             FORMAT TabSeparated",
        )))
        .unwrap();
    let resp = touchline::http::client()
        .request(req)
        .await
        .expect("clickhouse answers");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).trim().parse().unwrap_or(0)
}

async fn run(events: usize, partners: usize) {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let vars: Vec<(String, String)> = vec![
        ("TOUCHLINE__KAFKA__PARTITIONS".into(), "4".into()),
        (
            "TOUCHLINE__KAFKA__TOPICS__CLICKS".into(),
            format!("w{id}.clicks"),
        ),
        (
            "TOUCHLINE__KAFKA__TOPICS__CONVERSIONS".into(),
            format!("w{id}.conversions"),
        ),
        ("TOUCHLINE__KAFKA__TOPICS__DLQ".into(), format!("w{id}.dlq")),
        (
            "TOUCHLINE__KAFKA__TOPICS__WEBHOOKS".into(),
            format!("w{id}.webhooks"),
        ),
        ("TOUCHLINE__REDIS__PREFIX".into(), format!("w{id}")),
        ("TOUCHLINE__CLICKHOUSE__DATABASE".into(), format!("w{id}")),
        ("TOUCHLINE__WEBHOOKS__GROUP_ID".into(), format!("w{id}")),
        (
            "TOUCHLINE__WEBHOOKS__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        ("TOUCHLINE__LOG__LEVEL".into(), "warn".into()),
    ];
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let config = Config::load(Some(&local), vars).unwrap();
    touchline::app::run_migrate(config.clone())
        .await
        .expect("clickhouse and the broker answer (scripts/stack.sh up)");
    let (port, seen, requests) = receiver().await;
    let store = touchline::app::registry_store(&config)
        .await
        .expect("redis answers");
    let registry = touchline::registry::Registry::open(store).await.unwrap();
    touchline::testkit::synthetic::seed_registry(&registry, 1)
        .await
        .unwrap();
    let hook = Webhook {
        program_id: String::new(),
        name: String::new(),
        url: format!("http://127.0.0.1:{port}/hooks"),
        secret: "whsec-bench-0123456789".into(),
        events: WebhookEventType::ALL.to_vec(),
        deleted: false,
        restricted: false,
        partner_id: None,
    };
    registry.put_webhook("acme", "bench", hook).await.unwrap();

    // The outbox, filled the way the ledger fills it: keyed by partner, in order.
    let bus = touchline::app::kafka_bus(&config).await.unwrap();
    let messages: Vec<(String, Vec<u8>)> = (0..events)
        .map(|i| {
            let e = WebhookEvent {
                v: 1,
                id: uuid::Uuid::new_v4(),
                kind: WebhookEventType::CommissionCreated,
                program_id: "acme".into(),
                partner_id: format!("p{}", i % partners),
                created_at: chrono::Utc::now(),
                data: serde_json::json!({"seq": i / partners, "amount": "12.3400"}),
            };
            (e.key(), serde_json::to_vec(&e).unwrap())
        })
        .collect();
    for chunk in messages.chunks(1000) {
        bus.publish_outbox(chunk).await.unwrap();
    }
    println!(
        "{events} events for {partners} partners in the outbox; concurrency {}",
        config.webhooks.concurrency
    );

    let (trigger, shutdown) = touchline::shutdown::channel();
    let started = Instant::now();
    let task = tokio::spawn(touchline::app::run_webhooks(config.clone(), shutdown));
    loop {
        let got = seen.lock().unwrap().len();
        if got >= events {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("delivery stalled at {got}/{events}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = started.elapsed().as_secs_f64();
    loop {
        if acknowledged_rows(&config).await >= events as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("delivery log stalled");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = started.elapsed().as_secs_f64();
    trigger.fire();
    task.await.unwrap().unwrap();
    println!(
        "delivered {events} events in {delivered:.2}s: {:.0} events/s ({} requests); all acknowledged in the log after {logged:.2}s",
        events as f64 / delivered,
        requests.lock().unwrap()
    );
}
