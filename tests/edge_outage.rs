//! The broker goes away mid-test (SPEC §3.1): redirects keep answering 302, clicks wait
//! in the bounded buffer and arrive once the broker is back. This test runs its own Tansu
//! (SQLite storage, so topics survive the restart) so that it can kill it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use touchline::bus::EventBus;

fn click_id_of(location: &str) -> String {
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "tl_click")
        .map(|(_, v)| v.into_owned())
        .expect("tl_click in location")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_go_on_while_the_broker_is_down_and_clicks_arrive_after() {
    let dir = std::env::temp_dir().join(format!("touchline-outage-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = start_tansu(&dir, port);
    wait_port(port, true).await;

    let brokers = format!("127.0.0.1:{port}");
    let config = config(&[("TOUCHLINE__KAFKA__BROKERS", &brokers)]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    seed(&edge.url("")).await;

    let ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15";
    let mut expected = BTreeSet::new();
    for _ in 0..5 {
        let r = send(
            Method::GET,
            &edge.url("/r/alice-spring"),
            &[("user-agent", ua)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
        expected.insert(click_id_of(r.header("location")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The broker dies.
    broker.kill().unwrap();
    broker.wait().unwrap();
    wait_port(port, false).await;
    let outage = Instant::now();
    for _ in 0..50 {
        let r = send(
            Method::GET,
            &edge.url("/r/alice-spring"),
            &[("user-agent", ua)],
            "",
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FOUND,
            "redirects never wait for the broker"
        );
        expected.insert(click_id_of(r.header("location")));
    }
    assert!(
        outage.elapsed() < Duration::from_secs(10),
        "redirects kept answering during the outage"
    );
    assert!(edge.bus.buffered() > 0, "clicks wait in the buffer");

    // The broker comes back with its data; the buffer drains into it.
    let mut broker = start_tansu(&dir, port);
    wait_port(port, true).await;
    let events = read_topic(
        &brokers,
        &config.kafka.topics.clicks,
        expected.len(),
        Duration::from_secs(60),
    )
    .await;
    let got: BTreeSet<String> = events
        .iter()
        .map(|(_, e)| e["click_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    assert!(missing.is_empty(), "clicks lost: {missing:?}");
    assert_eq!(got, expected);

    edge.stop().await;
    broker.kill().unwrap();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
