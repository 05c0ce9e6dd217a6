//! The test's topics, reading a topic back, and private Tansu brokers.

use super::*;

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
