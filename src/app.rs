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

/// Connects to Redis (or a Redis Cluster with `redis.cluster`), with timeouts, so that
/// an unreachable server is an error, not a hang.
pub async fn redis_connection(config: &Config) -> anyhow::Result<crate::kv::Redis> {
    crate::kv::Redis::connect(&config.redis.url, config.redis.cluster).await
}

/// The registry store the configuration names.
pub async fn registry_store(config: &Config) -> anyhow::Result<Arc<dyn RegistryStore>> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Redis => {
            let conn = redis_connection(config).await?;
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
    kafka::check_topics(&config.kafka, &t.all(), Duration::from_secs(10))
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
    let registry = registry(&config, Arc::clone(&store), shutdown.clone()).await?;
    let listener = TcpListener::bind(config.edge.listen)
        .await
        .with_context(|| format!("cannot listen on edge.listen {}", config.edge.listen))?;
    tracing::info!(listen = %config.edge.listen, "edge listening");
    let books = clickhouse_books(&config, store, Arc::clone(&registry), Arc::clone(&bus));
    crate::edge::spawn(config, registry, bus, books, listener, shutdown).await?;
    Ok(())
}

/// The review, payout and partner APIs' ledger and the API's audit log over
/// ClickHouse, when the sink is ClickHouse. They connect on first use: the edge's
/// redirects never wait for ClickHouse. A separate edge cannot read an embedded file
/// sink (the pipeline process owns it).
pub fn clickhouse_books(
    config: &Config,
    locks: Arc<dyn crate::registry::RegistryStore>,
    registry: Arc<Registry>,
    bus: Arc<dyn EventBus>,
) -> crate::edge::Books {
    if config.sink.kind != crate::config::SinkKind::Clickhouse {
        return crate::edge::Books::default();
    }
    let ch = Arc::new(crate::sink::clickhouse::ClickHouseSink::new(
        &config.clickhouse,
    ));
    crate::edge::Books {
        ledger: Some(Arc::new(crate::ledger::Ledger {
            view: Arc::new(crate::ledger::clickhouse::ClickHouseLedger::new(
                &config.clickhouse,
            )),
            sink: ch.clone(),
            locks,
            outbox: Some(crate::ledger::LedgerOutbox { registry, bus }),
        })),
        audit: Some(ch),
        analytics: Some(Arc::new(
            crate::analytics::clickhouse::ClickHouseAnalytics::new(&config.clickhouse),
        )),
    }
}

/// An in-process bus sized like the edge's click buffer.
pub fn memory_bus(config: &Config) -> Arc<MemoryBus> {
    MemoryBus::new(config.edge.buffer_events)
}

/// The pipeline state store the configuration names.
pub async fn state_store(
    config: &Config,
) -> anyhow::Result<Arc<dyn crate::pipeline::store::StateStore>> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(crate::pipeline::store::MemoryState::new()),
        StoreKind::Redis => Arc::new(crate::pipeline::store::RedisState::new(
            redis_connection(config).await?,
            &config.redis.prefix,
        )),
    })
}

/// The sink the configuration names, checked at start-up.
pub async fn sink(config: &Config) -> anyhow::Result<Arc<dyn crate::sink::Sink>> {
    Ok(sinks(config).await?.sink)
}

/// What one sink gives a process: the table writer, the ledger view over what it
/// writes, and the webhook delivery log.
pub struct Sinks {
    pub sink: Arc<dyn crate::sink::Sink>,
    pub view: Arc<dyn crate::ledger::LedgerView>,
    pub log: Arc<dyn crate::sink::DeliveryLog>,
    pub audit: Arc<dyn crate::sink::AuditLog>,
    /// The analytics API's reports over what the sink wrote (SPEC §9.2).
    pub analytics: Arc<dyn crate::analytics::Source>,
}

