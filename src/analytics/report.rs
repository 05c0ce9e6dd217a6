//! A report as a table: the same columns whatever the source, answered as JSON (money
//! and ratios as exact decimal strings) or CSV.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::figures::{ratio, Figures};
use super::query::{Params, RankBy, Refusal, Report, Scope};
use super::{bucket_start, Interval, Key, Source, Window};
use crate::engine::Status;
use crate::money::at_minor_units as money;
use crate::sink::SinkError;

/// One cell of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Count(u64),
    /// Money or a ratio, printed at its scale.
    Amount(Decimal),
    /// A ratio over nothing (no unique click).
    Missing,
}

/// A report's rows, and whether the row limit cut it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    pub truncated: bool,
}

/// Why a report was not answered.
#[derive(Debug)]
pub enum Failure {
    Refused(Refusal),
    Source(SinkError),
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Self {
        Failure::Source(e)
    }
}

/// The columns of [`Figures`] in reports that show them all.
const FIGURES: [&str; 17] = [
    "clicks",
    "unique_clicks",
    "bot_clicks",
    "leads",
    "signups",
    "sales",
    "recurring",
    "revenue",
    "commission",
    "commission_pending",
    "commission_held",
    "commission_approved",
    "commission_rejected",
    "commission_reversed",
    "commission_paid",
    "conversion_rate",
    "epc",
];

fn optional(d: Option<Decimal>) -> Cell {
    d.map_or(Cell::Missing, Cell::Amount)
}

fn figure_cells(f: &Figures, minor: u32) -> Vec<Cell> {
    let mut cells = vec![
        Cell::Count(f.clicks),
        Cell::Count(f.unique_clicks),
        Cell::Count(f.bot_clicks),
        Cell::Count(f.leads),
        Cell::Count(f.signups),
        Cell::Count(f.sales),
        Cell::Count(f.recurring),
        Cell::Amount(money(f.revenue, minor)),
        Cell::Amount(money(f.commission(), minor)),
    ];
    cells.extend(
        Status::ALL
            .iter()
            .map(|s| Cell::Amount(money(f.commission_in(*s), minor))),
    );
    cells.push(optional(f.conversion_rate()));
    cells.push(optional(f.epc()));
    cells
}

/// Answers one report of `scope` from `source`; `minor` is the program currency's
/// minor units, `lookback_days` its attribution lookback.
pub async fn run(
    source: &dyn Source,
    scope: &Scope,
    p: &Params,
    minor: u32,
    lookback_days: u32,
) -> Result<Table, Failure> {
    let window = Window {
        from: p.from,
        to: p.to,
        clicks_since: p.from - Duration::days(i64::from(lookback_days)),
    };
    match p.report {
        Report::Overview => {
            let all = source.figures(scope, &window, Key::All).await?;
            let f = all.into_iter().next().map(|(_, f)| f).unwrap_or_default();
            Ok(Table {
                columns: FIGURES.to_vec(),
                rows: vec![figure_cells(&f, minor)],
                truncated: false,
            })
        }
        Report::Timeseries => timeseries(source, scope, &window, p, minor).await,
        Report::Funnel => funnel(source, scope, &window, p, minor).await,
        Report::Leaderboard => leaderboard(source, scope, &window, p, minor).await,
        Report::Cohorts => cohorts(source, scope, &window, p, minor).await,
    }
}

/// Every bucket of the window, those without rows at zero.
async fn timeseries(
    source: &dyn Source,
    scope: &Scope,
    window: &Window,
    p: &Params,
    minor: u32,
) -> Result<Table, Failure> {
    let starts = bucket_starts(window.from, window.to, p.interval);
    if starts.len() > p.limit {
        return Err(Failure::Refused((
            "interval".into(),
            format!(
                "{} {} buckets in the span, more than limit {}",
                starts.len(),
                p.interval.as_str(),
                p.limit
            ),
        )));
    }
    let by_start: BTreeMap<i64, Figures> = source
        .figures(scope, window, Key::Bucket(p.interval))
        .await?
        .into_iter()
        .filter_map(|(k, f)| Some((k.parse().ok()?, f)))
        .collect();
    let mut columns = vec!["period"];
    columns.extend(FIGURES);
    let rows = starts
        .into_iter()
        .map(|s| {
            let f = by_start.get(&s).cloned().unwrap_or_default();
            let at = DateTime::from_timestamp(s, 0).unwrap_or_default();
            let mut row = vec![Cell::Text(at.format("%Y-%m-%dT%H:%M:%SZ").to_string())];
            row.extend(figure_cells(&f, minor));
            row
        })
        .collect();
    Ok(Table {
        columns,
        rows,
        truncated: false,
    })
}

