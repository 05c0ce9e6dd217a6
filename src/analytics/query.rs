//! The parameters of a report (SPEC §9.2), read from a query string and bounded: an
//! unknown report, parameter or value is refused with the parameter's name.

use chrono::{DateTime, Duration, Utc};

/// Longest span a report covers.
pub const MAX_SPAN_DAYS: i64 = 400;
/// Rows a report answers unless asked for fewer or more.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most rows a report answers.
pub const MAX_LIMIT: usize = 10_000;
/// The span when `from` is not given: the 30 days before `to`.
const DEFAULT_DAYS: i64 = 30;

/// A refused parameter and why.
pub type Refusal = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Overview,
    Timeseries,
    Funnel,
    Leaderboard,
    Cohorts,
}

impl Report {
    pub const ALL: [Report; 5] = [
        Report::Overview,
        Report::Timeseries,
        Report::Funnel,
        Report::Leaderboard,
        Report::Cohorts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Report::Overview => "overview",
            Report::Timeseries => "timeseries",
            Report::Funnel => "funnel",
            Report::Leaderboard => "leaderboard",
            Report::Cohorts => "cohorts",
        }
    }

    pub fn parse(s: &str) -> Option<Report> {
        Report::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The width of a timeseries bucket (UTC; weeks start on Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

impl Interval {
    const ALL: [Interval; 4] = [
        Interval::Hour,
        Interval::Day,
        Interval::Week,
        Interval::Month,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
        }
    }
}

/// What a funnel's rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Partner,
    Campaign,
    Link,
    SubId,
    UtmSource,
    Country,
}

impl GroupBy {
    const ALL: [GroupBy; 6] = [
        GroupBy::Partner,
        GroupBy::Campaign,
        GroupBy::Link,
        GroupBy::SubId,
        GroupBy::UtmSource,
        GroupBy::Country,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Partner => "partner",
            GroupBy::Campaign => "campaign",
            GroupBy::Link => "link",
            GroupBy::SubId => "sub_id",
            GroupBy::UtmSource => "utm_source",
            GroupBy::Country => "country",
        }
    }

    /// The column the group's value is answered in.
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Partner => "partner_id",
            GroupBy::Link => "link_code",
            other => other.as_str(),
        }
    }
}

/// What a leaderboard ranks partners by (highest first; ties by partner id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    Revenue,
    Commission,
    Conversions,
}

impl RankBy {
    const ALL: [RankBy; 3] = [RankBy::Revenue, RankBy::Commission, RankBy::Conversions];

    pub fn as_str(self) -> &'static str {
        match self {
            RankBy::Revenue => "revenue",
            RankBy::Commission => "commission",
            RankBy::Conversions => "conversions",
        }
    }
}

/// Who a report reads: a program, or one partner of it. The edge sets it from the
/// caller's scope, never from the caller's word alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub program_id: String,
    pub partner_id: Option<String>,
}

/// One report's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub report: Report,
    /// Event time, `from` included, `to` excluded, whole seconds.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub interval: Interval,
    pub group_by: GroupBy,
    pub rank_by: RankBy,
    pub limit: usize,
}

fn one_of<T: Copy>(
    name: &str,
    v: &str,
    all: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, Refusal> {
    all.iter()
        .copied()
        .find(|x| as_str(*x) == v)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|x| as_str(*x)).collect();
            (
                name.to_string(),
                format!("unknown {name} `{}`; one of {}", clip(v), names.join(", ")),
            )
        })
}

/// At most 64 characters of a refused value, for the message.
fn clip(v: &str) -> String {
    v.chars().take(64).collect()
}

/// An instant of a query string: RFC 3339, or a date meaning its UTC midnight. Bounded
/// to the years the ledger's `DateTime` columns hold (1970-01-01 up to 2100-01-01). The
/// ledger API's parameters read the same.
pub fn instant_of(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
        .filter(|t| (0..4_102_444_800).contains(&t.timestamp()))
}

/// A report's instant, cut to whole seconds (the reports' columns hold seconds).
fn instant(name: &str, v: &str) -> Result<DateTime<Utc>, Refusal> {
    instant_of(v)
        .and_then(|t| DateTime::from_timestamp(t.timestamp(), 0))
        .ok_or_else(|| {
            (
                name.to_string(),
                "must be an RFC 3339 time or a YYYY-MM-DD date from 1970 to 2100".into(),
            )
        })
}

