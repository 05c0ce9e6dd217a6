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

/// A key's time to live in ms (-1: none, -2: no such key).
async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let config = suite(&[]).await;
    // TTLs are renewed once a minute per key, not by every write: still, every key the
    // suite left must expire, but those the key table says live on (the hold-end
    // queue, the frontiers, a lifetime plan's first sales, tier moves and the last
    // boundary done: a partner's tier history is kept like the registry's).
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
        let ttl = pttl(&mut conn, &key).await;
        let lives_on = key == format!("{p}:due")
            || key == format!("{p}:wm")
            || key.starts_with(&format!("{p}:fs:"))
            || key.starts_with(&format!("{p}:tm:"))
            || key.starts_with(&format!("{p}:tb:"));
        assert!(lives_on || ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_passes_the_suite() {
    suite(CLUSTER).await;
}

/// A trim that removes every mark of a windowed tally must not leave the next write to
/// create the key afresh without a TTL (renewals are skipped for a minute per key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tally_trimmed_empty_keeps_its_ttl() {
    use touchline::pipeline::store::{Answer, Mark, Read, RedisState, StateStore, Tally, Write};
    let config = config(&[]);
    let conn = touchline::app::redis_connection(&config)
        .await
        .expect("redis is required (scripts/stack.sh up)");
    let store = RedisState::new(conn, &config.redis.prefix);
    let tally = Tally::Sales {
        program: "acme".into(),
        partner: "p".into(),
    };
    const DAY: i64 = 86_400_000;
    let t = 1_790_000_000_000;
    let write = |ms: i64, id: u128| Write::Tally {
        tally: tally.clone(),
        mark: Mark { ms, id },
    };
    store.write(&[write(t, 1)]).await.unwrap();
    // 40 days on, past the tally's keep; an id divisible by 16 makes the read trim.
    let later = Mark {
        ms: t + 40 * DAY,
        id: 32,
    };
    let count = store
        .read(&[Read::Count {
            tally: tally.clone(),
            from_ms: later.ms - 30 * DAY,
            before: later,
        }])
        .await
        .unwrap();
    assert_eq!(count, vec![Answer::Count(0)]);
    store.write(&[write(later.ms, 33)]).await.unwrap();

    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:ts:acme:p", config.redis.prefix);
    let ttl = pttl(&mut conn, &key).await;
    assert!(ttl > 0, "{key} has no TTL ({ttl})");
    let marks: u64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        marks, 2,
        "the trimmed mark is gone, the new one and the anchor stay"
    );
}