/// The starts of the buckets that meet `[from, to)`.
fn bucket_starts(from: DateTime<Utc>, to: DateTime<Utc>, interval: Interval) -> Vec<i64> {
    let mut out = Vec::new();
    let mut s = bucket_start(from, interval);
    // Bounded by the 400-day span: at most 9,601 hours.
    while s < to.timestamp() && out.len() <= 10_000 {
        out.push(s);
        let next = DateTime::from_timestamp(s, 0).unwrap_or(to) + step(interval);
        s = bucket_start(next, interval);
    }
    out
}

fn step(interval: Interval) -> Duration {
    match interval {
        Interval::Hour => Duration::hours(1),
        Interval::Day => Duration::days(1),
        Interval::Week => Duration::days(7),
        // Into the next month from any day of this one.
        Interval::Month => Duration::days(32),
    }
}

async fn funnel(
    source: &dyn Source,
    scope: &Scope,
    window: &Window,
    p: &Params,
    minor: u32,
) -> Result<Table, Failure> {
    let mut groups = source
        .figures(scope, window, Key::Group(p.group_by))
        .await?;
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let truncated = groups.len() > p.limit;
    groups.truncate(p.limit);
    let columns = vec![
        p.group_by.column(),
        "clicks",
        "unique_clicks",
        "leads",
        "signups",
        "sales",
        "revenue",
        "conversion_rate",
    ];
    let rows = groups
        .into_iter()
        .map(|(k, f)| {
            vec![
                Cell::Text(k),
                Cell::Count(f.clicks),
                Cell::Count(f.unique_clicks),
                Cell::Count(f.leads),
                Cell::Count(f.signups),
                Cell::Count(f.sales),
                Cell::Amount(money(f.revenue, minor)),
                optional(f.conversion_rate()),
            ]
        })
        .collect();
    Ok(Table {
        columns,
        rows,
        truncated,
    })
}

async fn leaderboard(
    source: &dyn Source,
    scope: &Scope,
    window: &Window,
    p: &Params,
    minor: u32,
) -> Result<Table, Failure> {
    let key = Key::Group(super::GroupBy::Partner);
    let mut partners = source.figures(scope, window, key).await?;
    let rank = |f: &Figures| match p.rank_by {
        RankBy::Revenue => f.revenue,
        RankBy::Commission => f.commission(),
        RankBy::Conversions => Decimal::from(f.conversions()),
    };
    // Highest first; ties by partner id, so that the order is the same every time.
    partners.sort_by(|a, b| rank(&b.1).cmp(&rank(&a.1)).then_with(|| a.0.cmp(&b.0)));
    let truncated = partners.len() > p.limit;
    partners.truncate(p.limit);
    let columns = vec![
        "rank",
        "partner_id",
        "clicks",
        "unique_clicks",
        "conversions",
        "sales",
        "revenue",
        "commission",
        "epc",
    ];
    let rows = partners
        .into_iter()
        .enumerate()
        .map(|(i, (partner, f))| {
            vec![
                Cell::Count(i as u64 + 1),
                Cell::Text(partner),
                Cell::Count(f.clicks),
                Cell::Count(f.unique_clicks),
                Cell::Count(f.conversions()),
                Cell::Count(f.sales),
                Cell::Amount(money(f.revenue, minor)),
                Cell::Amount(money(f.commission(), minor)),
                optional(f.epc()),
            ]
        })
        .collect();
    Ok(Table {
        columns,
        rows,
        truncated,
    })
}

