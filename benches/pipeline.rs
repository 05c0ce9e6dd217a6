//! Pipeline throughput end to end (SPEC §8): Tansu with memory storage → dedup,
//! journeys, attribution, commission (Redis) → ClickHouse, against the raw
//! consumer-group read rate of the same topics, measured in the same run.
//!
//! Needs Redis and ClickHouse (`scripts/stack.sh up`) and the tansu binary; starts its
//! own Tansu with `memory://` storage on a free port.
//!
//! `cargo bench --bench pipeline -- [visitors]` (default 60000 visitors ≈ 300k events).
//! `BENCH_STATE=memory` keeps the pipeline's state in process memory instead of Redis
//! (the registry stays in Redis): the same run without the state layer's cost.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use touchline::config::Config;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench targets in test mode: this one needs services
    // and minutes, so it only runs under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("pipeline bench: run with `cargo bench --bench pipeline`");
        return;
    }
    let visitors: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(60_000);
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(visitors));
}

/// Batches of messages the pipeline has taken so far, from its own metrics.
fn batches() -> u64 {
    touchline::metrics::install()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("touchline_pipeline_batch_messages_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn count(config: &Config, table: &str) -> u64 {
    clickhouse(
        config,
        &format!("SELECT count() FROM {table} FORMAT TabSeparated"),
    )
    .await
    .trim()
    .parse()
    .unwrap_or(0)
}

async fn clickhouse(config: &Config, sql: &str) -> String {
    let url = format!(
        "{}/?database={}",
        config.clickhouse.url, config.clickhouse.database
    );
    let req = hyper::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            sql.to_string(),
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
    String::from_utf8_lossy(&body).into_owned()
}

/// Commands Redis has run since its start (or `CONFIG RESETSTAT`), its main thread's
/// CPU seconds and the memory it uses (bytes).
async fn redis_figures(config: &Config) -> (u64, f64, u64) {
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let field = |name: &str| -> Option<&str> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let commands = field("total_commands_processed")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu = ["used_cpu_user_main_thread", "used_cpu_sys_main_thread"]
        .iter()
        .filter_map(|f| field(f)?.parse::<f64>().ok())
        .sum();
    let memory = field("used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (commands, cpu, memory)
}

/// Removes the run's state and rows: each run leaves ~1.3 M Redis keys (months of TTL)
/// and a database, which on a development machine pile up run after run.
async fn clean_up(config: &Config) {
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0u64;
    let mut removed = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", config.redis.prefix))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            removed += keys.len();
            let _: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    clickhouse(
        config,
        &format!("DROP DATABASE IF EXISTS {}", config.clickhouse.database),
    )
    .await;
    println!(
        "cleaned up: {removed} redis keys, database {}",
        config.clickhouse.database
    );
}

async fn run(visitors: usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let home = std::env::var("HOME").unwrap_or_default();
    let tansu = ["tansu".to_string(), format!("{home}/.cargo/bin/tansu")]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("tansu is required (scripts/stack.sh up)");
    let mut broker = std::process::Command::new(tansu)
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let vars: Vec<(String, String)> = vec![
        (
            "TOUCHLINE__KAFKA__BROKERS".into(),
            format!("127.0.0.1:{port}"),
        ),
        ("TOUCHLINE__KAFKA__PARTITIONS".into(), "4".into()),
        (
            "TOUCHLINE__KAFKA__TOPICS__CLICKS".into(),
            format!("b{id}.clicks"),
        ),
        (
            "TOUCHLINE__KAFKA__TOPICS__CONVERSIONS".into(),
            format!("b{id}.conversions"),
        ),
        ("TOUCHLINE__KAFKA__TOPICS__DLQ".into(), format!("b{id}.dlq")),
        ("TOUCHLINE__REDIS__PREFIX".into(), format!("b{id}")),
        ("TOUCHLINE__CLICKHOUSE__DATABASE".into(), format!("b{id}")),
        ("TOUCHLINE__PIPELINE__GROUP_ID".into(), format!("b{id}")),
        (
            "TOUCHLINE__PIPELINE__ADMIN_LISTEN".into(),
            "127.0.0.1:0".into(),
        ),
        ("TOUCHLINE__LOG__LEVEL".into(), "warn".into()),
    ];
    // BENCH_CONVERSION_PARTITIONS: the conversions topic spread over partitions, to show
    // what lockstep settlement costs with BENCH_INSTANCES > 1.
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .chain(std::env::var("BENCH_CONVERSION_PARTITIONS").ok().map(|n| {
            println!("conversions topic with {n} partitions");
            ("TOUCHLINE__KAFKA__CONVERSION_PARTITIONS".to_string(), n)
        }))
        .collect();
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let config = Config::load(Some(&local), vars).unwrap();
    touchline::app::run_migrate(config.clone())
        .await
        .expect("clickhouse and the broker answer");
    let store = touchline::app::registry_store(&config)
        .await
        .expect("redis answers");
    let registry = touchline::registry::Registry::open(store).await.unwrap();
    touchline::testkit::synthetic::seed_registry(&registry, 40)
        .await
        .unwrap();

    let t = Instant::now();
    let stream = touchline::testkit::synthetic::produce(&config.kafka, 2026, visitors, 40)
        .await
        .unwrap();
    let total = stream.clicks + stream.conversions;
    println!(
        "produced {total} events ({} clicks, {} conversions) in {:.2}s: {:.0}/s",
        stream.clicks,
        stream.conversions,
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );

    // Raw consumer-group read of the same topics.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", format!("raw-{id}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    consumer
        .subscribe(&[
            &config.kafka.topics.clicks,
            &config.kafka.topics.conversions,
        ])
        .unwrap();
    let mut read = 0u64;
    let mut started = None;
    while read < total {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
                read += 1;
            }
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => panic!("raw read stalled at {read}/{total}"),
        }
    }
    let raw_secs = started.unwrap().elapsed().as_secs_f64();
    let raw_rate = total as f64 / raw_secs;
    println!("raw consumer-group read: {total} messages in {raw_secs:.2}s: {raw_rate:.0} msg/s");
    drop(consumer);

    // The pipeline, end to end into ClickHouse: BENCH_INSTANCES instances (default 1)
    // in one consumer group, each with its own state connection, as scaled out.
    let instances: usize = std::env::var("BENCH_INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let memory = std::env::var("BENCH_STATE").as_deref() == Ok("memory");
    if memory {
        assert_eq!(instances, 1, "memory state is one process's own");
        println!("pipeline state in process memory (BENCH_STATE=memory)");
    }
    let redis_before = redis_figures(&config).await;
    let (trigger, shutdown) = touchline::shutdown::channel();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..instances {
        let state: std::sync::Arc<dyn touchline::pipeline::store::StateStore> = if memory {
            std::sync::Arc::new(touchline::pipeline::store::MemoryState::new())
        } else {
            touchline::app::state_store(&config).await.unwrap()
        };
        let mut config = config.clone();
        if instances > 1 {
            // Static members, joined before any partition is handed out: a dynamic
            // group rebalances mid-backlog, and Tansu's memory storage, asked to fetch
            // from an offset inside a record batch (a committed offset usually is),
            // delivers nothing of that batch: the messages before the next batch would
            // never arrive, and this bench would wait for them until it gives up.
            config.pipeline.instance_id = format!("bench-{n}");
        }
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            touchline::app::run_pipeline_on(config, state, shutdown.clone()),
            tracing::info_span!("instance", n),
        )));
    }
    if instances > 1 {
        println!("{instances} pipeline instances");
    }
    // The raw read is timed from its first message: so is the pipeline, beside the
    // time from its start (joining the group, loading the registry).
    while batches() == 0 && started.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = Instant::now();
    loop {
        let clicks = count(&config, "clicks").await;
        let conversions = count(&config, "conversions").await;
        if clicks >= stream.clicks && conversions >= stream.conversions {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            panic!("pipeline stalled at {clicks} clicks, {conversions} conversions");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    let from_first = first.elapsed().as_secs_f64();
    trigger.fire();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    println!("pipeline end to end: {total} events in {secs:.2}s: {rate:.0} events/s");
    let first_rate = total as f64 / from_first;
    println!(
        "  from its first message: {from_first:.2}s: {first_rate:.0} events/s, {:.2} of the raw read",
        first_rate / raw_rate
    );
    println!("ratio to the raw read: {:.2}", rate / raw_rate);
    let redis_after = redis_figures(&config).await;
    let commands = redis_after.0.saturating_sub(redis_before.0);
    let grown = redis_after.2.saturating_sub(redis_before.2);
    println!(
        "redis during the run: {commands} commands ({:.1} per event), main thread CPU {:.2}s, \
         memory +{:.1} MiB ({:.0} bytes per event)",
        commands as f64 / total as f64,
        redis_after.1 - redis_before.1,
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / total as f64
    );
    println!(
        "rows: attributions {}, commissions {}",
        count(&config, "attributions").await,
        count(&config, "commissions").await
    );
    // Where the time went, from the pipeline's own metrics.
    for line in touchline::metrics::install().render().lines() {
        let wanted = [
            "touchline_sink_insert_duration_seconds_sum",
            "touchline_sink_insert_duration_seconds_count",
            "touchline_pipeline_batch_messages_sum",
            "touchline_pipeline_batch_messages_count",
            "touchline_pipeline_retries_total",
        ];
        if wanted.iter().any(|w| line.starts_with(w)) {
            println!("  {line}");
        }
    }
    clean_up(&config).await;
    broker.kill().unwrap();
    let _ = broker.wait();
}
