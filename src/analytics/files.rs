//! Reports from the file sink's rows, for the embedded default: the same figures as
//! ClickHouse adds up, read from the JSONEachRow files at each report (a replayed row
//! is the same row, as `FINAL` collapses it). Meant for the demo's and a laptop's
//! volumes, not for millions of rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::query::{GroupBy, Scope};
use super::{bucket_start, months_between, CohortCell, Figures, Key, Source, Window};
use crate::engine::Status;
use crate::sink::file::{decimal_from_raw, parse_time, read_lines};
use crate::sink::SinkError;

/// The file sink's directory, read at each report.
pub struct FileAnalytics {
    dir: PathBuf,
}

impl FileAnalytics {
    pub fn new(dir: &Path) -> Self {
        FileAnalytics {
            dir: dir.to_path_buf(),
        }
    }
}

#[derive(serde::Deserialize)]
struct Click {
    click_id: Uuid,
    ts: String,
    program_id: String,
    partner_id: String,
    link_code: String,
    campaign: Option<String>,
    is_bot: u8,
    is_unique: u8,
    #[serde(default)]
    sub_ids: Vec<String>,
    utm_source: Option<String>,
}

#[derive(serde::Deserialize)]
struct Attribution {
    conversion_id: Uuid,
    position: u16,
    program_id: String,
    partner_id: String,
    click_id: Option<Uuid>,
    campaign: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    weight: Decimal,
    #[serde(deserialize_with = "decimal_from_raw")]
    credited_amount: Decimal,
    kind: String,
    occurred_at: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    country: String,
}

#[derive(serde::Deserialize)]
struct Commission {
    commission_id: Uuid,
    program_id: String,
    partner_id: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    amount: Decimal,
    occurred_at: String,
    #[serde(default)]
    customer_id: String,
}

#[derive(serde::Deserialize)]
struct Step {
    commission_id: Uuid,
    step: u8,
    status: String,
}

/// The rows of one program (of one partner, in a partner's scope), each once.
#[derive(Default)]
struct Rows {
    clicks: HashMap<Uuid, (DateTime<Utc>, Click)>,
    attributions: HashMap<(Uuid, u16), (DateTime<Utc>, Attribution)>,
    commissions: HashMap<Uuid, (DateTime<Utc>, Commission, Status)>,
}

fn unreadable(e: std::io::Error) -> SinkError {
    SinkError::Transient(format!("analytics over the files: {e}"))
}

fn time(s: &str) -> Result<DateTime<Utc>, SinkError> {
    parse_time(s).ok_or_else(|| SinkError::Transient(format!("unreadable time `{s}` in a file")))
}

impl FileAnalytics {
    /// Reads the files: every click of the program (partner filtering is the caller's,
    /// as grouping by a click needs every click), the scope's attributions and ledger
    /// rows with their current status.
    fn rows(&self, scope: &Scope) -> Result<Rows, SinkError> {
        let mine = |program: &str, partner: &str| {
            program == scope.program_id && scope.partner_id.as_deref().is_none_or(|p| p == partner)
        };
        let mut rows = Rows::default();
        let mut clicks = Vec::new();
        read_lines(&self.dir.join("clicks.jsonl"), |c: Click| clicks.push(c))
            .map_err(unreadable)?;
        for c in clicks
            .into_iter()
            .filter(|c| c.program_id == scope.program_id)
        {
            rows.clicks.insert(c.click_id, (time(&c.ts)?, c));
        }
        let mut attributions = Vec::new();
        read_lines(&self.dir.join("attributions.jsonl"), |a: Attribution| {
            attributions.push(a)
        })
        .map_err(unreadable)?;
        for a in attributions
            .into_iter()
            .filter(|a| mine(&a.program_id, &a.partner_id))
        {
            rows.attributions
                .insert((a.conversion_id, a.position), (time(&a.occurred_at)?, a));
        }
        let mut status: HashMap<Uuid, (u8, Status)> = HashMap::new();
        read_lines(&self.dir.join("commission_status.jsonl"), |s: Step| {
            let Some(st) = Status::parse(&s.status) else {
                return;
            };
            let e = status.entry(s.commission_id).or_insert((s.step, st));
            if s.step >= e.0 {
                *e = (s.step, st);
            }
        })
        .map_err(unreadable)?;
        let mut commissions = Vec::new();
        read_lines(&self.dir.join("commissions.jsonl"), |c: Commission| {
            commissions.push(c)
        })
        .map_err(unreadable)?;
        for c in commissions
            .into_iter()
            .filter(|c| mine(&c.program_id, &c.partner_id))
        {
            let st = status
                .get(&c.commission_id)
                .map_or(Status::Pending, |s| s.1);
            rows.commissions
                .insert(c.commission_id, (time(&c.occurred_at)?, c, st));
        }
        Ok(rows)
    }
}

