//! docker/ agrees with the configuration (no Docker engine runs here, so this test reads
//! the files): services, ports, topics, environment keys and scrape targets.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;
use touchline::config::{BusKind, Config, SinkKind, StoreKind};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let mut v: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap();
    v.apply_merge().unwrap();
    v
}

fn host_port(url_or_addr: &str) -> (String, u16) {
    let rest = url_or_addr.split("://").last().unwrap();
    let rest = rest.split('/').next().unwrap();
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

#[test]
fn compose_agrees_with_config_docker_toml() {
    let compose = yaml("docker/compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for s in [
        "kafka",
        "clickhouse",
        "redis",
        "migrate",
        "edge",
        "pipeline",
        "webhooks",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(&s), "service {s} missing");
    }

    let docker_toml = root().join("config/docker.toml");
    let config = Config::load(Some(&docker_toml), Vec::new()).unwrap();
    assert_eq!(config.bus.kind, BusKind::Kafka);
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.sink.kind, SinkKind::Clickhouse);

    // The services touchline talks to are the ones compose runs, on their ports.
    let (kafka_host, kafka_port) = host_port(&config.kafka.brokers);
    assert_eq!(kafka_host, "kafka");
    let advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    assert!(
        advertised.contains(&format!("kafka:{kafka_port}")),
        "{advertised}"
    );
    assert_eq!(
        compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].as_str(),
        Some("false"),
        "topics come from migrate, with its partition count"
    );
    let (redis_host, redis_port) = host_port(&config.redis.url);
    assert_eq!((redis_host.as_str(), redis_port), ("redis", 6379));
    let (ch_host, ch_port) = host_port(&config.clickhouse.url);
    assert_eq!((ch_host.as_str(), ch_port), ("clickhouse", 8123));

    // touchline services run the right command on the mounted config, with env keys
    // that exist.
    for (service, command) in [
        ("migrate", "migrate"),
        ("edge", "edge"),
        ("pipeline", "pipeline"),
        ("webhooks", "webhooks"),
    ] {
        let s = &compose["services"][service];
        let cmd: Vec<&str> = s["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            cmd,
            vec![command, "--config", "/etc/touchline/docker.toml"],
            "{service}"
        );
        let env: BTreeMap<String, String> = s["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().unwrap().to_string(),
                )
            })
            .collect();
        let vars: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| {
                // ${VAR:-default} is compose's; the default is what the process sees.
                let value = v
                    .split(":-")
                    .nth(1)
                    .map(|d| d.trim_end_matches('}').to_string())
                    .unwrap_or(v);
                (k, value)
            })
            .collect();
        Config::load(Some(&docker_toml), vars).unwrap_or_else(|e| panic!("{service}: {e}"));
        let depends = s["depends_on"].as_mapping().unwrap();
        if service != "migrate" {
            assert_eq!(
                depends.get("migrate").and_then(|m| m["condition"].as_str()),
                Some("service_completed_successfully"),
                "{service} starts after migrate"
            );
        }
    }
    // The Dockerfile copies the configs to where the commands read them.
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY config /etc/touchline"));

    // Published ports match the listen addresses.
    let edge_port = config.edge.listen.port();
    let ports: Vec<&str> = compose["services"]["edge"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{edge_port}"))),
        "{ports:?}"
    );
    assert_eq!(
        config.edge.listen.ip().to_string(),
        "0.0.0.0",
        "reachable from other containers"
    );
    assert_eq!(config.pipeline.admin_listen.ip().to_string(), "0.0.0.0");
    assert_eq!(config.webhooks.admin_listen.ip().to_string(), "0.0.0.0");

    // Prometheus scrapes both, on the ports they listen on.
    let prom = yaml("docker/prometheus/prometheus.yml");
    let jobs = prom["scrape_configs"].as_sequence().unwrap();
    let edge_job = jobs
        .iter()
        .find(|j| j["job_name"] == "touchline-edge")
        .unwrap();
    assert_eq!(
        edge_job["static_configs"][0]["targets"][0].as_str(),
        Some(format!("edge:{edge_port}").as_str())
    );
    let pipeline_job = jobs
        .iter()
        .find(|j| j["job_name"] == "touchline-pipeline")
        .unwrap();
    assert_eq!(
        pipeline_job["dns_sd_configs"][0]["names"][0].as_str(),
        Some("pipeline")
    );
    assert_eq!(
        pipeline_job["dns_sd_configs"][0]["port"].as_u64(),
        Some(u64::from(config.pipeline.admin_listen.port()))
    );

    let webhooks_job = jobs
        .iter()
        .find(|j| j["job_name"] == "touchline-webhooks")
        .unwrap();
    assert_eq!(
        webhooks_job["dns_sd_configs"][0]["port"].as_u64(),
        Some(u64::from(config.webhooks.admin_listen.port()))
    );

    // Grafana reads the same database the pipeline writes, and its dashboard parses and
    // queries tables that exist.
    let ds = yaml("docker/grafana/provisioning/datasources/datasources.yaml");
    let ch = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|d| d["uid"] == "clickhouse")
        .unwrap();
    assert_eq!(
        ch["jsonData"]["defaultDatabase"].as_str(),
        Some(config.clickhouse.database.as_str())
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docker/grafana/dashboards/touchline.json")).unwrap(),
    )
    .unwrap();
    let sql: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["targets"][0]["rawSql"].as_str())
        .collect();
    assert!(!sql.is_empty());
    for q in &sql {
        // Every table a panel reads exists in the schema `migrate` creates.
        let db = format!("{}.", config.clickhouse.database);
        let tables: Vec<&str> = q
            .split(db.as_str())
            .skip(1)
            .map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap()
            })
            .collect();
        assert!(!tables.is_empty(), "{q}");
        for t in tables {
            assert!(
                t == "partner_stats_daily" || touchline::sink::TABLES.contains(&t),
                "dashboard reads unknown table {t}"
            );
        }
    }
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["targets"][0]["expr"].as_str())
        .collect();
    for e in exprs {
        let name = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("touchline_"))
            .unwrap();
        let base = name.trim_end_matches("_bucket");
        assert!(
            touchline::metrics::ALL.iter().any(|(m, _, _)| *m == base),
            "dashboard uses unknown metric {name}"
        );
    }
}