/// Cohorts by month, each with its size (the customers of month 0) and the lifetime
/// value so far: revenue up to that month per customer of the cohort.
async fn cohorts(
    source: &dyn Source,
    scope: &Scope,
    window: &Window,
    p: &Params,
    minor: u32,
) -> Result<Table, Failure> {
    let mut cells = source.cohorts(scope, window).await?;
    cells.sort_by_key(|c| (c.cohort, c.months));
    let truncated = cells.len() > p.limit;
    cells.truncate(p.limit);
    let mut size: BTreeMap<NaiveDate, u64> = BTreeMap::new();
    let mut so_far: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
    let columns = vec![
        "cohort",
        "months_since",
        "cohort_customers",
        "customers",
        "revenue",
        "commission",
        "ltv",
    ];
    let mut rows = Vec::with_capacity(cells.len());
    for c in cells {
        let n = *size.entry(c.cohort).or_insert(c.customers);
        let total = so_far.entry(c.cohort).or_default();
        *total += c.revenue;
        rows.push(vec![
            Cell::Text(c.cohort.format("%Y-%m").to_string()),
            Cell::Count(u64::from(c.months)),
            Cell::Count(n),
            Cell::Count(c.customers),
            Cell::Amount(money(c.revenue, minor)),
            Cell::Amount(money(c.commission, minor)),
            optional(ratio(*total, n).map(|v| money(v, minor))),
        ]);
    }
    Ok(Table {
        columns,
        rows,
        truncated,
    })
}

impl Table {
    /// The rows as JSON objects, column by column.
    pub fn json_rows(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|row| {
                let mut m = Map::new();
                for (c, cell) in self.columns.iter().zip(row) {
                    m.insert((*c).to_string(), cell.json());
                }
                Value::Object(m)
            })
            .collect()
    }

    /// The table as CSV: a header, then one line a row (RFC 4180 quoting).
    pub fn csv(&self) -> String {
        let mut out = self.columns.join(",");
        out.push_str("\r\n");
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(Cell::csv).collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

impl Cell {
    fn json(&self) -> Value {
        match self {
            Cell::Text(s) => Value::String(s.clone()),
            Cell::Count(n) => Value::from(*n),
            Cell::Amount(d) => Value::String(d.to_string()),
            Cell::Missing => Value::Null,
        }
    }

    fn csv(&self) -> String {
        match self {
            Cell::Text(s)
                if s.contains([',', '"', '\r', '\n']) || s.starts_with(['=', '+', '-', '@']) =>
            {
                // Quoted; a leading formula character is neutralized for spreadsheets.
                let s = if s.starts_with(['=', '+', '-', '@']) {
                    format!("'{s}")
                } else {
                    s.clone()
                };
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Cell::Text(s) => s.clone(),
            Cell::Count(n) => n.to_string(),
            Cell::Amount(d) => d.to_string(),
            Cell::Missing => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn buckets_cover_the_window_from_its_first_partial_one() {
        let from = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap();
        let months: Vec<String> = bucket_starts(from, to, Interval::Month)
            .into_iter()
            .map(|s| {
                DateTime::from_timestamp(s, 0)
                    .unwrap()
                    .format("%Y-%m")
                    .to_string()
            })
            .collect();
        assert_eq!(months, ["2026-11", "2026-12", "2027-01"]);
        let to = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 1).unwrap();
        assert_eq!(bucket_starts(from, to, Interval::Hour).len(), 13);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        let t = Table {
            columns: vec!["campaign", "clicks", "epc"],
            rows: vec![
                vec![Cell::Text("a,b".into()), Cell::Count(3), Cell::Missing],
                vec![
                    Cell::Text("=HYPERLINK()".into()),
                    Cell::Count(0),
                    Cell::Amount(Decimal::new(1250, 4)),
                ],
            ],
            truncated: false,
        };
        assert_eq!(
            t.csv(),
            "campaign,clicks,epc\r\n\"a,b\",3,\r\n\"'=HYPERLINK()\",0,0.1250\r\n"
        );
    }
}
