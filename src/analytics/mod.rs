//! The analytics API's reports (SPEC §9.2): overview, timeseries, funnel, leaderboard
//! and cohorts, for a program or for one partner of it.
//!
//! A [`Source`] adds up [`Figures`] per key (the whole window, a time bucket, a group)
//! and cohort cells; [`report::run`] turns them into a [`report::Table`], the same for
//! every source. Two sources: ClickHouse ([`clickhouse`], the deployed stack, every sum
//! made by the database over the deduplicated rows) and the file sink's rows
//! ([`files`], the embedded default). Event time throughout: clicks by their `ts`,
//! conversions and ledger rows by their conversion's `occurred_at`.

pub mod clickhouse;
pub mod figures;
pub mod files;
pub mod query;
pub mod report;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

pub use figures::Figures;
pub use query::{GroupBy, Interval, Params, RankBy, Report, Scope};

use crate::sink::SinkError;

/// What the figures are added up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// One group: the whole window.
    All,
    /// Time buckets; the key is the bucket's start in seconds since the epoch.
    Bucket(Interval),
    /// Groups of a funnel or a leaderboard. Commission is added up by partner only
    /// (a ledger row knows its partner, not the click that earned it).
    Group(GroupBy),
}

/// The event-time window of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The earliest click a conversion of the window can be credited through (the
    /// program's lookback before `from`): grouping conversions by their click's link,
    /// sub id or UTM source reads the clicks from here.
    pub clicks_since: DateTime<Utc>,
}

/// One cell of a cohort table: the customers whose first attributed sale fell in
/// `cohort` (a month), `months` months later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortCell {
    pub cohort: NaiveDate,
    pub months: u32,
    /// Customers with credited revenue in that month.
    pub customers: u64,
    pub revenue: Decimal,
    /// Commission of their conversions in that month, rejected rows left out.
    pub commission: Decimal,
}

/// Where reports read their rows.
#[async_trait]
pub trait Source: Send + Sync {
    /// Figures per key, in no particular order; keys without any row are absent.
    async fn figures(
        &self,
        scope: &Scope,
        window: &Window,
        key: Key,
    ) -> Result<Vec<(String, Figures)>, SinkError>;

    /// The cells of the cohorts whose month falls in the window, activity up to `to`.
    async fn cohorts(&self, scope: &Scope, window: &Window) -> Result<Vec<CohortCell>, SinkError>;
}

/// The start of `t`'s bucket, in seconds since the epoch (UTC; weeks from Monday).
pub fn bucket_start(t: DateTime<Utc>, interval: Interval) -> i64 {
    const DAY: i64 = 86_400;
    let s = t.timestamp();
    match interval {
        Interval::Hour => s.div_euclid(3_600) * 3_600,
        Interval::Day => s.div_euclid(DAY) * DAY,
        // 1970-01-01 was a Thursday: Monday 1969-12-29 is three days before it.
        Interval::Week => (s + 3 * DAY).div_euclid(7 * DAY) * 7 * DAY - 3 * DAY,
        Interval::Month => month_start(t).timestamp(),
    }
}

/// The first instant of `t`'s UTC month.
pub fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// Whole calendar months from `cohort` to `month` (both first days of a month).
pub fn months_between(cohort: NaiveDate, month: NaiveDate) -> i64 {
    i64::from(month.year() - cohort.year()) * 12 + i64::from(month.month())
        - i64::from(cohort.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_on_the_hour_day_monday_and_first() {
        let t = Utc.with_ymd_and_hms(2026, 12, 10, 13, 45, 7).unwrap(); // a Thursday
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap().to_rfc3339();
        assert_eq!(
            at(bucket_start(t, Interval::Hour)),
            "2026-12-10T13:00:00+00:00"
        );
        assert_eq!(
            at(bucket_start(t, Interval::Day)),
            "2026-12-10T00:00:00+00:00"
        );
        assert_eq!(
            at(bucket_start(t, Interval::Week)),
            "2026-12-07T00:00:00+00:00"
        );
        assert_eq!(
            at(bucket_start(t, Interval::Month)),
            "2026-12-01T00:00:00+00:00"
        );
        let monday = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap();
        assert_eq!(bucket_start(monday, Interval::Week), monday.timestamp());
    }

    #[test]
    fn months_between_cohort_months() {
        let d = |y, m| NaiveDate::from_ymd_opt(y, m, 1).unwrap();
        assert_eq!(months_between(d(2026, 11), d(2026, 11)), 0);
        assert_eq!(months_between(d(2026, 11), d(2027, 2)), 3);
    }
}
