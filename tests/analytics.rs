//! The analytics API (SPEC §9.2) against numbers this test computes from what it sent,
//! to the cent: on the real stack (ClickHouse) and on the embedded default (the file
//! sink's rows), for a program key and for each partner's own key.

mod common;

use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, Utc};
use common::*;
use hyper::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// One conversion as sent, with what the test knows it must earn.
struct Sent {
    partner: &'static str,
    kind: &'static str,
    /// The amount, and what it earns at the plan's rate or bounty (10 % of a sale, 5 %
    /// of a recurring payment, 1.00 a lead, 2.00 a signup; a refund reverses 10 %).
    amount: Decimal,
    commission: Decimal,
    /// The link of its click ("" without one), its country and customer.
    link: &'static str,
    country: &'static str,
    customer: &'static str,
    occurred_at: DateTime<Utc>,
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn program() -> Value {
    json!({
        "name": "Shop", "currency": "USD", "secret": SECRET,
        "fallback_url": "https://shop.example/", "lookback_days": 30,
        "attribution": {"model": "last_touch"}, "click_dedup_window_secs": 3600,
        "max_touches": 32,
        "commission": {"tiers": {"std": "0.10"}, "default_tier": "std",
                       "lead_bounty": "1.00", "signup_bounty": "2.00",
                       "recurring": {"rate": "0.05"}}
    })
}

/// The program `shop`, partners `alice` and `bob` with a link each and a key each, and
/// a program key; the keys' secrets (program, alice, bob).
async fn setup(url: &str) -> (String, String, String) {
    let put = |path: String, body: Value| async move { admin(Method::PUT, &path, body).await };
    let r = put(format!("{url}/api/v1/programs/shop"), program()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for p in ["alice", "bob"] {
        let r = put(
            format!("{url}/api/v1/partners/{p}"),
            json!({"program_id": "shop"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    for link in [
        json!({"program_id": "shop", "partner_id": "alice", "code": "al-spring",
               "destination": "https://shop.example/", "campaign": "spring",
               "utm_source": "news", "sub_ids": ["s1"]}),
        json!({"program_id": "shop", "partner_id": "bob", "code": "bo-fall",
               "destination": "https://shop.example/", "campaign": "fall"}),
    ] {
        let r = admin(Method::POST, &format!("{url}/api/v1/links"), link).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = put(
        format!("{url}/api/v1/programs/shop/promo_codes/BOB10"),
        json!({"partner_id": "bob"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let key = |body: Value| make_key(url, body);
    (
        key(json!({"scope": "program", "program_id": "shop", "name": "merchant"})).await,
        key(json!({"scope": "partner", "program_id": "shop", "partner_id": "alice", "name": "a"}))
            .await,
        key(json!({"scope": "partner", "program_id": "shop", "partner_id": "bob", "name": "b"}))
            .await,
    )
}

async fn click(url: &str, code: &str, agent: &str) -> String {
    click_through(url, code, agent).await
}

/// Clicks (alice: three browsers, one of them twice, and a bot; bob: two browsers) and
/// conversions in two rounds (recurring payments and refunds after their sales); what
/// was sent, as the test's own record.
async fn send_everything(url: &str, key: &str) -> Vec<Sent> {
    let a1 = click(url, "al-spring", "Mozilla/5.0 a1").await;
    let a2 = click(url, "al-spring", "Mozilla/5.0 a2").await;
    let a3 = click(url, "al-spring", "Mozilla/5.0 a3").await;
    click(url, "al-spring", "Mozilla/5.0 a1").await;
    let r = send(
        Method::GET,
        &format!("{url}/r/al-spring"),
        &[("user-agent", "Googlebot/2.1")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let b1 = click(url, "bo-fall", "Mozilla/5.0 b1").await;
    let b2 = click(url, "bo-fall", "Mozilla/5.0 b2").await;
    let now = Utc::now();
    let old = now - Span::days(61);
    let conv = |order: &str, kind: &str, amount: &str, extra: Value| {
        let mut c = json!({"program_id": "shop", "order_id": order, "kind": kind,
                           "amount": amount, "currency": "USD"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let first = json!([
        conv(
            "S-A1",
            "sale",
            "100.00",
            json!({"click_id": a1, "customer_id": "c1", "country": "de"})
        ),
        conv(
            "S-A2",
            "sale",
            "40.00",
            json!({"click_id": a2, "customer_id": "c2", "country": "FR"})
        ),
        conv("L-A3", "lead", "1.00", json!({"click_id": a3})),
        conv(
            "S-B1",
            "sale",
            "60.00",
            json!({"click_id": b1, "customer_id": "c3", "country": "US"})
        ),
        conv("U-B2", "signup", "1.00", json!({"click_id": b2})),
        conv(
            "S-OLD",
            "sale",
            "80.00",
            json!({"promo_code": "bob10", "customer_id": "c4",
             "country": "US", "occurred_at": old.to_rfc3339()})
        ),
        conv(
            "S-C4",
            "sale",
            "20.00",
            json!({"promo_code": "BOB10", "customer_id": "c4", "country": "US"})
        ),
    ]);
    let r = post_conversions(url, &first.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    // The sales settled before their recurring payment and refund are sent.
    wait_for(url, key, "overview", "", |rows| rows[0]["sales"] == 5).await;
    let second = json!([
        conv("R-B1", "recurring", "25.00", json!({"customer_id": "c3"})),
        conv(
            "F-A1",
            "refund",
            "10.00",
            json!({"original_order_id": "S-A1", "customer_id": "c1"})
        ),
    ]);
    let r = post_conversions(url, &second.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let at = Utc::now();
    let sent =
        |partner, kind, amount: &str, commission: &str, link, country, customer, occurred_at| {
            Sent {
                partner,
                kind,
                amount: d(amount),
                commission: d(commission),
                link,
                country,
                customer,
                occurred_at,
            }
        };
    vec![
        sent(
            "alice",
            "sale",
            "100.00",
            "10.00",
            "al-spring",
            "DE",
            "c1",
            now,
        ),
        sent(
            "alice",
            "sale",
            "40.00",
            "4.00",
            "al-spring",
            "FR",
            "c2",
            now,
        ),
        sent("alice", "lead", "1.00", "1.00", "al-spring", "", "", now),
        sent("bob", "sale", "60.00", "6.00", "bo-fall", "US", "c3", now),
        sent("bob", "signup", "1.00", "2.00", "bo-fall", "", "", now),
        sent("bob", "sale", "80.00", "8.00", "", "US", "c4", old),
        sent("bob", "sale", "20.00", "2.00", "", "US", "c4", now),
        sent("bob", "recurring", "25.00", "1.25", "", "", "c3", at),
        sent("alice", "refund", "10.00", "-1.00", "", "", "c1", at),
    ]
}

/// GETs a report with `key` until `ready` holds for its rows (a minute at most).
async fn wait_for(
    url: &str,
    key: &str,
    report: &str,
    query: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(url, key, report, query).await;
        let rows = v["rows"].as_array().unwrap().clone();
        if ready(&rows) || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn get(url: &str, key: &str, report: &str, query: &str) -> Value {
    let auth = format!("Bearer {key}");
    let path = format!("{url}/api/v1/analytics/{report}?{}{query}", window());
    let r = send(Method::GET, &path, &[("authorization", &auth)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json()
}

/// A hundred days back to a day ahead: every row the test sent.
fn window() -> String {
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let now = Utc::now();
    format!(
        "from={}&to={}&",
        day(now - Span::days(100)),
        day(now + Span::days(1))
    )
}

/// The figures the test expects of `partner` (`None`: the program).
struct Expected<'a> {
    sent: &'a [Sent],
    partner: Option<&'a str>,
}

impl Expected<'_> {
    fn rows(&self) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(|s| self.partner.is_none_or(|p| p == s.partner))
    }

    fn count(&self, kind: &str) -> u64 {
        self.rows().filter(|s| s.kind == kind).count() as u64
    }

    fn revenue(&self) -> Decimal {
        self.rows()
            .filter(|s| matches!(s.kind, "sale" | "recurring"))
            .map(|s| s.amount)
            .sum()
    }

    /// Commission pending and approved: the old sale's hold (30 days) has passed.
    fn commission(&self, old: bool) -> Decimal {
        let now = Utc::now() - Span::days(30);
        self.rows()
            .filter(|s| (s.occurred_at < now) == old)
            .map(|s| s.commission)
            .sum()
    }

    /// (clicks, unique, bot) by construction of `send_everything`.
    fn clicks(&self) -> (u64, u64, u64) {
        match self.partner {
            None => (7, 5, 1),
            Some("alice") => (5, 3, 1),
            Some(_) => (2, 2, 0),
        }
    }
}

fn money(d: Decimal) -> String {
    let mut d = d;
    d.rescale(2);
    d.to_string()
}

fn ratio(n: Decimal, d: u64) -> Value {
    let mut r = (n / Decimal::from(d)).round_dp(4);
    r.rescale(4);
    json!(r.to_string())
}

fn overview_of(e: &Expected) -> Value {
    let (clicks, unique, bots) = e.clicks();
    let (pending, approved) = (e.commission(false), e.commission(true));
    json!({
        "clicks": clicks, "unique_clicks": unique, "bot_clicks": bots,
        "leads": e.count("lead"), "signups": e.count("signup"), "sales": e.count("sale"),
        "recurring": e.count("recurring"), "revenue": money(e.revenue()),
        "commission": money(pending + approved),
        "commission_pending": money(pending), "commission_held": "0.00",
        "commission_approved": money(approved), "commission_rejected": "0.00",
        "commission_reversed": "0.00", "commission_paid": "0.00",
        "conversion_rate": ratio(Decimal::from(e.count("sale")), unique),
        "epc": ratio(pending + approved, unique),
    })
}

/// The funnel grouped by `key` of each conversion (clicks by construction).
fn funnel_of(e: &Expected, group: &str) -> Vec<Value> {
    let mut groups: std::collections::BTreeMap<String, [Decimal; 6]> = Default::default();
    let clicks: &[(&str, &str, &str, u64, u64)] = &[
        // (partner, link, sub id, clicks, unique)
        ("alice", "al-spring", "s1", 5, 3),
        ("bob", "bo-fall", "", 2, 2),
    ];
    for (partner, link, sub, n, u) in clicks {
        if e.partner.is_some_and(|p| p != *partner) {
            continue;
        }
        let k = match group {
            "link" => link.to_string(),
            "sub_id" => sub.to_string(),
            _ => String::new(),
        };
        let g = groups.entry(k).or_default();
        g[0] += Decimal::from(*n);
        g[1] += Decimal::from(*u);
    }
    for s in e.rows().filter(|s| s.kind != "refund") {
        let k = match group {
            "link" => s.link.to_string(),
            "sub_id" if s.link == "al-spring" => "s1".to_string(),
            "sub_id" => String::new(),
            _ => s.country.to_string(),
        };
        let g = groups.entry(k).or_default();
        match s.kind {
            "lead" => g[2] += Decimal::ONE,
            "signup" => g[3] += Decimal::ONE,
            "sale" => g[4] += Decimal::ONE,
            _ => {}
        }
        if matches!(s.kind, "sale" | "recurring") {
            g[5] += s.amount;
        }
    }
    let column = if group == "link" { "link_code" } else { group };
    groups
        .into_iter()
        .map(|(k, g)| {
            let n = |x: Decimal| x.to_string().parse::<u64>().unwrap();
            let rate = if n(g[1]) == 0 {
                Value::Null
            } else {
                ratio(g[4], n(g[1]))
            };
            json!({column: k, "clicks": n(g[0]), "unique_clicks": n(g[1]), "leads": n(g[2]),
                   "signups": n(g[3]), "sales": n(g[4]), "revenue": money(g[5]),
                   "conversion_rate": rate})
        })
        .collect()
}

fn month(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap()
}

/// Cohorts by the month of each customer's first sale, computed from the record.
fn cohorts_of(e: &Expected) -> Vec<Value> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut first: BTreeMap<&str, NaiveDate> = BTreeMap::new();
    for s in e
        .rows()
        .filter(|s| s.kind == "sale" && !s.customer.is_empty())
    {
        let m = first.entry(s.customer).or_insert(month(s.occurred_at));
        *m = (*m).min(month(s.occurred_at));
    }
    type Cell = (BTreeSet<&'static str>, Decimal, Decimal);
    let mut cells: BTreeMap<(NaiveDate, i32), Cell> = BTreeMap::new();
    for s in e.rows().filter(|s| first.contains_key(s.customer)) {
        let c = first[s.customer];
        let m = month(s.occurred_at);
        let since = (m.year() - c.year()) * 12 + m.month() as i32 - c.month() as i32;
        let cell = cells.entry((c, since)).or_default();
        if matches!(s.kind, "sale" | "recurring") {
            cell.0.insert(s.customer);
            cell.1 += s.amount;
        }
        cell.2 += s.commission;
    }
    let mut so_far: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
    cells
        .into_iter()
        .map(|((c, since), (customers, revenue, commission))| {
            let size = first.values().filter(|m| **m == c).count() as u64;
            let total = so_far.entry(c).or_default();
            *total += revenue;
            json!({"cohort": c.format("%Y-%m").to_string(), "months_since": since,
                   "cohort_customers": size, "customers": customers.len(),
                   "revenue": money(revenue), "commission": money(commission),
                   "ltv": money((*total / Decimal::from(size)).round_dp(2))})
        })
        .collect()
}

fn leaderboard_of(sent: &[Sent], rank_by: &str, only: Option<&str>) -> Vec<Value> {
    let mut rows: Vec<(Decimal, &str, Value)> = ["alice", "bob"]
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == *p))
        .map(|p| {
            let e = Expected {
                sent,
                partner: Some(p),
            };
            let (clicks, unique, _) = e.clicks();
            let commission = e.commission(false) + e.commission(true);
            let conversions =
                e.count("lead") + e.count("signup") + e.count("sale") + e.count("recurring");
            let rank = match rank_by {
                "commission" => commission,
                "conversions" => Decimal::from(conversions),
                _ => e.revenue(),
            };
            let row = json!({"partner_id": p, "clicks": clicks, "unique_clicks": unique,
                             "conversions": conversions, "sales": e.count("sale"),
                             "revenue": money(e.revenue()), "commission": money(commission),
                             "epc": ratio(commission, unique)});
            (rank, p, row)
        })
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    rows.into_iter()
        .enumerate()
        .map(|(i, (_, _, mut row))| {
            row["rank"] = json!(i + 1);
            row
        })
        .collect()
}

/// Every report for the program key and each partner key, against the record.
async fn check_reports(url: &str, keys: &(String, String, String), sent: &[Sent]) {
    let scopes = [
        (&keys.0, None),
        (&keys.1, Some("alice")),
        (&keys.2, Some("bob")),
    ];
    for (key, partner) in scopes {
        let e = Expected { sent, partner };
        let want = overview_of(&e);
        let rows = wait_for(url, key, "overview", "", |rows| rows[0] == want).await;
        assert_eq!(rows, vec![want], "overview of {partner:?}");
        for group in ["link", "sub_id", "country"] {
            let v = get(url, key, "funnel", &format!("group_by={group}")).await;
            assert_eq!(
                v["rows"].as_array().unwrap(),
                &funnel_of(&e, group),
                "funnel by {group} of {partner:?}"
            );
        }
        for rank_by in ["revenue", "commission", "conversions"] {
            let v = get(url, key, "leaderboard", &format!("rank_by={rank_by}")).await;
            assert_eq!(
                v["rows"].as_array().unwrap(),
                &leaderboard_of(sent, rank_by, partner),
                "leaderboard by {rank_by} of {partner:?}"
            );
        }
        let v = get(url, key, "cohorts", "").await;
        assert_eq!(
            v["rows"].as_array().unwrap(),
            &cohorts_of(&e),
            "cohorts of {partner:?}"
        );
        check_timeseries(url, key, &e).await;
    }
}

/// Monthly buckets: every month of the window, the old sale in its own.
async fn check_timeseries(url: &str, key: &str, e: &Expected<'_>) {
    let v = get(url, key, "timeseries", "interval=month").await;
    let rows = v["rows"].as_array().unwrap();
    let now = Utc::now();
    let first = month(now - Span::days(100));
    let last = month(now + Span::days(1));
    let months = (last.year() - first.year()) * 12 + last.month() as i32 - first.month() as i32 + 1;
    assert_eq!(rows.len(), months as usize, "{rows:?}");
    for row in rows {
        let period = row["period"].as_str().unwrap();
        let in_bucket = |s: &&Sent| {
            month(s.occurred_at)
                .format("%Y-%m-01T00:00:00Z")
                .to_string()
                == period
        };
        let sales = e
            .rows()
            .filter(in_bucket)
            .filter(|s| s.kind == "sale")
            .count();
        let revenue: Decimal = e
            .rows()
            .filter(in_bucket)
            .filter(|s| matches!(s.kind, "sale" | "recurring"))
            .map(|s| s.amount)
            .sum();
        let commission: Decimal = e.rows().filter(in_bucket).map(|s| s.commission).sum();
        assert_eq!(
            (
                row["sales"].clone(),
                row["revenue"].clone(),
                row["commission"].clone()
            ),
            (
                json!(sales),
                json!(money(revenue)),
                json!(money(commission))
            ),
            "{period}"
        );
    }
}

/// Refusals of §7: each names its parameter; a partner key cannot read another partner.
async fn check_refusals(url: &str, keys: &(String, String, String)) {
    for (report, query, field) in [
        ("revenue", "", "report"),
        ("funnel", "group_by=visitor", "group_by"),
        ("timeseries", "interval=minute", "interval"),
        (
            "timeseries",
            "interval=hour&from=2026-01-01&to=2026-12-01",
            "interval",
        ),
        ("overview", "from=2024-01-01&to=2026-01-01", "to"),
        ("overview", "limit=10001", "limit"),
        ("overview", "program_id=shop&sql=1", "sql"),
    ] {
        let auth = format!("Bearer {}", keys.0);
        let path = format!("{url}/api/v1/analytics/{report}?{query}");
        let r = send(Method::GET, &path, &[("authorization", &auth)], "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], field, "{path}");
    }
    let auth = format!("Bearer {}", keys.1);
    let path = format!("{url}/api/v1/analytics/overview?partner_id=bob");
    let r = send(Method::GET, &path, &[("authorization", &auth)], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
}

/// The overview as CSV: a header, then the row.
async fn check_csv(url: &str, key: &str, sent: &[Sent]) {
    let auth = format!("Bearer {key}");
    let path = format!("{url}/api/v1/analytics/overview?{}", window());
    let r = send(
        Method::GET,
        &path,
        &[("authorization", &auth), ("accept", "text/csv")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let want = overview_of(&Expected {
        sent,
        partner: None,
    });
    for (h, cell) in header.iter().zip(row) {
        let expected = match &want[*h] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(cell, expected, "{h}");
    }
}

async fn scenario(url: &str) {
    let keys = setup(url).await;
    let sent = send_everything(url, &keys.0).await;
    check_reports(url, &keys, &sent).await;
    check_refusals(url, &keys).await;
    check_csv(url, &keys.0, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_clickhouse_equal_the_test_s_own_sums() {
    let (_, edge, pipeline, url) = live().await;
    scenario(&url).await;
    pipeline.stop().await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_the_embedded_files_equal_the_test_s_own_sums() {
    let dir = std::env::temp_dir().join(format!("touchline-analytics-{}", uuid::Uuid::new_v4()));
    let mut config = embedded_config(&dir);
    config.admin.token = ADMIN_TOKEN.into();
    config.pipeline.late_grace_secs = 2;
    config.pipeline.flush_interval_ms = 200;
    let (trigger, shutdown) = touchline::shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(touchline::app::run_serve(config, shutdown, Some(tx)));
    let addrs = rx.await.unwrap();
    scenario(&format!("http://{}", addrs.edge)).await;
    trigger.fire();
    serve.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
