//! Configuration: `config/default.toml` (embedded) layered under an optional TOML file,
//! then `TOUCHLINE__SECTION__KEY` environment variables.
//!
//! The embedded defaults list every key there is, so "unknown key" means "not in the
//! defaults", and a value whose TOML type differs from the default's is a bad value.
//! Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

/// The embedded defaults, also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides: `TOUCHLINE__EDGE__LISTEN` sets `edge.listen`.
pub const ENV_PREFIX: &str = "TOUCHLINE__";

/// A configuration problem, always naming the key or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown configuration key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("bad value for `{key}` (from {origin}): {message}")]
    BadValue {
        key: String,
        origin: String,
        message: String,
    },
}

/// The whole configuration of one touchline process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub edge: EdgeConfig,
    pub admin: AdminConfig,
    pub access: AccessConfig,
    pub registry: RegistryConfig,
    pub bus: BusConfig,
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub pipeline: PipelineConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
}

/// `[edge]`: the HTTP edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub buffer_events: usize,
    pub ip_salt: String,
    pub trust_forwarded_for: bool,
    pub secure_cookie: bool,
    pub signature_tolerance_secs: u64,
    pub ack_timeout_ms: u64,
}

/// `[admin]`: the registry API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub token: String,
}

/// `[access]`: request budgets of API keys (SPEC §9).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    pub rate_per_key: u32,
    pub burst: u32,
}

/// `[registry]`: how the in-process registry cache follows the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub refresh_ms: u64,
}

/// Which event bus carries clicks and conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Memory,
    Kafka,
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub kind: BusKind,
}

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub partitions: i32,
    /// Partitions of the conversions topic: one, so that one pipeline instance settles
    /// every conversion (see [`KafkaConfig::partitions_for`]).
    pub conversion_partitions: i32,
    pub replication_factor: i32,
    pub linger_ms: u64,
    pub topics: TopicsConfig,
}

/// `[kafka.topics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub clicks: String,
    pub conversions: String,
    pub dlq: String,
    pub webhooks: String,
}

impl KafkaConfig {
    /// Partitions a new `topic` is created with. Conversions settle one at a time in
    /// intake order across all instances (SPEC §5 "Determinism"): an instance may settle
    /// a conversion only once every other conversion partition has settled everything
    /// before it. Spread over instances, the partitions' settlements interleave and each
    /// instance waits for the others at almost every conversion; on one partition one
    /// instance settles them all in batches while every instance decides clicks.
    pub fn partitions_for(&self, topic: &str) -> i32 {
        if topic == self.topics.conversions {
            self.conversion_partitions
        } else {
            self.partitions
        }
    }
}

impl TopicsConfig {
    /// Every topic touchline writes or reads.
    pub fn all(&self) -> [&str; 4] {
        [&self.clicks, &self.conversions, &self.dlq, &self.webhooks]
    }
}

/// Where registry and pipeline state live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub cluster: bool,
}

/// `[clickhouse]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    pub insert_timeout_secs: u64,
}

/// Where the pipeline writes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    File,
    Clickhouse,
}

/// `[sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub data_dir: PathBuf,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub group_id: String,
    pub instance_id: String,
    pub admin_listen: SocketAddr,
    pub late_grace_secs: u64,
    pub max_wait_secs: u64,
    pub max_pending: usize,
    pub batch_rows: u64,
    pub flush_interval_ms: u64,
    pub poll_batch: usize,
}

