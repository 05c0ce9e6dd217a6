//! The edge, pipeline and webhooks this test runs, in process or as child processes, and the ports they take.

use super::*;

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

/// The stack with an edge and a pipeline settling quickly (two seconds of late grace,
/// flushes every 200 ms): its configuration, both, and the edge's URL.
pub async fn live() -> (Config, RunningEdge, RunningPipeline, String) {
    let config = config(&[
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2"),
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "200"),
    ]);
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let pipeline = start_pipeline(&config);
    let url = edge.url("");
    (config, edge, pipeline, url)
}