/// The sink, ledger view and delivery log the configuration names, checked at start-up.
pub async fn sinks(config: &Config) -> anyhow::Result<Sinks> {
    use crate::config::SinkKind;
    Ok(match config.sink.kind {
        SinkKind::File => {
            let file =
                crate::sink::file::FileSink::open(&config.sink.data_dir).with_context(|| {
                    format!(
                        "cannot open sink.data_dir {}",
                        config.sink.data_dir.display()
                    )
                })?;
            let file = Arc::new(file);
            let (sink, view) = crate::ledger::memory::over_files(file.clone())
                .context("cannot read the ledger back from sink.data_dir")?;
            Sinks {
                sink,
                log: file.clone(),
                analytics: Arc::new(crate::analytics::files::FileAnalytics::new(file.dir())),
                audit: file,
                view,
            }
        }
        SinkKind::Clickhouse => {
            let ch = &config.clickhouse;
            crate::sink::clickhouse::wait_ready(ch, Duration::from_secs(10))
                .await
                .with_context(|| format!("clickhouse at {} did not answer", ch.url))?;
            let sink = Arc::new(crate::sink::clickhouse::ClickHouseSink::new(ch));
            crate::sink::clickhouse::check_tables(ch)
                .await
                .with_context(|| {
                    format!(
                        "database {} is not ready; run `touchline migrate`",
                        ch.database
                    )
                })?;
            Sinks {
                sink: sink.clone(),
                view: Arc::new(crate::ledger::clickhouse::ClickHouseLedger::new(ch)),
                analytics: Arc::new(crate::analytics::clickhouse::ClickHouseAnalytics::new(ch)),
                log: sink.clone(),
                audit: sink,
            }
        }
    })
}

/// Serves the pipeline's /healthz, /readyz and /metrics on `pipeline.admin_listen`;
/// returns the task and the address it listens on.
async fn pipeline_admin(
    config: &Config,
    state: Arc<dyn crate::pipeline::store::StateStore>,
    sink: Arc<dyn crate::sink::Sink>,
    shutdown: Shutdown,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let admin = crate::pipeline::admin::ServiceAdmin::pipeline(state, sink);
    serve_admin(
        "pipeline.admin_listen",
        config.pipeline.admin_listen,
        admin,
        shutdown,
    )
    .await
}

/// Serves `admin` on `listen` (the `key` it came from); returns the task and address.
async fn serve_admin(
    key: &str,
    listen: std::net::SocketAddr,
    admin: crate::pipeline::admin::ServiceAdmin,
    shutdown: Shutdown,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {key} {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "{key}: admin listening");
    let admin = Arc::new(admin);
    let task = tokio::spawn(crate::http::serve(
        listener,
        admin,
        shutdown,
        Duration::from_secs(2),
    ));
    Ok((task, addr))
}

/// The pipeline's consumer-group member.
async fn kafka_source(config: &Config) -> anyhow::Result<kafka::KafkaSource> {
    let partitions = kafka::partitions_of(&config.kafka, Duration::from_secs(10))
        .await
        .context("cannot read the topics' partitions")?;
    let instance = instance_id(&config.pipeline.instance_id, config.pipeline.admin_listen);
    if instance.is_empty() {
        tracing::warn!("no pipeline.instance_id and an ephemeral admin port: dynamic group membership, which some brokers do not recover from after a crash");
    } else {
        tracing::info!(instance = %instance, "static group member");
    }
    Ok(kafka::KafkaSource::new(
        &config.kafka,
        &config.pipeline.group_id,
        &instance,
        partitions,
    )?)
}

