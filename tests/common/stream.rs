//! The deterministic synthetic stream and the paired configurations that compare runs over it.

use super::*;

/// Writes the registry of the generated stream into the store `config` names.
pub async fn seed_registry_direct(config: &Config, partners: usize) {
    seed_registry_rewards(config, partners, false).await
}

/// [`seed_registry_direct`], with reward rules and caps when `with_rewards`.
pub async fn seed_registry_rewards(config: &Config, partners: usize, with_rewards: bool) {
    let store = touchline::app::registry_store(config)
        .await
        .expect("redis is required (scripts/stack.sh up)");
    let registry = touchline::registry::Registry::open(store).await.unwrap();
    touchline::testkit::synthetic::seed_registry_with(&registry, partners, with_rewards)
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