/// `[webhooks]`: delivery of ledger events to webhook endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    pub group_id: String,
    pub instance_id: String,
    pub admin_listen: SocketAddr,
    pub concurrency: usize,
    pub timeout_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub give_up_after_secs: u64,
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
    pub poll_ms: u64,
    pub allowed_private_hosts: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Self {
        Self::load(None, std::iter::empty()).expect("embedded defaults are valid")
    }

    /// Loads defaults, then `file` if given, then the `TOUCHLINE__…` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults: Value = toml::from_str(DEFAULT_TOML).expect("config/default.toml parses");
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let overlay: Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
            let origin = path.display().to_string();
            merge(&mut merged, &defaults, overlay, &mut Vec::new(), &origin)?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Deterministic order, so that two variables for one key always resolve alike.
        vars.sort();
        for (name, raw) in vars {
            apply_env(&mut merged, &defaults, &name, &raw)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(merged).map_err(|e| ConfigError::BadValue {
                key: e.path().to_string(),
                origin: "configuration".into(),
                message: e.inner().message().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads like [`Config::load`] with the process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(file, std::env::vars())
    }

    // Long on purpose: one flat check per setting, in the order of the file, each naming
    // its key; splitting it would only scatter the list.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::BadValue {
            key: key.to_string(),
            origin: "configuration".into(),
            message: message.to_string(),
        };
        if self.edge.buffer_events == 0 {
            return Err(bad("edge.buffer_events", "must be at least 1"));
        }
        if self.edge.ip_salt.is_empty() {
            return Err(bad("edge.ip_salt", "must not be empty"));
        }
        if !(self.edge.public_url.starts_with("http://")
            || self.edge.public_url.starts_with("https://"))
        {
            return Err(bad("edge.public_url", "must be an http(s) URL"));
        }
        if self.admin.token.len() < 8 {
            return Err(bad("admin.token", "must be at least 8 characters"));
        }
        if !(1..=100_000).contains(&self.access.rate_per_key) {
            return Err(bad("access.rate_per_key", "must be 1..=100000"));
        }
        if !(1..=100_000).contains(&self.access.burst) {
            return Err(bad("access.burst", "must be 1..=100000"));
        }
        if self.registry.refresh_ms == 0 || self.registry.refresh_ms > 1000 {
            return Err(bad(
                "registry.refresh_ms",
                "must be 1..=1000 (changes must be visible within a second)",
            ));
        }
        if self.kafka.partitions < 1 {
            return Err(bad("kafka.partitions", "must be at least 1"));
        }
        if self.kafka.conversion_partitions < 1 {
            return Err(bad("kafka.conversion_partitions", "must be at least 1"));
        }
        if self.kafka.replication_factor < 1 {
            return Err(bad("kafka.replication_factor", "must be at least 1"));
        }
        for (key, topic) in [
            ("kafka.topics.clicks", &self.kafka.topics.clicks),
            ("kafka.topics.conversions", &self.kafka.topics.conversions),
            ("kafka.topics.dlq", &self.kafka.topics.dlq),
            ("kafka.topics.webhooks", &self.kafka.topics.webhooks),
        ] {
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid {
                return Err(bad(key, "must be a valid Kafka topic name"));
            }
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return Err(bad("redis.url", "must start with redis:// or rediss://"));
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            return Err(bad("clickhouse.url", "must be an http(s) URL"));
        }
        if !(1..=3600).contains(&self.clickhouse.insert_timeout_secs) {
            return Err(bad("clickhouse.insert_timeout_secs", "must be 1..=3600"));
        }
        let db_ok = !self.clickhouse.database.is_empty()
            && self
                .clickhouse
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !db_ok {
            return Err(bad(
                "clickhouse.database",
                "must be letters, digits and underscores",
            ));
        }
        if self.pipeline.group_id.is_empty() {
            return Err(bad("pipeline.group_id", "must not be empty"));
        }
        if self.pipeline.late_grace_secs < 2 {
            // Read positions are known to a second: a smaller grace could settle a
            // conversion before a click that was already on its way.
            return Err(bad("pipeline.late_grace_secs", "must be at least 2"));
        }
        if self.pipeline.max_wait_secs == 0 {
            return Err(bad("pipeline.max_wait_secs", "must be at least 1"));
        }
        if self.pipeline.max_pending == 0 {
            return Err(bad("pipeline.max_pending", "must be at least 1"));
        }
        if self.pipeline.batch_rows == 0 {
            return Err(bad("pipeline.batch_rows", "must be at least 1"));
        }
        if self.pipeline.poll_batch == 0 {
            return Err(bad("pipeline.poll_batch", "must be at least 1"));
        }
        if self.pipeline.flush_interval_ms == 0 {
            return Err(bad("pipeline.flush_interval_ms", "must be at least 1"));
        }
        let w = &self.webhooks;
        if w.group_id.is_empty() {
            return Err(bad("webhooks.group_id", "must not be empty"));
        }
        if !(1..=1024).contains(&w.concurrency) {
            return Err(bad("webhooks.concurrency", "must be 1..=1024"));
        }
        if !(100..=60_000).contains(&w.timeout_ms) {
            return Err(bad("webhooks.timeout_ms", "must be 100..=60000"));
        }
        if w.retry_base_ms < 10 {
            return Err(bad("webhooks.retry_base_ms", "must be at least 10"));
        }
        if w.retry_max_ms < w.retry_base_ms || w.retry_max_ms > 86_400_000 {
            return Err(bad(
                "webhooks.retry_max_ms",
                "must be at least webhooks.retry_base_ms and at most a day",
            ));
        }
        // Events are remembered 8 days against replays (webhooks::queue::KNOWN_TTL).
        if !(1..=7 * 86_400).contains(&w.give_up_after_secs) {
            return Err(bad("webhooks.give_up_after_secs", "must be 1..=604800"));
        }
        if w.breaker_failures == 0 {
            return Err(bad("webhooks.breaker_failures", "must be at least 1"));
        }
        if w.breaker_open_ms < 100 {
            return Err(bad("webhooks.breaker_open_ms", "must be at least 100"));
        }
        if !(10..=5_000).contains(&w.poll_ms) {
            return Err(bad("webhooks.poll_ms", "must be 10..=5000"));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(bad("log.level", "is not a valid log filter"));
        }
        Ok(())
    }
}