/// The consumer-group instance id: `pipeline.instance_id`, else `{host}-{admin port}`,
/// stable across restarts of the same process on the same host (two pipelines on one
/// host cannot share an admin port), so that a restarted pipeline takes its partitions
/// back at once on Kafka and on Tansu alike. Empty (dynamic membership) only when the
/// admin port is ephemeral.
pub fn instance_id(explicit: &str, admin_listen: std::net::SocketAddr) -> String {
    if !explicit.is_empty() {
        return explicit.to_string();
    }
    let port = admin_listen.port();
    if port == 0 {
        return String::new();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("{host}-{port}")
}

/// Runs the consumer pipeline alone until `shutdown`.
pub async fn run_pipeline(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    pipeline_bus_is_kafka(&config)?;
    let state = state_store(&config).await?;
    run_pipeline_on(config, state, shutdown).await
}

fn pipeline_bus_is_kafka(config: &Config) -> anyhow::Result<()> {
    if config.bus.kind != BusKind::Kafka {
        anyhow::bail!("`touchline pipeline` needs bus.kind = \"kafka\"; use `touchline serve` for the embedded bus");
    }
    Ok(())
}

/// [`run_pipeline`] on a given state store (the pipeline bench measures it on process
/// memory too, to tell the state layer's cost from the rest).
pub async fn run_pipeline_on(
    config: Config,
    state: Arc<dyn crate::pipeline::store::StateStore>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    pipeline_bus_is_kafka(&config)?;
    let bus = kafka_bus(&config).await?;
    let store = registry_store(&config).await?;
    let registry = registry(&config, store, shutdown.clone()).await?;
    let sink = sink(&config).await?;
    let (admin, _) = pipeline_admin(
        &config,
        Arc::clone(&state),
        Arc::clone(&sink),
        shutdown.clone(),
    )
    .await?;
    let source = kafka_source(&config).await?;
    tracing::info!(group = %config.pipeline.group_id, "pipeline consuming");
    let t = &config.kafka.topics;
    let pipeline =
        crate::pipeline::Pipeline::new(config.pipeline.clone(), registry, state, sink, bus)
            .topics(&t.clicks, &t.conversions);
    pipeline.run(Box::new(source), shutdown).await?;
    let _ = admin.await;
    Ok(())
}

/// Where webhook events wait for delivery: Redis with `store.kind = "redis"`.
pub async fn delivery_queue(
    config: &Config,
) -> anyhow::Result<Arc<dyn crate::webhooks::queue::DeliveryQueue>> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(crate::webhooks::queue::MemoryQueue::new()),
        StoreKind::Redis => Arc::new(crate::webhooks::queue::RedisQueue::new(
            redis_connection(config).await?,
            &config.redis.prefix,
        )),
    })
}

/// The outbox consumer-group member of webhook delivery, as static member `instance`
/// unless empty.
fn outbox_source(
    config: &Config,
    instance: &str,
) -> anyhow::Result<Box<dyn crate::bus::EventSource>> {
    let w = &config.webhooks;
    Ok(Box::new(kafka::KafkaSource::outbox(
        &config.kafka,
        &w.group_id,
        instance,
    )?))
}

/// Runs webhook delivery alone until `shutdown` (SPEC §3.6); start several with one
/// group to share the work.
pub async fn run_webhooks(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.bus.kind != BusKind::Kafka || config.store.kind != StoreKind::Redis {
        anyhow::bail!("`touchline webhooks` needs bus.kind = \"kafka\" and store.kind = \"redis\"; `touchline serve` delivers webhooks on the embedded ones");
    }
    kafka::check_topics(
        &config.kafka,
        &[config.kafka.topics.webhooks.as_str()],
        Duration::from_secs(10),
    )
    .await
    .context("broker check failed")?;
    let store = registry_store(&config).await?;
    let registry = registry(&config, store, shutdown.clone()).await?;
    let queue = delivery_queue(&config).await?;
    let Sinks { sink, log, .. } = sinks(&config).await?;
    let probe_queue = Arc::clone(&queue);
    let admin = crate::pipeline::admin::ServiceAdmin::new(crate::metrics::install())
        .check("queue", move || {
            let q = Arc::clone(&probe_queue);
            async move {
                crate::pipeline::admin::retrying("redis")?;
                q.ping().await.map_err(|e| e.to_string())
            }
        })
        .check("sink", move || {
            let sink = Arc::clone(&sink);
            async move { sink.ping().await.map_err(|e| e.to_string()) }
        });
    let (admin, _) = serve_admin(
        "webhooks.admin_listen",
        config.webhooks.admin_listen,
        admin,
        shutdown.clone(),
    )
    .await?;
    let w = &config.webhooks;
    let source = outbox_source(&config, &instance_id(&w.instance_id, w.admin_listen))?;
    tracing::info!(group = %config.webhooks.group_id, "webhook delivery consuming");
    crate::webhooks::delivery::Delivery::run(
        config.webhooks.clone(),
        registry,
        queue,
        log,
        source,
        shutdown,
    )
    .await?;
    let _ = admin.await;
    Ok(())
}

