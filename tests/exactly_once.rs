//! Exactly once (SPEC §5.6) and scale-out: the same stream processed by one
//! uninterrupted pipeline, by a pipeline killed with SIGKILL several times mid-stream,
//! by two pipelines in one group with a rebalance mid-stream, and by one whose
//! partitions are revoked mid-batch, must leave ClickHouse answering every query
//! identically.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_changes_nothing() {
    kill_dash_nine(7, &[]).await;
}

/// The same on a three-master Redis Cluster (state keys spread over its slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_changes_nothing_on_redis_cluster() {
    kill_dash_nine(17, CLUSTER).await;
}

async fn kill_dash_nine(seed: u64, extra: &[(&str, &str)]) {
    let (reference, crashing, stream) = setup_pair(seed, extra).await;
    run_reference(&reference, &stream).await;
    let expected = snapshot(&reference).await;

    let mut rng = touchline::rng::Rng::new(42);
    let mut kills = 0;
    let mut partial_seen = false;
    let mut written = Vec::new();
    // The restarted process is the same static group member as the one killed.
    let instance = [("TOUCHLINE__PIPELINE__INSTANCE_ID", "pipeline-a")];
    // Clicks are decided before the conversions they lead to are settled: kill once
    // while clicks are written, then while conversions are.
    let any_rows = "SELECT (SELECT count() FROM clicks) + (SELECT count() FROM conversions) + (SELECT count() FROM commissions)";
    let conversion_rows = "SELECT count() FROM conversions";
    for i in 0..4 {
        let rows = if i % 2 == 0 {
            any_rows
        } else {
            conversion_rows
        };
        let before: u64 = ch_query(&crashing, rows).await[0][0].parse().unwrap();
        let mut child = spawn_pipeline_process(&crashing, &instance);
        // Kill at a random moment once this process has written something: soon after,
        // watched closely, so that a process settling fast (a quiet machine) is still
        // killed before it has written every conversion.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got: u64 = ch_query(&crashing, rows).await[0][0].parse().unwrap();
            if got > before || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let done: u64 = ch_query(&crashing, "SELECT count() FROM conversions FINAL").await[0][0]
            .parse()
            .unwrap();
        partial_seen |= done > 0 && done < stream.conversions;
        written.push(done);
    }
    assert_eq!(kills, 4);
    assert!(
        partial_seen,
        "a kill must land mid-stream, with some but not all conversions written: \
         {written:?} of {} after each kill",
        stream.conversions
    );
    let mut child = spawn_pipeline_process(&crashing, &instance);
    wait_done(&crashing, &stream).await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_same(&expected, &snapshot(&crashing).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_rebalance_mid_stream_match_one() {
    two_instances(11, &[]).await;
}

/// The same on a three-master Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_rebalance_mid_stream_match_one_on_redis_cluster() {
    two_instances(21, CLUSTER).await;
}

async fn two_instances(seed: u64, extra: &[(&str, &str)]) {
    let (reference, scaled, stream) = setup_pair(seed, extra).await;
    // `migrate` gives the conversions topic one partition (kafka.conversion_partitions):
    // whichever instance owns it settles every conversion, both decide clicks.
    let parts = touchline::bus::kafka::partitions_of(&scaled.kafka, Duration::from_secs(10))
        .await
        .expect("the topics exist");
    let on = |topic| parts.iter().filter(|(t, _)| *t == topic).count();
    assert_eq!(on(touchline::bus::Topic::Conversions), 1, "{parts:?}");
    assert_eq!(on(touchline::bus::Topic::Clicks), 2, "{parts:?}");
    run_reference(&reference, &stream).await;
    let expected = snapshot(&reference).await;

    let mut first = spawn_pipeline_process(&scaled, &[]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A second member joins: the group rebalances mid-stream.
    let mut second = spawn_pipeline_process(&scaled, &[]);
    wait_done(&scaled, &stream).await;
    for child in [&mut first, &mut second] {
        // SIGTERM: both stop cleanly.
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }
    for child in [&mut first, &mut second] {
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    assert_same(&expected, &snapshot(&scaled).await);
}

/// SPEC §5.6: a rebalance that takes partitions from a member mid-batch waits while the
/// member writes and commits what it settled of them and forgets what waits. The first
/// member would write only after 20 s, so when the second joins it holds settled rows
/// not yet written: whatever is in the tables when the rebalance lets go was written by
/// its drain. The tables end equal to one undisturbed run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_mid_batch_is_drained_first_and_changes_nothing() {
    let (reference, mut scaled, stream) = setup_pair(23, &[]).await;
    run_reference(&reference, &stream).await;
    let expected = snapshot(&reference).await;

    let drained = || {
        let metrics = touchline::metrics::install().render();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("touchline_pipeline_revocations_drained_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = drained();
    // In process, to read its counters.
    scaled.pipeline.flush_interval_ms = 20_000;
    scaled.pipeline.batch_rows = 1_000_000;
    let first = start_pipeline(&scaled);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let taken = "SELECT count() FROM clicks";
    assert_eq!(
        ch_query(&scaled, taken).await[0][0],
        "0",
        "nothing written yet"
    );
    let mut second = spawn_pipeline_process(
        &scaled,
        &[("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "100")],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while drained() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebalance did not wait for the first member's drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written: u64 = ch_query(&scaled, taken).await[0][0].parse().unwrap();
    assert!(written > 0, "the drain wrote the settled clicks");
    wait_done(&scaled, &stream).await;
    std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(second.wait().unwrap().success());
    first.stop().await;
    assert_same(&expected, &snapshot(&scaled).await);
}

/// SPEC §2, §5.6: the default configuration (no `pipeline.instance_id`) recovers from
/// `kill -9` on Tansu, which never hands a dead dynamic member's partitions to anyone:
/// the default id derived from host and admin port makes the restarted process the same
/// static member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_recovers_from_kill_dash_nine() {
    let (reference, crashing, stream) = setup_pair(13, &[]).await;
    run_reference(&reference, &stream).await;
    let expected = snapshot(&reference).await;

    let admin = format!("127.0.0.1:{}", free_port());
    let defaults = [("TOUCHLINE__PIPELINE__ADMIN_LISTEN", admin.as_str())];
    let rows = "SELECT (SELECT count() FROM clicks) + (SELECT count() FROM conversions)";
    let mut rng = touchline::rng::Rng::new(3);
    for _ in 0..3 {
        let before: u64 = ch_query(&crashing, rows).await[0][0].parse().unwrap();
        let mut child = spawn_pipeline_process(&crashing, &defaults);
        wait_count(&crashing, rows, before + 1, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut child = spawn_pipeline_process(&crashing, &defaults);
    wait_done(&crashing, &stream).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_same(&expected, &snapshot(&crashing).await);
}

/// SPEC §5.7: holds end by the settled frontier, in event time. A stream placed nine
/// days back (holds of seven days) has every hold end while the pipeline runs; killed
/// with SIGKILL while it approves rows, restarted, it leaves the same audit trail and
/// balances as an undisturbed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_while_holds_end_changes_nothing() {
    let base = chrono::Utc::now() - chrono::Duration::days(9);
    let (reference, crashing, stream) = setup_pair_at(29, &[], base).await;
    let mut p = spawn_pipeline_process(&reference, &[]);
    wait_done(&reference, &stream).await;
    wait_holds_ended(&reference).await;
    p.kill().unwrap();
    p.wait().unwrap();
    let expected = snapshot(&reference).await;
    let approvals = "SELECT count() FROM commission_status WHERE step = 1 AND status = 'approved'";
    let approved: u64 = ch_query(&reference, approvals).await[0][0].parse().unwrap();
    assert!(approved > 100, "holds ended during the run: {approved}");

    // Small writes, so that approving takes long enough to be interrupted (the rows
    // written do not depend on how they are batched).
    let instance = [
        ("TOUCHLINE__PIPELINE__INSTANCE_ID", "pipeline-h"),
        ("TOUCHLINE__PIPELINE__POLL_BATCH", "10"),
        ("TOUCHLINE__PIPELINE__BATCH_ROWS", "10"),
    ];
    let mut mid_approval = false;
    for _ in 0..3 {
        let running: u64 = ch_query(&crashing, HOLDS_RUNNING).await[0][0]
            .parse()
            .unwrap();
        let before: u64 = ch_query(&crashing, approvals).await[0][0].parse().unwrap();
        if before > 0 && running == 0 {
            break;
        }
        let mut child = spawn_pipeline_process(&crashing, &instance);
        wait_count(&crashing, approvals, before + 1, Duration::from_secs(60)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let running: u64 = ch_query(&crashing, HOLDS_RUNNING).await[0][0]
            .parse()
            .unwrap();
        mid_approval |= running > 0;
    }
    assert!(
        mid_approval,
        "a kill must land while rows are being approved"
    );
    let mut child = spawn_pipeline_process(&crashing, &instance);
    wait_done(&crashing, &stream).await;
    wait_holds_ended(&crashing).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_same(&expected, &snapshot(&crashing).await);
}