impl Params {
    /// Reads `report` and the query's parameters other than `program_id` and
    /// `partner_id` (the edge reads those with the caller's scope).
    pub fn parse(
        report: &str,
        query: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Params, Refusal> {
        let report = one_of("report", report, &Report::ALL, Report::as_str)?;
        let mut p = Params {
            report,
            from: now,
            to: now,
            interval: Interval::Day,
            group_by: GroupBy::Partner,
            rank_by: RankBy::Revenue,
            limit: DEFAULT_LIMIT,
        };
        let (mut from, mut to) = (None, None);
        for (k, v) in query {
            match k.as_str() {
                "program_id" | "partner_id" => {}
                "from" => from = Some(instant("from", v)?),
                "to" => to = Some(instant("to", v)?),
                "interval" => p.interval = one_of(k, v, &Interval::ALL, Interval::as_str)?,
                "group_by" => p.group_by = one_of(k, v, &GroupBy::ALL, GroupBy::as_str)?,
                "rank_by" => p.rank_by = one_of(k, v, &RankBy::ALL, RankBy::as_str)?,
                "limit" => {
                    p.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| ("limit".to_string(), format!("must be 1-{MAX_LIMIT}")))?
                }
                other => return Err((other.to_string(), "unknown parameter".into())),
            }
        }
        p.to = to.unwrap_or_else(|| DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now));
        p.from = from.unwrap_or(p.to - Duration::days(DEFAULT_DAYS));
        if p.from >= p.to {
            return Err(("from".into(), "must be before to".into()));
        }
        if p.to - p.from > Duration::days(MAX_SPAN_DAYS) {
            return Err((
                "to".into(),
                format!("from and to span at most {MAX_SPAN_DAYS} days"),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 30, 15).unwrap()
    }

    #[test]
    fn defaults_are_the_last_thirty_days_by_day_and_partner() {
        let p = Params::parse("overview", &[], now()).unwrap();
        assert_eq!(p.to, now());
        assert_eq!(p.from, now() - Duration::days(30));
        assert_eq!(
            (p.interval, p.group_by, p.rank_by, p.limit),
            (Interval::Day, GroupBy::Partner, RankBy::Revenue, 1000)
        );
    }

    #[test]
    fn every_refusal_names_its_parameter() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("revenue", &[], "report"),
            ("funnel", &[("group_by", "visitor")], "group_by"),
            ("timeseries", &[("interval", "minute")], "interval"),
            ("leaderboard", &[("rank_by", "clicks")], "rank_by"),
            ("overview", &[("limit", "0")], "limit"),
            ("overview", &[("limit", "10001")], "limit"),
            ("overview", &[("from", "yesterday")], "from"),
            (
                "overview",
                &[("from", "2026-12-01"), ("to", "2026-12-01")],
                "from",
            ),
            (
                "overview",
                &[("from", "2025-01-01"), ("to", "2026-12-01")],
                "to",
            ),
            ("overview", &[("order", "asc")], "order"),
        ];
        for (report, pairs, field) in cases {
            let err = Params::parse(report, &q(pairs), now()).unwrap_err();
            assert_eq!(err.0, *field, "{report} {pairs:?}: {err:?}");
        }
        let err = Params::parse("funnel", &q(&[("group_by", "visitor")]), now()).unwrap_err();
        assert!(
            err.1.contains("`visitor`") && err.1.contains("sub_id"),
            "{err:?}"
        );
    }

    #[test]
    fn times_are_cut_to_whole_seconds_and_dates_are_midnight() {
        let p = Params::parse(
            "overview",
            &q(&[("from", "2026-11-01"), ("to", "2026-11-02T03:04:05.678Z")]),
            now(),
        )
        .unwrap();
        assert_eq!(p.from, Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        assert_eq!(p.to, Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap());
        let p = Params::parse(
            "overview",
            &q(&[("from", "2025-11-01"), ("to", "2026-12-06")]),
            now(),
        )
        .unwrap();
        assert_eq!((p.to - p.from).num_days(), 400);
    }
}