/// Creates or upgrades the ClickHouse schema and the Kafka topics; idempotent.
pub async fn run_migrate(config: Config) -> anyhow::Result<()> {
    if config.sink.kind == crate::config::SinkKind::Clickhouse {
        let ch = &config.clickhouse;
        crate::sink::clickhouse::wait_ready(ch, Duration::from_secs(10))
            .await
            .with_context(|| format!("clickhouse at {} did not answer", ch.url))?;
        crate::sink::clickhouse::migrate(ch)
            .await
            .context("schema migration failed")?;
        println!("clickhouse: database {} is up to date", ch.database);
    }
    if config.bus.kind == BusKind::Kafka {
        let t = &config.kafka.topics;
        kafka::create_topics(&config.kafka, &t.all())
            .await
            .context("topic creation failed")?;
        println!(
            "kafka: topics {} exist (new ones with {} partitions, conversions with {})",
            t.all().join(", "),
            config.kafka.partitions,
            config.kafka.conversion_partitions
        );
    }
    Ok(())
}

/// Where a running `serve` listens, and the bus its edge publishes to (the demo
/// replays a recorded month onto it, as the edge recorded it then).
#[derive(Clone)]
pub struct ServeAddrs {
    pub edge: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub bus: Arc<dyn EventBus>,
}

