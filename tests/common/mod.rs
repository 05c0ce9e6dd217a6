//! Shared helpers of the integration tests. They talk to the real local stack
//! (`scripts/stack.sh up`) and fail, never skip, when a service is missing. Each test
//! gets fresh topics, a fresh Redis key prefix and its own ClickHouse database.

#![allow(dead_code)]

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
pub const SECRET: &str = "0123456789abcdef-test-secret";

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

/// Creates the test's topics; panics with a clear message when no broker answers.
pub async fn create_topics(config: &Config) {
    let t = &config.kafka.topics;
    touchline::bus::kafka::create_topics(&config.kafka, &t.all())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "kafka broker at {} is required (scripts/stack.sh up): {e}",
                config.kafka.brokers
            )
        });
}

/// A running edge on an ephemeral port.
pub struct RunningEdge {
    pub addr: SocketAddr,
    pub trigger: Trigger,
    pub task: tokio::task::JoinHandle<()>,
    pub bus: Arc<touchline::bus::kafka::KafkaBus>,
    pub registry: Arc<touchline::registry::Registry>,
}

impl RunningEdge {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting, flushes buffered clicks, waits for the task.
    pub async fn stop(self) {
        self.trigger.fire();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// Starts an edge on the real stack with `config` (topics must exist).
pub async fn start_edge(config: &Config) -> RunningEdge {
    let (trigger, shutdown) = shutdown::channel();
    let store = touchline::app::registry_store(config)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "redis at {} is required (scripts/stack.sh up): {e:#}",
                config.redis.url
            )
        });
    let registry = touchline::app::registry(config, Arc::clone(&store), shutdown.clone())
        .await
        .unwrap();
    let bus = touchline::app::kafka_bus(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = touchline::edge::spawn(
        config.clone(),
        Arc::clone(&registry),
        bus.clone(),
        touchline::app::clickhouse_books(config, store, Arc::clone(&registry), bus.clone()),
        listener,
        shutdown,
    );
    RunningEdge {
        addr,
        trigger,
        task,
        bus,
        registry,
    }
}

