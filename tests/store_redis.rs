//! The state store's shared suite (src/pipeline/store) against a real Redis: the same
//! assertions the memory store passes in unit tests, so the two cannot drift.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let config = config(&[]);
    let conn = touchline::app::redis_connection(&config.redis.url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "redis at {} is required (scripts/stack.sh up): {e:#}",
                config.redis.url
            )
        });
    let store = touchline::pipeline::store::RedisState::new(conn, &config.redis.prefix);
    touchline::pipeline::store::suite::all(&store).await;
}
