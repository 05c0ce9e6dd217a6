//! Start-up wiring: builds the registry, bus, stores and sinks a configuration names,
//! and runs the commands of the binary on them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::bus::kafka::{self, KafkaBus};
use crate::bus::memory::MemoryBus;
use crate::bus::EventBus;
use crate::config::{BusKind, Config, StoreKind};
use crate::registry::redis_store::RedisStore;
use crate::registry::{MemoryStore, Registry, RegistryStore};
use crate::shutdown::Shutdown;

/// Connects to Redis with timeouts, so that an unreachable server is an error, not a hang.
pub async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).with_context(|| format!("bad redis.url {url}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_connection_manager_with_config(config),
    )
    .await
    .with_context(|| format!("redis at {url} did not answer in time"))?
    .with_context(|| format!("cannot connect to redis at {url}"))
}

/// The registry store the configuration names.
pub async fn registry_store(config: &Config) -> anyhow::Result<Arc<dyn RegistryStore>> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Redis => {
            let conn = redis_connection(&config.redis.url).await?;
            Arc::new(RedisStore::connect(conn, &config.redis.prefix).await?)
        }
    })
}

/// Opens the registry cache and starts following the store.
pub async fn registry(
    config: &Config,
    store: Arc<dyn RegistryStore>,
    shutdown: Shutdown,
) -> anyhow::Result<Arc<Registry>> {
    let registry = Registry::open(store)
        .await
        .context("cannot load the registry")?;
    registry.spawn_follower(Duration::from_millis(config.registry.refresh_ms), shutdown);
    Ok(registry)
}

/// The Kafka bus, after checking that its topics exist.
pub async fn kafka_bus(config: &Config) -> anyhow::Result<Arc<KafkaBus>> {
    let t = &config.kafka.topics;
    kafka::check_topics(
        &config.kafka,
        &[&t.clicks, &t.conversions, &t.dlq],
        Duration::from_secs(10),
    )
    .await
    .context("broker check failed")?;
    Ok(Arc::new(KafkaBus::new(
        &config.kafka,
        config.edge.buffer_events,
        Duration::from_millis(config.edge.ack_timeout_ms),
    )?))
}

/// Runs the HTTP edge alone until `shutdown`.
pub async fn run_edge(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus: Arc<dyn EventBus> = match config.bus.kind {
        BusKind::Kafka => kafka_bus(&config).await?,
        BusKind::Memory => {
            anyhow::bail!("`touchline edge` needs bus.kind = \"kafka\"; use `touchline serve` for the embedded bus")
        }
    };
    let store = registry_store(&config).await?;
    let registry = registry(&config, store, shutdown.clone()).await?;
    let listener = TcpListener::bind(config.edge.listen)
        .await
        .with_context(|| format!("cannot listen on edge.listen {}", config.edge.listen))?;
    tracing::info!(listen = %config.edge.listen, "edge listening");
    crate::edge::spawn(config, registry, bus, listener, shutdown).await?;
    Ok(())
}

/// An in-process bus sized like the edge's click buffer.
pub fn memory_bus(config: &Config) -> Arc<MemoryBus> {
    MemoryBus::new(config.edge.buffer_events)
}