/// Edge and pipeline in one process until `shutdown`; `ready` learns the addresses once
/// both listen. On the embedded bus, stopping drains it: every accepted event is written.
// Long on purpose: the wiring of every part of `serve` in start order, read top to
// bottom; each step is a call into the part it starts.
pub async fn run_serve(
    config: Config,
    shutdown: Shutdown,
    ready: Option<tokio::sync::oneshot::Sender<ServeAddrs>>,
) -> anyhow::Result<()> {
    let store = registry_store(&config).await?;
    let registry = registry(&config, Arc::clone(&store), shutdown.clone()).await?;
    let state = state_store(&config).await?;
    let Sinks {
        sink,
        view,
        log,
        audit,
        analytics,
    } = sinks(&config).await?;
    type Source = Box<dyn crate::bus::EventSource>;
    let (bus, source, outbox, draining): (Arc<dyn EventBus>, Source, Source, bool) =
        match config.bus.kind {
            BusKind::Memory => {
                let bus = memory_bus(&config);
                let (source, outbox) = (bus.source(), bus.outbox_source());
                (bus, Box::new(source), Box::new(outbox), true)
            }
            BusKind::Kafka => {
                let bus = kafka_bus(&config).await?;
                // Named after the pipeline's port: serve does not listen on
                // webhooks.admin_listen, which a `touchline webhooks` beside it may.
                let w = &config.webhooks;
                let instance = match instance_id("", config.pipeline.admin_listen) {
                    _ if !w.instance_id.is_empty() => w.instance_id.clone(),
                    dynamic if dynamic.is_empty() => dynamic,
                    host_port => format!("{host_port}-webhooks"),
                };
                let outbox = outbox_source(&config, &instance)?;
                (bus, Box::new(kafka_source(&config).await?), outbox, false)
            }
        };
    let ledger = Arc::new(crate::ledger::Ledger {
        view,
        sink: Arc::clone(&sink),
        locks: store,
        outbox: Some(crate::ledger::LedgerOutbox {
            registry: Arc::clone(&registry),
            bus: Arc::clone(&bus),
        }),
    });
    let edge_listener = TcpListener::bind(config.edge.listen)
        .await
        .with_context(|| format!("cannot listen on edge.listen {}", config.edge.listen))?;
    let edge_addr = edge_listener.local_addr()?;
    // The pipeline stops after the edge, so that it sees every event the edge accepted.
    let (pipeline_trigger, pipeline_shutdown) = crate::shutdown::channel();
    let (admin_task, admin_addr) = pipeline_admin(
        &config,
        Arc::clone(&state),
        Arc::clone(&sink),
        pipeline_shutdown.clone(),
    )
    .await?;
    let mut pipeline = crate::pipeline::Pipeline::new(
        config.pipeline.clone(),
        Arc::clone(&registry),
        state,
        sink,
        Arc::clone(&bus),
    );
    if draining {
        pipeline = pipeline.draining();
    } else {
        let t = &config.kafka.topics;
        pipeline = pipeline.topics(&t.clicks, &t.conversions);
    }
    let mut pipeline_task = tokio::spawn(pipeline.run(source, pipeline_shutdown));
    // Delivery stops after the pipeline, so that it takes the pipeline's last events.
    let (delivery_trigger, delivery_shutdown) = crate::shutdown::channel();
    let mut delivery_task = tokio::spawn(crate::webhooks::delivery::Delivery::run(
        config.webhooks.clone(),
        Arc::clone(&registry),
        delivery_queue(&config).await?,
        log,
        outbox,
        delivery_shutdown,
    ));
    tracing::info!(edge = %edge_addr, admin = %admin_addr, "serving");
    let (sink_kind, data_dir) = (config.sink.kind, config.sink.data_dir.clone());
    let books = crate::edge::Books {
        ledger: Some(ledger),
        audit: Some(audit),
        analytics: Some(analytics),
    };
    let mut edge_task = crate::edge::spawn(
        config,
        registry,
        Arc::clone(&bus),
        books,
        edge_listener,
        shutdown,
    );
    if let Some(tx) = ready {
        let _ = tx.send(ServeAddrs {
            edge: edge_addr,
            admin: admin_addr,
            bus: Arc::clone(&bus),
        });
    }
    tokio::select! {
        r = &mut edge_task => r?,
        // The pipeline ends only when told to, after the edge: ending before means
        // processing stopped, and a process that accepts events it will never write
        // must not stay up looking healthy.
        r = &mut pipeline_task => {
            edge_task.abort();
            delivery_trigger.fire();
            return Err(match r {
                Ok(Ok(())) => anyhow::anyhow!("the pipeline stopped while the edge was serving"),
                Ok(Err(e)) => anyhow::Error::new(e).context("the pipeline stopped"),
                Err(e) => anyhow::anyhow!("the pipeline task failed: {e}"),
            });
        }
        r = &mut delivery_task => {
            edge_task.abort();
            pipeline_trigger.fire();
            return Err(match r {
                Ok(Ok(())) => anyhow::anyhow!("webhook delivery stopped while the edge was serving"),
                Ok(Err(e)) => anyhow::Error::new(e).context("webhook delivery stopped"),
                Err(e) => anyhow::anyhow!("the webhook delivery task failed: {e}"),
            });
        }
    }
    pipeline_trigger.fire();
    pipeline_task.await??;
    delivery_trigger.fire();
    delivery_task.await??;
    let _ = admin_task.await;
    if sink_kind == crate::config::SinkKind::File {
        // The file sink's stand-in for the ClickHouse view, recomputed from its tables.
        crate::sink::file::write_partner_stats(&data_dir).with_context(|| {
            format!(
                "cannot write partner_stats_daily.jsonl in {}",
                data_dir.display()
            )
        })?;
    }
    Ok(())
}