/// A response, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request with the given headers and body.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = touchline::http::client()
        .request(req)
        .await
        .expect("edge answers");
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An admin call with the test token.
pub async fn admin(method: Method, url: &str, body: Value) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    send(
        method,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// The program of SPEC §3.3.
pub fn program_json() -> Value {
    serde_json::json!({
        "name": "Acme partners", "currency": "USD", "secret": SECRET,
        "fallback_url": "https://acme.example/", "lookback_days": 30,
        "attribution": {"model": "last_touch"},
        "click_dedup_window_secs": 3600, "max_touches": 32,
        "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
        "commission": touchline::engine::commission::example_plan()
    })
}

/// Creates program `acme`, partner `alice` (gold) and link `alice-spring`.
pub async fn seed(edge_url: &str) {
    let r = admin(
        Method::PUT,
        &format!("{edge_url}/api/v1/programs/acme"),
        program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::PUT,
        &format!("{edge_url}/api/v1/partners/alice"),
        serde_json::json!({"program_id": "acme", "tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{edge_url}/api/v1/links"),
        serde_json::json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring",
            "destination": "https://shop.example/spring?lang=en", "campaign": "spring",
            "utm_source": "alice", "utm_medium": "affiliate"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Signs and posts a conversions body.
pub async fn post_conversions(edge_url: &str, body: &str) -> Resp {
    let sig = touchline::signature::sign(SECRET, chrono::Utc::now().timestamp(), body.as_bytes());
    send(
        Method::POST,
        &format!("{edge_url}/api/v1/conversions"),
        &[
            ("x-touchline-signature", &sig),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Reads `topic` from the beginning until `n` messages or `timeout`.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, Value)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => panic!("consumer error: {e}"),
            Ok(Ok(m)) => {
                let v: Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON event");
                out.push((m.key().map(<[u8]>::to_vec), v));
            }
        }
    }
    out
}

/// Creates this test's ClickHouse database and Kafka topics (`touchline migrate`).
pub async fn migrate(config: &Config) {
    touchline::app::run_migrate(config.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "clickhouse at {} and kafka are required (scripts/stack.sh up): {e:#}",
                config.clickhouse.url
            )
        });
}

/// Runs a query against the test's database, returning TSV rows.
pub async fn ch_query(config: &Config, sql: &str) -> Vec<Vec<String>> {
    let url = format!(
        "{}/?database={}",
        config.clickhouse.url, config.clickhouse.database
    );
    let r = send(
        Method::POST,
        &url,
        &[],
        format!("{sql} FORMAT TabSeparated"),
    )
    .await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(r.status, StatusCode::OK, "clickhouse refused {sql}: {text}");
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Runs every query of schemas/queries/ for `program` over a wide period.
pub async fn query_pack(config: &Config, program: &str) -> Vec<(String, Vec<Vec<String>>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let sql = std::fs::read_to_string(&f).unwrap();
        let sql = sql
            .replace("{db}", &config.clickhouse.database)
            .replace("{program_id}", &format!("'{program}'"))
            .replace("{from}", "'2000-01-01'")
            .replace("{to}", "'2100-01-01'");
        let body: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        out.push((
            f.file_name().unwrap().to_string_lossy().to_string(),
            ch_query(config, &body).await,
        ));
    }
    out
}

/// Polls `sql` (a single count) until it reaches `n` or `timeout` passes.
pub async fn wait_count(config: &Config, sql: &str, n: u64, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: u64 = ch_query(config, sql).await[0][0].parse().unwrap();
        if got >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pipeline running in this process.
pub struct RunningPipeline {
    pub trigger: Trigger,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningPipeline {
    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("pipeline stops in time")
            .expect("pipeline task")
            .expect("pipeline ends cleanly");
    }
}

/// Starts `touchline pipeline` in this process.
pub fn start_pipeline(config: &Config) -> RunningPipeline {
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(touchline::app::run_pipeline(config.clone(), shutdown));
    RunningPipeline { trigger, task }
}

/// Where a child process logs: a file under `$TOUCHLINE_TEST_LOGS` when set (to debug a
/// failing test), nowhere otherwise.
pub fn child_log(name: &str) -> std::process::Stdio {
    match std::env::var_os("TOUCHLINE_TEST_LOGS") {
        Some(dir) => {
            let path = Path::new(&dir).join(format!("{name}-{}.log", uuid::Uuid::new_v4()));
            std::fs::File::create(path)
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null())
        }
        None => std::process::Stdio::null(),
    }
}

/// A child process that is killed when dropped, so that a failing test leaves no
/// pipeline or broker running behind it.
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `touchline pipeline` as its own process (to be killed).
pub fn spawn_pipeline_process(config: &Config, extra: &[(&str, &str)]) -> Proc {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_touchline"));
    cmd.args(["pipeline", "--config"])
        .arg(&local)
        .envs(env_for(config))
        .env("TOUCHLINE__PIPELINE__ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "TOUCHLINE__PIPELINE__LATE_GRACE_SECS",
            config.pipeline.late_grace_secs.to_string(),
        )
        .env(
            "TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS",
            config.pipeline.flush_interval_ms.to_string(),
        )
        .env(
            "TOUCHLINE__PIPELINE__BATCH_ROWS",
            config.pipeline.batch_rows.to_string(),
        )
        .env(
            "TOUCHLINE__PIPELINE__POLL_BATCH",
            config.pipeline.poll_batch.to_string(),
        )
        .env("TOUCHLINE__CLICKHOUSE__URL", &config.clickhouse.url)
        .env("TOUCHLINE__REDIS__URL", &config.redis.url)
        .env(
            "TOUCHLINE__LOG__LEVEL",
            std::env::var("TOUCHLINE_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(child_log("pipeline"));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("pipeline process starts"))
}

/// Writes the registry of the generated stream into the store `config` names.
pub async fn seed_registry_direct(config: &Config, partners: usize) {
    let store = touchline::app::registry_store(config)
        .await
        .expect("redis is required (scripts/stack.sh up)");
    let registry = touchline::registry::Registry::open(store).await.unwrap();
    touchline::testkit::synthetic::seed_registry(&registry, partners)
        .await
        .unwrap();
}

/// Sizes of a generated stream.
pub use touchline::testkit::synthetic::Stream;

/// Produces the deterministic stream onto the topics of `config`.
pub async fn produce_stream(
    config: &Config,
    seed: u64,
    visitors: usize,
    partners: usize,
) -> Stream {
    touchline::testkit::synthetic::produce(&config.kafka, seed, visitors, partners)
        .await
        .expect("broker acknowledged")
}

/// Everything a dashboard or a payout could read: the query pack and every table's
/// deduplicated content.
pub async fn snapshot(config: &Config) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out = query_pack(config, "acme").await;
    for (table, order) in [
        ("clicks", "click_id"),
        ("conversions", "conversion_id"),
        ("attributions", "conversion_id, position"),
        ("commissions", "commission_id"),
        ("commission_status", "commission_id, step"),
        ("partner_stats_daily", "day, partner_id"),
    ] {
        // A view has no FINAL of its own: it reads the tables with FINAL.
        let final_ = if table == "partner_stats_daily" {
            ""
        } else {
            "FINAL"
        };
        out.push((
            table.to_string(),
            ch_query(
                config,
                &format!("SELECT * FROM {table} {final_} ORDER BY {order}"),
            )
            .await,
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Comparing a disturbed run with an undisturbed one.

/// Two configurations on the same topics (a reference and one to disturb), each with
/// its own state, database and group, and a deterministic stream on the topics.
pub const VISITORS: usize = 400;
pub const PARTNERS: usize = 12;

pub async fn setup_pair(seed: u64, extra: &[(&str, &str)]) -> (Config, Config, Stream) {
    setup_pair_at(seed, extra, chrono::Utc::now() - chrono::Duration::hours(3)).await
}

/// [`setup_pair`] with the stream's first click at `base`.
pub async fn setup_pair_at(
    seed: u64,
    extra: &[(&str, &str)],
    base: chrono::DateTime<chrono::Utc>,
) -> (Config, Config, Stream) {
    setup_pair_where(seed, extra, base, |_| {}).await
}

/// [`setup_pair_at`], with `adjust` applied to the second configuration before its
/// database and registry are set up (another Redis, say).
pub async fn setup_pair_where(
    seed: u64,
    extra: &[(&str, &str)],
    base: chrono::DateTime<chrono::Utc>,
    adjust: impl FnOnce(&mut Config),
) -> (Config, Config, Stream) {
    let mut small = vec![
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "30"),
        ("TOUCHLINE__PIPELINE__POLL_BATCH", "100"),
        ("TOUCHLINE__PIPELINE__BATCH_ROWS", "200"),
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "100"),
    ];
    small.extend_from_slice(extra);
    let reference = config(&small);
    let mut other = config(&small);
    other.kafka.topics = reference.kafka.topics.clone();
    adjust(&mut other);
    migrate(&reference).await;
    migrate(&other).await;
    seed_registry_direct(&reference, PARTNERS).await;
    seed_registry_direct(&other, PARTNERS).await;
    let stream = touchline::testkit::synthetic::produce_in(
        &reference.kafka,
        seed,
        VISITORS,
        PARTNERS,
        base,
        touchline::testkit::synthetic::Order::Intake,
    )
    .await
    .expect("broker acknowledged");
    (reference, other, stream)
}

pub async fn run_reference(config: &Config, stream: &Stream) {
    let mut p = spawn_pipeline_process(config, &[]);
    wait_done(config, stream).await;
    p.kill().unwrap();
    p.wait().unwrap();
}

pub async fn wait_done(config: &Config, stream: &Stream) {
    let got = wait_count(
        config,
        "SELECT count() FROM conversions FINAL",
        stream.conversions,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(got, stream.conversions, "every conversion settled");
    let got = wait_count(
        config,
        "SELECT count() FROM clicks FINAL",
        stream.clicks,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(got, stream.clicks, "every click written");
    // Let the last write land everywhere (attributions and commissions follow conversions
    // in the same batch write).
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Pending rows whose hold has not ended yet (no step after their creation).
pub const HOLDS_RUNNING: &str = "SELECT count() FROM (SELECT commission_id, max(step) AS last, \
     argMin(status, step) AS created FROM commission_status GROUP BY commission_id) \
     WHERE created = 'pending' AND last = 0";

/// Waits until every hold of a stream placed more than a week back has ended.
pub async fn wait_holds_ended(config: &Config) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let running: u64 = ch_query(config, HOLDS_RUNNING).await[0][0].parse().unwrap();
        if running == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} holds still running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn assert_same(a: &[(String, Vec<Vec<String>>)], b: &[(String, Vec<Vec<String>>)]) {
    assert_eq!(a.len(), b.len());
    for ((name, rows_a), (_, rows_b)) in a.iter().zip(b) {
        assert!(
            !rows_a.is_empty(),
            "{name} is empty: the comparison would prove nothing"
        );
        assert_eq!(rows_a.len(), rows_b.len(), "{name}: row counts differ");
        for (i, (ra, rb)) in rows_a.iter().zip(rows_b).enumerate() {
            assert_eq!(ra, rb, "{name}: row {i} differs");
        }
    }
}

/// A TCP proxy that a test can switch off (dropping every connection and refusing new
/// ones) and on again, to take a real service away from one component only.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Connections are held open without a byte passing (see [`Proxy::freeze`]).
    frozen: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let target = target.to_string();
        let (up2, frozen2, gen2) = (
            Arc::clone(&up),
            Arc::clone(&frozen),
            Arc::clone(&generation),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let frozen = Arc::clone(&frozen2);
                // Held, silent, until the proxy thaws; then dropped.
                let hold = |socket: tokio::net::TcpStream| async move {
                    while frozen.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    drop(socket);
                };
                if frozen2.load(Ordering::SeqCst) {
                    tokio::spawn(hold(inbound));
                    continue;
                }
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let gen = Arc::clone(&gen2);
                let born = gen.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while gen.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                    hold(inbound).await;
                });
            }
        });
        Proxy {
            addr,
            up,
            frozen,
            generation,
        }
    }

    /// Stops every byte in both directions, open connections and new ones alike, without
    /// closing anything — a stopped server or a partition that drops packets — until
    /// [`Proxy::restore`], which closes what was held.
    pub fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Path of the tansu binary (installed by scripts/stack.sh).
pub fn tansu_binary() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    for candidate in ["tansu".to_string(), format!("{home}/.cargo/bin/tansu")] {
        if std::process::Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok()
        {
            return candidate;
        }
    }
    panic!("tansu is required (scripts/stack.sh up installs it)");
}

