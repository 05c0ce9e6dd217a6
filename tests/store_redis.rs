//! The state store's shared suite (src/pipeline/store) against real Redis, one server
//! and a three-master Redis Cluster (`scripts/stack.sh up --redis-cluster`): the same
//! assertions the memory store passes in unit tests, so the stores cannot drift.

mod common;

use common::*;

async fn suite(extra: &[(&str, &str)]) -> touchline::config::Config {
    let config = config(extra);
    let conn = touchline::app::redis_connection(&config)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "redis at {} is required (scripts/stack.sh up --redis-cluster): {e:#}",
                config.redis.url
            )
        });
    let store = touchline::pipeline::store::RedisState::new(conn, &config.redis.prefix);
    touchline::pipeline::store::suite::all(&store).await;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let config = suite(&[]).await;
    // TTLs are renewed once a minute per key, not by every write: still, every key the
    // suite left must expire, but the three the key table says live on (the hold-end
    // queue, the frontiers, a lifetime plan's first sales).
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // SCAN in steps: the server holds other tests' keys too.
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", config.redis.prefix))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(keys.len() > 20, "{keys:?}");
    let p = &config.redis.prefix;
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let lives_on = key == format!("{p}:due")
            || key == format!("{p}:wm")
            || key.starts_with(&format!("{p}:fs:"));
        assert!(lives_on || ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_passes_the_suite() {
    suite(CLUSTER).await;
}
