//! The test's ClickHouse database: migration, queries, the query pack and table snapshots.

use super::*;

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
        (
            "partner_tiers",
            "program_id, partner_id, effective_at, effective_at_ms, source",
        ),
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
        // Tier moves happen only in streams that span a month's start (the determinism
        // test's does, and checks there are some).
        assert!(
            !rows_a.is_empty() || name == "partner_tiers",
            "{name} is empty: the comparison would prove nothing"
        );
        assert_eq!(rows_a.len(), rows_b.len(), "{name}: row counts differ");
        for (i, (ra, rb)) in rows_a.iter().zip(rows_b).enumerate() {
            assert_eq!(ra, rb, "{name}: row {i} differs");
        }
    }
}
