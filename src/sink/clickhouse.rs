//! The ClickHouse sink and `touchline migrate`'s schema step.
//!
//! Rows go over HTTP as RowBinary with validation off: ClickHouse 18.16 has no
//! `RowBinaryWithNamesAndTypes`. Each table of a batch is one INSERT.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use clickhouse::Client;
use serde::Serialize;

use super::{Batch, DeliveryLog, DeliveryRow, Sink, SinkError};
use crate::config::ClickHouseConfig;
use crate::metrics as m;

/// DDL files, applied in order by `migrate`.
pub const SCHEMA: &[(&str, &str)] = &[
    (
        "001_tables.sql",
        include_str!("../../schemas/clickhouse/001_tables.sql"),
    ),
    (
        "002_partner_stats_daily.sql",
        include_str!("../../schemas/clickhouse/002_partner_stats_daily.sql"),
    ),
    (
        "003_lifecycle.sql",
        include_str!("../../schemas/clickhouse/003_lifecycle.sql"),
    ),
    (
        "004_webhook_deliveries.sql",
        include_str!("../../schemas/clickhouse/004_webhook_deliveries.sql"),
    ),
    (
        "005_api_audit.sql",
        include_str!("../../schemas/clickhouse/005_api_audit.sql"),
    ),
    (
        "006_disputes.sql",
        include_str!("../../schemas/clickhouse/006_disputes.sql"),
    ),
    (
        "007_partner_tiers.sql",
        include_str!("../../schemas/clickhouse/007_partner_tiers.sql"),
    ),
];

/// Server error codes that no retry can cure: the rows themselves are refused (as in
/// Vector's ClickHouse retry logic). Every other code is retried: a server that is
/// overloaded, restarting or missing a table an operator is about to migrate heals.
const PERMANENT_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    62,  // SYNTAX_ERROR
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    407, // DECIMAL_OVERFLOW
];

/// Writes rows to ClickHouse.
pub struct ClickHouseSink {
    client: Client,
    /// `clickhouse.insert_timeout_secs`, for sending rows and for the answer.
    insert_timeout: Duration,
}

/// A client for `cfg` (database selected).
pub fn client(cfg: &ClickHouseConfig) -> Client {
    let mut c = Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_database(&cfg.database)
        .with_validation(false);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    c
}

pub(crate) fn classify(e: clickhouse::error::Error) -> SinkError {
    use clickhouse::error::Error as E;
    let text = e.to_string();
    match e {
        E::Network(_) | E::TimedOut => SinkError::Transient(text),
        E::BadResponse(ref msg) => {
            let code = msg
                .split("Code: ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u32>().ok());
            match code {
                Some(c) if PERMANENT_CODES.contains(&c) => SinkError::Fatal(text),
                // No code: a proxy or a restarting server answered.
                _ => SinkError::Transient(text),
            }
        }
        _ => SinkError::Fatal(text),
    }
}

impl ClickHouseSink {
    pub fn new(cfg: &ClickHouseConfig) -> Self {
        ClickHouseSink {
            client: client(cfg),
            insert_timeout: Duration::from_secs(cfg.insert_timeout_secs),
        }
    }

    async fn insert<T>(&self, table: &'static str, rows: &[T]) -> Result<(), SinkError>
    where
        T: clickhouse::Row + Serialize + Send + Sync + 'static,
        for<'a> T: clickhouse::RowWrite<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let timeout = Some(self.insert_timeout);
        let mut insert = self
            .client
            .insert::<T>(table)
            .await
            .map_err(classify)?
            .with_timeouts(timeout, timeout);
        for row in rows {
            insert.write(row).await.map_err(classify)?;
        }
        insert.end().await.map_err(classify)?;
        metrics::histogram!(m::SINK_INSERT_DURATION_SECONDS, "table" => table)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::SINK_ROWS_TOTAL, "table" => table).increment(rows.len() as u64);
        Ok(())
    }
}

