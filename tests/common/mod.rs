//! Shared helpers of the integration tests. They talk to the real local stack
//! (`scripts/stack.sh up`) and fail, never skip, when a service is missing. Each test
//! gets fresh topics, a fresh Redis key prefix and its own ClickHouse database. This file
//! holds the configurations; each concern has its own file below.

// Every test binary compiles all of these and uses a few.
#![allow(dead_code, unused_imports)]

mod browser;
mod clickhouse;
mod http;
mod kafka;
mod processes;
mod proxy;
mod receiver;
mod stream;

pub use browser::*;
pub use clickhouse::*;
pub use http::*;
pub use kafka::*;
pub use processes::*;
pub use proxy::*;
pub use receiver::*;
pub use stream::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::Value;
use tokio::net::TcpListener;
use touchline::config::Config;
use touchline::shutdown::{self, Trigger};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Settings for the three-master Redis Cluster of `scripts/stack.sh up --redis-cluster`.
pub const CLUSTER: &[(&str, &str)] = &[
    ("TOUCHLINE__REDIS__CLUSTER", "true"),
    (
        "TOUCHLINE__REDIS__URL",
        "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002",
    ),
];
pub use touchline::testkit::fixtures::{program_json, SECRET};

/// A configuration for the local stack with everything unique to this test.
pub fn config(extra: &[(&str, &str)]) -> Config {
    // Warnings of in-process components show with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("TOUCHLINE_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        ))
        .try_init();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let short = &id[..12];
    let mut vars: Vec<(String, String)> = vec![
        ("TOUCHLINE__EDGE__LISTEN".into(), "127.0.0.1:0".into()),
        ("TOUCHLINE__ADMIN__TOKEN".into(), ADMIN_TOKEN.into()),
        ("TOUCHLINE__KAFKA__PARTITIONS".into(), "2".into()),
        (
            "TOUCHLINE__KAFKA__TOPICS__CLICKS".into(),
            format!("t{short}.clicks"),
        ),
        (
            "TOUCHLINE__KAFKA__TOPICS__CONVERSIONS".into(),
            format!("t{short}.conversions"),
        ),
        (
            "TOUCHLINE__KAFKA__TOPICS__DLQ".into(),
            format!("t{short}.dlq"),
        ),
        (
            "TOUCHLINE__KAFKA__TOPICS__WEBHOOKS".into(),
            format!("t{short}.webhooks"),
        ),
        ("TOUCHLINE__REDIS__PREFIX".into(), format!("t{short}")),
        (
            "TOUCHLINE__CLICKHOUSE__DATABASE".into(),
            format!("t{short}"),
        ),
        ("TOUCHLINE__PIPELINE__GROUP_ID".into(), format!("g{short}")),
        (
            "TOUCHLINE__PIPELINE__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        ("TOUCHLINE__WEBHOOKS__GROUP_ID".into(), format!("w{short}")),
        (
            "TOUCHLINE__WEBHOOKS__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
    ];
    for (k, v) in extra {
        vars.push((k.to_string(), v.to_string()));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    Config::load(Some(&local), vars).expect("test configuration is valid")
}

/// The embedded default (in-process bus, memory stores) on ephemeral ports, writing its
/// files under `dir`.
pub fn embedded_config(dir: &Path) -> Config {
    let mut config = Config::embedded();
    config.edge.listen = "127.0.0.1:0".parse().unwrap();
    config.pipeline.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.sink.data_dir = dir.to_path_buf();
    config
}

/// The environment variables that reproduce `config` for a child process.
pub fn env_for(config: &Config) -> Vec<(String, String)> {
    let t = &config.kafka.topics;
    vec![
        ("TOUCHLINE__ADMIN__TOKEN".into(), config.admin.token.clone()),
        (
            "TOUCHLINE__KAFKA__BROKERS".into(),
            config.kafka.brokers.clone(),
        ),
        ("TOUCHLINE__KAFKA__TOPICS__CLICKS".into(), t.clicks.clone()),
        (
            "TOUCHLINE__KAFKA__TOPICS__CONVERSIONS".into(),
            t.conversions.clone(),
        ),
        ("TOUCHLINE__KAFKA__TOPICS__DLQ".into(), t.dlq.clone()),
        (
            "TOUCHLINE__KAFKA__TOPICS__WEBHOOKS".into(),
            t.webhooks.clone(),
        ),
        (
            "TOUCHLINE__REDIS__PREFIX".into(),
            config.redis.prefix.clone(),
        ),
        (
            "TOUCHLINE__REDIS__CLUSTER".into(),
            config.redis.cluster.to_string(),
        ),
        (
            "TOUCHLINE__CLICKHOUSE__DATABASE".into(),
            config.clickhouse.database.clone(),
        ),
        (
            "TOUCHLINE__PIPELINE__GROUP_ID".into(),
            config.pipeline.group_id.clone(),
        ),
        (
            "TOUCHLINE__WEBHOOKS__GROUP_ID".into(),
            config.webhooks.group_id.clone(),
        ),
        ("TOUCHLINE__LOG__LEVEL".into(), "warn".into()),
    ]
}
