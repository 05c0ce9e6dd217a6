//! Reports from ClickHouse: every sum made by the database over the deduplicated rows
//! (`FINAL`; a ledger row's current status by `argMax(status, step)`), every value
//! bound, never spliced. Valid on ClickHouse 18.16 and current releases.
//!
//! What each report scans (all tables are ordered by `program_id` first, so a program's
//! rows are a range of the primary key): `clicks` and `attributions` of the window
//! (partitioned by month of event time); `commissions` of the window with the status
//! steps of exactly those rows (`commission_id IN` the window's, on the status table's
//! key); grouping by link, sub id or UTM source adds the clicks since the program's
//! lookback before the window (a conversion's credited click). Cohorts read every
//! attributed sale of the program up to `to` (a customer's first sale may lie before
//! the window) and the window's commissions.

use async_trait::async_trait;
use chrono::NaiveDate;
use clickhouse::Client;

use super::query::{GroupBy, Interval, Scope};
use super::{CohortCell, Figures, Key, Source, Window};
use crate::config::ClickHouseConfig;
use crate::engine::Status;
use crate::sink::clickhouse::{classify, client};
use crate::sink::SinkError;

pub struct ClickHouseAnalytics {
    client: Client,
}

impl ClickHouseAnalytics {
    pub fn new(cfg: &ClickHouseConfig) -> Self {
        ClickHouseAnalytics {
            client: client(cfg),
        }
    }
}

/// A value bound to a `?` of the SQL, in order.
enum Bind {
    Text(String),
    Secs(i64),
}

/// SQL with its bound values side by side.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn text(&mut self, s: &str, v: &str) -> &mut Self {
        self.text.push_str(s);
        self.binds.push(Bind::Text(v.to_string()));
        self
    }

    fn secs(&mut self, s: &str, v: i64) -> &mut Self {
        self.text.push_str(s);
        self.binds.push(Bind::Secs(v));
        self
    }

    /// `program_id = ?` and, for a partner's scope, `AND partner_id = ?`.
    fn scope(&mut self, scope: &Scope) -> &mut Self {
        self.text(" program_id = ?", &scope.program_id);
        if let Some(p) = &scope.partner_id {
            self.text(" AND partner_id = ?", p);
        }
        self
    }

    /// `AND {col} >= toDateTime(?) AND {col} < toDateTime(?)`.
    fn between(&mut self, col: &str, from: i64, to: i64) -> &mut Self {
        self.secs(&format!(" AND {col} >= toDateTime(?)"), from)
            .secs(&format!(" AND {col} < toDateTime(?)"), to)
    }

    fn query(&self, client: &Client) -> clickhouse::query::Query {
        let mut q = client.query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::Secs(n) => q.bind(*n),
            };
        }
        q
    }
}

/// The bucket start of `col` in seconds, as text (the key column is a string).
fn bucket(col: &str, i: Interval) -> String {
    match i {
        Interval::Hour => format!("toString(intDiv(toUInt32({col}), 3600) * 3600)"),
        Interval::Day => format!("toString(intDiv(toUInt32({col}), 86400) * 86400)"),
        // Weeks from Monday; 1970-01-01 was a Thursday.
        Interval::Week => {
            format!("toString(toInt64(intDiv(toUInt32({col}) + 259200, 604800)) * 604800 - 259200)")
        }
        Interval::Month => {
            format!("toString(toInt64(toUInt32(toStartOfMonth({col}, 'UTC'))) * 86400)")
        }
    }
}

/// The key expression of each part: (clicks, attributions, commissions); the
/// commission part is absent where a ledger row cannot know the key.
fn keys(key: Key) -> (String, String, Option<String>) {
    let same = |e: &str| (e.to_string(), e.to_string(), Some(e.to_string()));
    match key {
        Key::All => same("''"),
        Key::Bucket(i) => (
            bucket("ts", i),
            bucket("occurred_at", i),
            Some(bucket("occurred_at", i)),
        ),
        Key::Group(GroupBy::Partner) => same("partner_id"),
        Key::Group(g) => {
            let (c, a) = match g {
                GroupBy::Campaign => ("ifNull(campaign, '')", "campaign"),
                GroupBy::Link => ("link_code", "c_link"),
                GroupBy::SubId => (
                    "arrayJoin(if(empty(sub_ids), [''], sub_ids))",
                    "arrayJoin(if(empty(c_subs), [''], c_subs))",
                ),
                GroupBy::UtmSource => ("ifNull(utm_source, '')", "c_utm"),
                // Clicks carry no country: the edge does no geo lookup.
                GroupBy::Country => ("''", "country"),
                GroupBy::Partner => unreachable!("matched above"),
            };
            (c.to_string(), a.to_string(), None)
        }
    }
}

/// The zero columns a part adds for the figures it does not count.
const NO_CLICKS: &str = "toUInt64(0) AS clicks, toUInt64(0) AS uniq, toUInt64(0) AS bots";
const NO_CONVERSIONS: &str = "toUInt64(0) AS leads, toUInt64(0) AS signups, \
     toUInt64(0) AS sales, toUInt64(0) AS recurring, toDecimal64(0, 4) AS revenue";