/// A private Tansu with SQLite storage in `dir` (topics survive its restarts).
pub fn start_tansu(dir: &Path, port: u16) -> Proc {
    let url = format!("tcp://127.0.0.1:{port}");
    std::process::Command::new(tansu_binary())
        .current_dir(dir)
        .args([
            "broker",
            "--storage-engine",
            "sqlite://tansu.db",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(child_log("tansu"))
        .spawn()
        .map(Proc)
        .expect("tansu starts")
}

/// Waits until a port accepts (`up`) or refuses connections.
pub async fn wait_port(port: u16, up: bool) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            == up
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "port {port} did not become {}",
        if up { "open" } else { "closed" }
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that a metrics page passes `promtool check metrics` (SPEC §3.4;
/// scripts/test.sh installs promtool).
pub fn assert_promtool_clean(text: &str) {
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required (scripts/test.sh installs it)");
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Partner `alice` (gold) and her link `alice-spring` in program `acme`.
pub async fn seed_partner_and_link(url: &str) {
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/alice"),
        serde_json::json!({"program_id": "acme", "tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        serde_json::json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring",
            "destination": "https://shop.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Follows referral link `code` as a browser with `user_agent`; the click id the
/// redirect carries (`tl_click`).
pub async fn click_through(url: &str, code: &str, user_agent: &str) -> String {
    let r = send(
        Method::GET,
        &format!("{url}/r/{code}"),
        &[("user-agent", user_agent)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let location = r.headers["location"].to_str().unwrap();
    location
        .split("tl_click=")
        .nth(1)
        .and_then(|q| q.split('&').next())
        .expect("the redirect carries the click id")
        .to_string()
}

/// Starts `touchline webhooks` in this process.
pub fn start_webhooks(config: &Config) -> RunningPipeline {
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(touchline::app::run_webhooks(config.clone(), shutdown));
    RunningPipeline { trigger, task }
}

/// Starts `touchline webhooks` as its own process (to be killed), its admin on `port` so
/// that a restart is the same static group member.
pub fn spawn_webhooks_process(config: &Config, port: u16) -> Proc {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let w = &config.webhooks;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_touchline"));
    cmd.args(["webhooks", "--config"])
        .arg(&local)
        .envs(env_for(config))
        .env(
            "TOUCHLINE__WEBHOOKS__ADMIN_LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("TOUCHLINE__WEBHOOKS__TIMEOUT_MS", w.timeout_ms.to_string())
        .env(
            "TOUCHLINE__WEBHOOKS__RETRY_BASE_MS",
            w.retry_base_ms.to_string(),
        )
        .env(
            "TOUCHLINE__WEBHOOKS__RETRY_MAX_MS",
            w.retry_max_ms.to_string(),
        )
        .env(
            "TOUCHLINE__WEBHOOKS__CONCURRENCY",
            w.concurrency.to_string(),
        )
        .env("TOUCHLINE__CLICKHOUSE__URL", &config.clickhouse.url)
        .env("TOUCHLINE__REDIS__URL", &config.redis.url)
        .env(
            "TOUCHLINE__WEBHOOKS__ALLOWED_PRIVATE_HOSTS",
            serde_json::to_string(&w.allowed_private_hosts).unwrap(),
        )
        .env(
            "TOUCHLINE__LOG__LEVEL",
            std::env::var("TOUCHLINE_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(child_log("webhooks"));
    Proc(cmd.spawn().expect("webhooks process starts"))
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// What the receiver answered (0: it took too long to answer at all).
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }
}

/// How a [`Receiver`] answers.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// 204 at once.
    Ok,
    /// 500 to the first `n` attempts of each event, then 200.
    FailFirst(u32),
    /// The first attempt of each event waits this long (past the sender's timeout),
    /// later ones are answered at once.
    SlowFirst(Duration),
    /// Every request waits this long, then 200.
    Delay(Duration),
}

/// A webhook receiver on loopback that records every request.
pub struct Receiver {
    pub port: u16,
    requests: Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(behavior: Behavior) -> Receiver {
        Self::start_on(free_port(), behavior).await
    }

    pub async fn start_on(port: u16, behavior: Behavior) -> Receiver {
        use hyper_util::rt::TokioIo;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
            String,
            u32,
        >::new()));
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, seen) = (Arc::clone(&log), Arc::clone(&seen));
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (log, seen) = (Arc::clone(&log), Arc::clone(&seen));
                            async move {
                                let header = |name: &str| {
                                    req.headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string()
                                };
                                let (event_id, signature) = (
                                    header("x-touchline-event-id"),
                                    header("x-touchline-signature"),
                                );
                                let body =
                                    req.into_body().collect().await.unwrap().to_bytes().to_vec();
                                let nth = {
                                    let mut seen = seen.lock().unwrap();
                                    let n = seen.entry(event_id.clone()).or_insert(0);
                                    *n += 1;
                                    *n
                                };
                                let (status, wait) = match behavior {
                                    Behavior::Ok => (204, Duration::ZERO),
                                    Behavior::FailFirst(k) if nth <= k => (500, Duration::ZERO),
                                    Behavior::FailFirst(_) => (200, Duration::ZERO),
                                    Behavior::SlowFirst(d) if nth == 1 => (0, d),
                                    Behavior::SlowFirst(_) => (200, Duration::ZERO),
                                    Behavior::Delay(d) => (200, d),
                                };
                                log.lock().unwrap().push(Received {
                                    event_id,
                                    signature,
                                    body,
                                    status,
                                });
                                tokio::time::sleep(wait).await;
                                let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                                    b"received",
                                )));
                                *r.status_mut() = StatusCode::from_u16(status.max(200)).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            port,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` distinct events were answered 2xx; the requests so far.
    pub async fn wait_acknowledged(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            let acked: std::collections::HashSet<&str> = got
                .iter()
                .filter(|r| (200..300).contains(&r.status))
                .map(|r| r.event_id.as_str())
                .collect();
            if acked.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} events acknowledged in time ({} requests)",
                acked.len(),
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that every request carries a valid signature of its body under `secret`.
pub fn assert_signed(requests: &[Received], secret: &str) {
    let now = chrono::Utc::now().timestamp();
    for r in requests {
        touchline::signature::verify(secret, Some(&r.signature), &r.body, now, 600)
            .unwrap_or_else(|e| panic!("signature of {}: {e}", r.event_id));
        let body = r.json();
        assert_eq!(body["id"].as_str(), Some(r.event_id.as_str()));
    }
}
