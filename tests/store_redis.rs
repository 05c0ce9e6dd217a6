//! The state store's shared suite (src/pipeline/store) against real Redis, one server
//! and a three-master Redis Cluster (`scripts/stack.sh up --redis-cluster`): the same
//! assertions the memory store passes in unit tests, so the stores cannot drift.

mod common;

use common::*;

async fn suite(extra: &[(&str, &str)]) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    suite(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_passes_the_suite() {
    suite(CLUSTER).await;
}