fn no_commission() -> String {
    (0..Status::ALL.len())
        .map(|i| format!("toDecimal64(0, 4) AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn clicks_part(sql: &mut Sql, scope: &Scope, w: &Window, k: &str) {
    sql.push(&format!(
        "SELECT {k} AS k, count() AS clicks, sum(is_unique) AS uniq, sum(is_bot) AS bots, \
         {NO_CONVERSIONS}, {} FROM clicks FINAL WHERE",
        no_commission()
    ))
    .scope(scope)
    .between("ts", w.from.timestamp(), w.to.timestamp())
    .push(" GROUP BY k");
}

fn attributions_part(sql: &mut Sql, scope: &Scope, w: &Window, k: &str, join_clicks: bool) {
    sql.push(&format!(
        "SELECT {k} AS k, {NO_CLICKS}, \
         uniqExactIf(conversion_id, kind = 'lead') AS leads, \
         uniqExactIf(conversion_id, kind = 'signup') AS signups, \
         uniqExactIf(conversion_id, kind = 'sale') AS sales, \
         uniqExactIf(conversion_id, kind = 'recurring') AS recurring, \
         toDecimal64(sumIf(credited_amount, kind IN ('sale', 'recurring')), 4) AS revenue, {} \
         FROM (SELECT conversion_id, partner_id, kind, credited_amount, occurred_at, campaign, \
         country, ifNull(click_id, toUUID('00000000-0000-0000-0000-000000000000')) AS click_id \
         FROM attributions FINAL WHERE",
        no_commission()
    ))
    .scope(scope)
    .push(" AND weight > 0")
    .between("occurred_at", w.from.timestamp(), w.to.timestamp())
    .push(")");
    if join_clicks {
        sql.push(
            " ANY LEFT JOIN (SELECT click_id, link_code AS c_link, sub_ids AS c_subs, \
             ifNull(utm_source, '') AS c_utm FROM clicks FINAL WHERE",
        )
        .text(" program_id = ?", &scope.program_id)
        .between("ts", w.clicks_since.timestamp(), w.to.timestamp())
        .push(") USING click_id");
    }
    sql.push(" GROUP BY k");
}

/// `commission_id` and `st`, the current status, of the window's ledger rows.
fn statuses(sql: &mut Sql, scope: &Scope, w: &Window) {
    sql.push(
        " ANY LEFT JOIN (SELECT commission_id, argMax(status, step) AS st \
         FROM commission_status WHERE",
    )
    .scope(scope)
    .push(" AND commission_id IN (SELECT commission_id FROM commissions WHERE")
    .scope(scope)
    .between("occurred_at", w.from.timestamp(), w.to.timestamp())
    .push(") GROUP BY commission_id) USING commission_id");
}

fn commissions_part(sql: &mut Sql, scope: &Scope, w: &Window, k: &str) {
    let by_status: Vec<String> = Status::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "toDecimal64(sumIf(amount, st = '{}'), 4) AS c{i}",
                s.as_str()
            )
        })
        .collect();
    sql.push(&format!(
        "SELECT {k} AS k, {NO_CLICKS}, {NO_CONVERSIONS}, {} \
         FROM (SELECT commission_id, partner_id, occurred_at, amount FROM commissions FINAL WHERE",
        by_status.join(", ")
    ))
    .scope(scope)
    .between("occurred_at", w.from.timestamp(), w.to.timestamp())
    .push(")");
    statuses(sql, scope, w);
    sql.push(" GROUP BY k");
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct FiguresText {
    k: String,
    clicks: u64,
    uniq: u64,
    bots: u64,
    leads: u64,
    signups: u64,
    sales: u64,
    recurring: u64,
    revenue: String,
    c0: String,
    c1: String,
    c2: String,
    c3: String,
    c4: String,
    c5: String,
}

fn corrupt(what: &str) -> SinkError {
    SinkError::Transient(format!("unreadable {what} in ClickHouse's answer"))
}

fn decimal(s: &str) -> Result<rust_decimal::Decimal, SinkError> {
    s.parse().map_err(|_| corrupt("amount"))
}