#[async_trait]
impl Sink for ClickHouseSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        // One insert per table, all at once: the server takes them on its own threads
        // while this process serializes the next. A failure retries the whole batch,
        // whichever tables it reached (identical rows collapse).
        tokio::try_join!(
            self.insert("clicks", &batch.clicks),
            self.insert("conversions", &batch.conversions),
            self.insert("attributions", &batch.attributions),
            self.insert("commissions", &batch.commissions),
            self.insert("commission_status", &batch.statuses),
            self.insert("payouts", &batch.payouts),
            self.insert("disputes", &batch.disputes),
            self.insert("partner_tiers", &batch.tiers),
            self.insert("partner_tier_figures", &batch.tier_figures),
        )
        .map(|_| ())
    }

    async fn ping(&self) -> Result<(), SinkError> {
        self.client
            .query("SELECT 1")
            .execute()
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl DeliveryLog for ClickHouseSink {
    async fn record(&self, rows: &[DeliveryRow]) -> Result<(), SinkError> {
        self.insert("webhook_deliveries", rows).await
    }
}

#[async_trait]
impl super::AuditLog for ClickHouseSink {
    async fn audit(&self, rows: &[super::AuditRow]) -> Result<(), SinkError> {
        self.insert("api_audit", rows).await
    }
}

/// Statements of the schema for database `db`, comments dropped.
pub fn statements(db: &str) -> Vec<String> {
    SCHEMA
        .iter()
        .flat_map(|(_, sql)| {
            let without_comments: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            without_comments
                .split(';')
                .map(|s| s.trim().replace("{db}", db))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Columns added after the first schema: (table, column, type with its default, the
/// column it follows). ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`, so
/// `migrate` asks first.
const ADDED_COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("clicks", "ts_ms", "UInt16 DEFAULT 0", "ts"),
    (
        "conversions",
        "occurred_at_ms",
        "UInt16 DEFAULT 0",
        "occurred_at",
    ),
    (
        "conversions",
        "received_at_ms",
        "UInt16 DEFAULT 0",
        "received_at",
    ),
    (
        "attributions",
        "occurred_at_ms",
        "UInt16 DEFAULT 0",
        "occurred_at",
    ),
    (
        "commissions",
        "created_at_ms",
        "UInt16 DEFAULT 0",
        "created_at",
    ),
    (
        "commissions",
        "occurred_at_ms",
        "UInt16 DEFAULT 0",
        "occurred_at",
    ),
    ("clicks", "sub_ids", "Array(String)", "is_unique"),
    ("commissions", "reason", "String", "occurred_at_ms"),
    ("attributions", "source", "String", "occurred_at_ms"),
    ("attributions", "customer_id", "String", "source"),
    ("attributions", "country", "String", "customer_id"),
    ("commissions", "customer_id", "String", "reason"),
];

/// Creates or upgrades the database; idempotent.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<(), SinkError> {
    // No database selected: the first statement creates it. No validation: 18.16 has
    // no RowBinaryWithNamesAndTypes (SPEC §2).
    let mut c = Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_validation(false);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    for stmt in statements(&cfg.database) {
        c.query(&stmt).execute().await.map_err(classify)?;
    }
    let db = &cfg.database;
    for (table, column, kind, after) in ADDED_COLUMNS {
        let present: u64 = c
            .query(
                "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
            )
            .bind(db.as_str())
            .bind(*table)
            .bind(*column)
            .fetch_one()
            .await
            .map_err(classify)?;
        if present == 0 {
            c.query(&format!(
                "ALTER TABLE {db}.{table} ADD COLUMN {column} {kind} AFTER {after}"
            ))
            .execute()
            .await
            .map_err(classify)?;
        }
    }
    Ok(())
}

/// Checks that every table exists, so that a missing migration is named at start-up.
pub async fn check_tables(cfg: &ClickHouseConfig) -> Result<(), SinkError> {
    let c = client(cfg);
    for table in super::TABLES
        .iter()
        .chain(&["webhook_deliveries", "api_audit"])
    {
        c.query(&format!("SELECT 1 FROM {table} LIMIT 0"))
            .execute()
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// Waits until ClickHouse answers `SELECT 1`, up to `timeout`.
pub async fn wait_ready(cfg: &ClickHouseConfig, timeout: Duration) -> Result<(), SinkError> {
    let mut c = Client::default().with_url(&cfg.url).with_user(&cfg.user);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match c.query("SELECT 1").execute().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(classify(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_and_substitute() {
        let s = statements("tl_test");
        assert_eq!(s.len(), 13);
        assert!(s[0].starts_with("CREATE DATABASE IF NOT EXISTS tl_test"));
        assert!(s.iter().all(|x| !x.contains("{db}")));
        assert!(s
            .iter()
            .any(|x| x.contains("CREATE VIEW IF NOT EXISTS tl_test.partner_stats_daily")));
        assert!(s
            .last()
            .unwrap()
            .contains("CREATE TABLE IF NOT EXISTS tl_test.partner_tier_figures"));
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    fn kind(msg: &str) -> &'static str {
        match classify(clickhouse::error::Error::BadResponse(msg.into())) {
            SinkError::Transient(_) => "retry",
            SinkError::Fatal(_) => "fatal",
        }
    }

    #[test]
    fn only_refused_rows_are_final() {
        assert_eq!(
            kind("Code: 241, e.displayText() = DB::Exception: Memory limit"),
            "retry"
        );
        assert_eq!(
            kind("Code: 60, e.displayText() = DB::Exception: Table does not exist"),
            "retry"
        );
        assert_eq!(
            kind("Code: 252, e.displayText() = DB::Exception: Too many parts"),
            "retry"
        );
        assert_eq!(
            kind("Code: 117, e.displayText() = DB::Exception: Incorrect data"),
            "fatal"
        );
        assert_eq!(
            kind("Code: 53, e.displayText() = DB::Exception: Type mismatch"),
            "fatal"
        );
        assert_eq!(kind("502 Bad Gateway"), "retry");
    }
}