/// Merges `overlay` into `target`, checking every key and scalar type against `defaults`.
fn merge(
    target: &mut Value,
    defaults: &Value,
    overlay: Value,
    path: &mut Vec<String>,
    origin: &str,
) -> Result<(), ConfigError> {
    match overlay {
        Value::Table(entries) => {
            let (Value::Table(target_table), Value::Table(default_table)) = (target, defaults)
            else {
                return Err(ConfigError::BadValue {
                    key: path.join("."),
                    origin: origin.to_string(),
                    message: "expected a value, found a table".into(),
                });
            };
            for (key, value) in entries {
                path.push(key.clone());
                let Some(default) = default_table.get(&key) else {
                    return Err(ConfigError::UnknownKey {
                        key: path.join("."),
                        origin: origin.to_string(),
                    });
                };
                let slot = target_table
                    .get_mut(&key)
                    .expect("merged tree has every default key");
                merge(slot, default, value, path, origin)?;
                path.pop();
            }
            Ok(())
        }
        value => {
            if !same_type(defaults, &value) {
                return Err(ConfigError::BadValue {
                    key: path.join("."),
                    origin: origin.to_string(),
                    message: format!(
                        "expected {}, found {}",
                        defaults.type_str(),
                        value.type_str()
                    ),
                });
            }
            *target = value;
            Ok(())
        }
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Applies one `TOUCHLINE__A__B=value` variable. The value is read as the default's type:
/// a string stays a string verbatim (a password of digits is still a string).
fn apply_env(
    merged: &mut Value,
    defaults: &Value,
    name: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let rest = &name[ENV_PREFIX.len()..];
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let key = segments.join(".");
    let unknown = || ConfigError::UnknownKey {
        key: key.clone(),
        origin: format!("environment variable {name}"),
    };
    let mut default = defaults;
    for segment in &segments {
        default = default.get(segment).ok_or_else(unknown)?;
    }
    let value = match default {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Table(_) => return Err(unknown()),
        other => {
            let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {raw}"));
            match parsed.ok().and_then(|mut t| t.remove("v")) {
                Some(v) if same_type(other, &v) => v,
                _ => {
                    return Err(ConfigError::BadValue {
                        key,
                        origin: format!("environment variable {name}"),
                        message: format!("expected {}, found {raw:?}", other.type_str()),
                    })
                }
            }
        }
    };
    let mut slot = merged;
    for segment in &segments {
        slot = slot
            .get_mut(segment)
            .expect("merged tree has every default key");
    }
    *slot = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file_with(text: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new("toml");
        f.file().write_all(text.as_bytes()).unwrap();
        f
    }

    mod tempfile_lite {
        use std::path::PathBuf;

        /// A file in the temp dir removed on drop; enough for these tests.
        pub struct TempFile(pub PathBuf);

        impl TempFile {
            pub fn new(ext: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "touchline-config-test-{}.{ext}",
                    uuid::Uuid::new_v4()
                ));
                std::fs::File::create(&path).unwrap();
                Self(path)
            }

            pub fn file(&self) -> std::fs::File {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.0)
                    .unwrap()
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn embedded_defaults_are_the_embedded_mode() {
        let c = Config::embedded();
        assert_eq!(c.bus.kind, BusKind::Memory);
        assert_eq!(c.store.kind, StoreKind::Memory);
        assert_eq!(c.sink.kind, SinkKind::File);
        assert_eq!(c.edge.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.sink.data_dir, PathBuf::from("./data"));
        assert_eq!(c.pipeline.late_grace_secs, 60);
    }

    #[test]
    fn shipped_config_files_load() {
        for name in ["local.toml", "docker.toml", "default.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name);
            Config::load(Some(&path), Vec::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
        let c = Config::load(Some(&local), Vec::new()).unwrap();
        assert_eq!(c.bus.kind, BusKind::Kafka);
        assert_eq!(c.sink.kind, SinkKind::Clickhouse);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = file_with("[edge]\nlisten = \"127.0.0.1:9000\"\nbuffer_events = 7\n");
        let c = Config::load(
            Some(&f.0),
            env(&[
                ("TOUCHLINE__EDGE__LISTEN", "127.0.0.1:9001"),
                ("TOUCHLINE__KAFKA__TOPICS__CLICKS", "my.clicks"),
                ("TOUCHLINE__CLICKHOUSE__PASSWORD", "12345"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.edge.listen.port(), 9001);
        assert_eq!(c.edge.buffer_events, 7);
        assert_eq!(c.kafka.topics.clicks, "my.clicks");
        assert_eq!(c.clickhouse.password, "12345");
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file_with("[edge]\nlisen = \"127.0.0.1:9000\"\n");
        let err = Config::load(Some(&f.0), Vec::new()).unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "edge.lisen"));

        let f = file_with("[nope]\nx = 1\n");
        let err = Config::load(Some(&f.0), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");

        let err = Config::load(None, env(&[("TOUCHLINE__EDGE__NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("edge.nope"), "{err}");
        assert!(err.to_string().contains("TOUCHLINE__EDGE__NOPE"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::load(None, env(&[("TOUCHLINE__EDGE__BUFFER_EVENTS", "many")])).unwrap_err();
        assert!(err.to_string().contains("edge.buffer_events"), "{err}");

        let f = file_with("[edge]\nbuffer_events = \"ten\"\n");
        let err = Config::load(Some(&f.0), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("edge.buffer_events"), "{err}");

        let err =
            Config::load(None, env(&[("TOUCHLINE__BUS__KIND", "carrier-pigeon")])).unwrap_err();
        assert!(err.to_string().contains("carrier-pigeon"), "{err}");
        assert!(err.to_string().contains("`bus.kind`"), "{err}");

        let err = Config::load(None, env(&[("TOUCHLINE__EDGE__BUFFER_EVENTS", "0")])).unwrap_err();
        assert!(err.to_string().contains("edge.buffer_events"), "{err}");

        let err =
            Config::load(None, env(&[("TOUCHLINE__KAFKA__TOPICS__DLQ", "bad topic")])).unwrap_err();
        assert!(err.to_string().contains("kafka.topics.dlq"), "{err}");

        let err = Config::load(
            None,
            env(&[("TOUCHLINE__KAFKA__CONVERSION_PARTITIONS", "0")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("kafka.conversion_partitions"),
            "{err}"
        );
    }

    #[test]
    fn conversions_get_their_own_partition_count() {
        let c = Config::load(None, env(&[("TOUCHLINE__KAFKA__PARTITIONS", "6")])).unwrap();
        let k = &c.kafka;
        assert_eq!(k.partitions_for(&k.topics.conversions), 1);
        for topic in [&k.topics.clicks, &k.topics.dlq, &k.topics.webhooks] {
            assert_eq!(k.partitions_for(topic), 6, "{topic}");
        }
        let c = Config::load(
            None,
            env(&[("TOUCHLINE__KAFKA__CONVERSION_PARTITIONS", "3")]),
        )
        .unwrap();
        assert_eq!(c.kafka.partitions_for(&c.kafka.topics.conversions), 3);
    }
}