impl FiguresText {
    fn figures(self) -> Result<(String, Figures), SinkError> {
        let mut f = Figures {
            clicks: self.clicks,
            unique_clicks: self.uniq,
            bot_clicks: self.bots,
            leads: self.leads,
            signups: self.signups,
            sales: self.sales,
            recurring: self.recurring,
            revenue: decimal(&self.revenue)?,
            ..Figures::default()
        };
        let by_status = [&self.c0, &self.c1, &self.c2, &self.c3, &self.c4, &self.c5];
        for (status, amount) in Status::ALL.iter().zip(by_status) {
            f.add_commission(*status, decimal(amount)?);
        }
        Ok((self.k, f))
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct CohortText {
    yyyymm: u32,
    months: i64,
    customers: u64,
    revenue: String,
    commission: String,
}

/// Every attributed sale or recurring payment of a customer up to `to`, with the
/// window's commissions of that customer (rejected rows left out), each row with its
/// month: the activity cohorts are made of.
fn activity(sql: &mut Sql, scope: &Scope, w: &Window) {
    sql.push(
        "SELECT customer_id, toStartOfMonth(occurred_at, 'UTC') AS month, 1 AS active, \
         credited_amount AS rev, toDecimal64(0, 4) AS com FROM attributions FINAL WHERE",
    )
    .scope(scope)
    .push(" AND weight > 0 AND kind IN ('sale', 'recurring') AND customer_id != ''")
    .secs(" AND occurred_at < toDateTime(?)", w.to.timestamp())
    .push(
        " UNION ALL SELECT customer_id, toStartOfMonth(occurred_at, 'UTC') AS month, \
         0 AS active, toDecimal64(0, 4) AS rev, amount AS com FROM commissions FINAL WHERE",
    )
    .scope(scope)
    .push(" AND customer_id != ''")
    .secs(" AND occurred_at < toDateTime(?)", w.to.timestamp())
    .push(
        " AND commission_id NOT IN (SELECT commission_id FROM (SELECT commission_id, \
         argMax(status, step) AS st FROM commission_status WHERE",
    )
    .scope(scope)
    .push(" GROUP BY commission_id) WHERE st = 'rejected')");
}

fn cohorts_sql(scope: &Scope, w: &Window) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT toUInt32(toYear(cohort) * 100 + toMonth(cohort)) AS yyyymm, \
         toInt64(toYear(month) * 12 + toMonth(month)) - toInt64(toYear(cohort) * 12 + toMonth(cohort)) AS months, \
         uniqExactIf(customer_id, active = 1) AS customers, \
         toString(toDecimal64(sum(rev), 4)) AS revenue, \
         toString(toDecimal64(sum(com), 4)) AS commission FROM (",
    );
    activity(&mut sql, scope, w);
    sql.push(
        ") ANY INNER JOIN (SELECT customer_id, toStartOfMonth(min(occurred_at), 'UTC') AS cohort \
         FROM attributions FINAL WHERE",
    )
    .scope(scope)
    .push(" AND weight > 0 AND kind = 'sale' AND customer_id != '' GROUP BY customer_id")
    .secs(
        " HAVING cohort >= toStartOfMonth(toDateTime(?), 'UTC')",
        w.from.timestamp(),
    )
    .secs(" AND cohort < toDateTime(?)", w.to.timestamp())
    .push(") USING customer_id WHERE month >= cohort GROUP BY yyyymm, months");
    sql
}

#[async_trait]
impl Source for ClickHouseAnalytics {
    async fn figures(
        &self,
        scope: &Scope,
        w: &Window,
        key: Key,
    ) -> Result<Vec<(String, Figures)>, SinkError> {
        let (ck, ak, mk) = keys(key);
        let join_clicks = matches!(
            key,
            Key::Group(GroupBy::Link | GroupBy::SubId | GroupBy::UtmSource)
        );
        let sums: Vec<String> = (0..Status::ALL.len())
            .map(|i| format!("toString(sum(c{i})) AS c{i}"))
            .collect();
        let mut sql = Sql::default();
        sql.push(&format!(
            "SELECT k, sum(clicks) AS clicks, sum(uniq) AS uniq, sum(bots) AS bots, \
             sum(leads) AS leads, sum(signups) AS signups, sum(sales) AS sales, \
             sum(recurring) AS recurring, toString(sum(revenue)) AS revenue, {} FROM (",
            sums.join(", ")
        ));
        clicks_part(&mut sql, scope, w, &ck);
        sql.push(" UNION ALL ");
        attributions_part(&mut sql, scope, w, &ak, join_clicks);
        if let Some(mk) = mk {
            sql.push(" UNION ALL ");
            commissions_part(&mut sql, scope, w, &mk);
        }
        sql.push(") GROUP BY k");
        let rows: Vec<FiguresText> = sql
            .query(&self.client)
            .fetch_all()
            .await
            .map_err(classify)?;
        rows.into_iter().map(FiguresText::figures).collect()
    }

    async fn cohorts(&self, scope: &Scope, w: &Window) -> Result<Vec<CohortCell>, SinkError> {
        let rows: Vec<CohortText> = cohorts_sql(scope, w)
            .query(&self.client)
            .fetch_all()
            .await
            .map_err(classify)?;
        rows.into_iter()
            .map(|r| {
                let (y, m) = (r.yyyymm / 100, r.yyyymm % 100);
                Ok(CohortCell {
                    cohort: NaiveDate::from_ymd_opt(y as i32, m, 1)
                        .ok_or_else(|| corrupt("cohort"))?,
                    months: u32::try_from(r.months).map_err(|_| corrupt("months"))?,
                    customers: r.customers,
                    revenue: decimal(&r.revenue)?,
                    commission: decimal(&r.commission)?,
                })
            })
            .collect()
    }
}