fn within(t: DateTime<Utc>, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    t >= from && t < to
}

fn or_empty(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// The keys a click counts under.
fn click_keys(c: &Click, t: DateTime<Utc>, key: Key) -> Vec<String> {
    match key {
        Key::All => vec![String::new()],
        Key::Bucket(i) => vec![bucket_start(t, i).to_string()],
        Key::Group(g) => match g {
            GroupBy::Partner => vec![c.partner_id.clone()],
            GroupBy::Campaign => vec![or_empty(&c.campaign)],
            GroupBy::Link => vec![c.link_code.clone()],
            GroupBy::SubId if c.sub_ids.is_empty() => vec![String::new()],
            GroupBy::SubId => c.sub_ids.clone(),
            GroupBy::UtmSource => vec![or_empty(&c.utm_source)],
            GroupBy::Country => vec![String::new()],
        },
    }
}

/// The keys an attribution counts under; those of its click for the click's groups
/// (none found: the empty group, as ClickHouse's left join answers).
fn attribution_keys(
    a: &Attribution,
    t: DateTime<Utc>,
    key: Key,
    clicks: &Rows,
    w: &Window,
) -> Vec<String> {
    let click = || {
        a.click_id
            .and_then(|id| clicks.clicks.get(&id))
            .filter(|(ts, _)| within(*ts, w.clicks_since, w.to))
    };
    match key {
        Key::All => vec![String::new()],
        Key::Bucket(i) => vec![bucket_start(t, i).to_string()],
        Key::Group(GroupBy::Partner) => vec![a.partner_id.clone()],
        Key::Group(GroupBy::Campaign) => vec![a.campaign.clone()],
        Key::Group(GroupBy::Country) => vec![a.country.clone()],
        Key::Group(GroupBy::Link) => {
            vec![click().map(|c| c.1.link_code.clone()).unwrap_or_default()]
        }
        Key::Group(GroupBy::UtmSource) => vec![click()
            .map(|c| or_empty(&c.1.utm_source))
            .unwrap_or_default()],
        Key::Group(GroupBy::SubId) => match click() {
            Some((_, c)) if !c.sub_ids.is_empty() => c.sub_ids.clone(),
            _ => vec![String::new()],
        },
    }
}

fn commission_key(c: &Commission, t: DateTime<Utc>, key: Key) -> Option<String> {
    match key {
        Key::All => Some(String::new()),
        Key::Bucket(i) => Some(bucket_start(t, i).to_string()),
        Key::Group(GroupBy::Partner) => Some(c.partner_id.clone()),
        Key::Group(_) => None,
    }
}

fn add_conversions(rows: &Rows, w: &Window, key: Key, out: &mut BTreeMap<String, Figures>) {
    let mut counted: HashSet<(String, Uuid)> = HashSet::new();
    for (t, a) in rows.attributions.values() {
        if a.weight <= Decimal::ZERO || !within(*t, w.from, w.to) {
            continue;
        }
        for k in attribution_keys(a, *t, key, rows, w) {
            let f = out.entry(k.clone()).or_default();
            if matches!(a.kind.as_str(), "sale" | "recurring") {
                f.revenue += a.credited_amount;
            }
            // A conversion counts once per key, however many partners it credits.
            if counted.insert((k, a.conversion_id)) {
                match a.kind.as_str() {
                    "lead" => f.leads += 1,
                    "signup" => f.signups += 1,
                    "sale" => f.sales += 1,
                    "recurring" => f.recurring += 1,
                    _ => {}
                }
            }
        }
    }
}

fn figures(rows: &Rows, scope: &Scope, w: &Window, key: Key) -> Vec<(String, Figures)> {
    let mut out: BTreeMap<String, Figures> = BTreeMap::new();
    let clicks = rows.clicks.values().filter(|(t, c)| {
        within(*t, w.from, w.to)
            && scope
                .partner_id
                .as_deref()
                .is_none_or(|p| p == c.partner_id)
    });
    for (t, c) in clicks {
        for k in click_keys(c, *t, key) {
            let f = out.entry(k).or_default();
            f.clicks += 1;
            f.unique_clicks += u64::from(c.is_unique);
            f.bot_clicks += u64::from(c.is_bot);
        }
    }
    add_conversions(rows, w, key, &mut out);
    for (t, c, st) in rows.commissions.values() {
        if !within(*t, w.from, w.to) {
            continue;
        }
        if let Some(k) = commission_key(c, *t, key) {
            out.entry(k).or_default().add_commission(*st, c.amount);
        }
    }
    out.into_iter().collect()
}

fn month(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or_default()
}

#[derive(Default)]
struct Cell {
    customers: HashSet<String>,
    revenue: Decimal,
    commission: Decimal,
}

fn cohorts(rows: &Rows, w: &Window) -> Vec<CohortCell> {
    let sales = rows
        .attributions
        .values()
        .filter(|(t, a)| a.weight > Decimal::ZERO && !a.customer_id.is_empty() && *t < w.to);
    let mut first: HashMap<&str, NaiveDate> = HashMap::new();
    for (t, a) in sales.clone().filter(|(_, a)| a.kind == "sale") {
        let m = first.entry(&a.customer_id).or_insert(month(*t));
        *m = (*m).min(month(*t));
    }
    let from = month(w.from);
    let starts_before_to =
        |c: NaiveDate| c.and_hms_opt(0, 0, 0).is_some_and(|t| t.and_utc() < w.to);
    let cohort_of = |customer: &str, t: DateTime<Utc>| {
        let c = *first.get(customer)?;
        let m = month(t);
        (c >= from && starts_before_to(c) && m >= c).then(|| (c, months_between(c, m) as u32))
    };
    let mut cells: BTreeMap<(NaiveDate, u32), Cell> = BTreeMap::new();
    for (t, a) in sales.filter(|(_, a)| matches!(a.kind.as_str(), "sale" | "recurring")) {
        if let Some(k) = cohort_of(&a.customer_id, *t) {
            let cell = cells.entry(k).or_default();
            cell.customers.insert(a.customer_id.clone());
            cell.revenue += a.credited_amount;
        }
    }
    for (t, c, st) in rows.commissions.values() {
        if c.customer_id.is_empty() || *st == Status::Rejected || *t >= w.to {
            continue;
        }
        if let Some(k) = cohort_of(&c.customer_id, *t) {
            cells.entry(k).or_default().commission += c.amount;
        }
    }
    cells
        .into_iter()
        .map(|((cohort, months), c)| CohortCell {
            cohort,
            months,
            customers: c.customers.len() as u64,
            revenue: c.revenue,
            commission: c.commission,
        })
        .collect()
}

#[async_trait]
impl Source for FileAnalytics {
    async fn figures(
        &self,
        scope: &Scope,
        w: &Window,
        key: Key,
    ) -> Result<Vec<(String, Figures)>, SinkError> {
        let rows = self.rows(scope)?;
        Ok(figures(&rows, scope, w, key))
    }

    async fn cohorts(&self, scope: &Scope, w: &Window) -> Result<Vec<CohortCell>, SinkError> {
        let rows = self.rows(scope)?;
        Ok(cohorts(&rows, w))
    }
}
