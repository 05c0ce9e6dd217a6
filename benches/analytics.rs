//! The analytics API's reports over a large program (SPEC §8, §9.2): 10 M clicks and
//! 1 M conversions over 120 days in ClickHouse, each report timed for a 90-day span,
//! p50 and p99 of repeated runs, through the same source the edge answers from.
//!
//! Needs ClickHouse (`scripts/stack.sh up`). Loads database `bench_analytics` once,
//! server-side (`INSERT … SELECT FROM numbers()`), and keeps it for later runs;
//! `BENCH_RELOAD=1` loads it again.
//!
//! `cargo bench --bench analytics -- [runs]` (default 30 runs per report).

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use touchline::analytics::clickhouse::ClickHouseAnalytics;
use touchline::analytics::report;
use touchline::analytics::{Params, Scope};
use touchline::config::{ClickHouseConfig, Config};

const CLICKS: u64 = 10_000_000;
const CONVERSIONS: u64 = 1_000_000;
const DAYS: u64 = 120;
const PARTNERS: u64 = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench targets in test mode: this one loads
    // millions of rows, so it only runs under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("analytics bench: run with `cargo bench --bench analytics`");
        return;
    }
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(runs));
}

async fn exec(cfg: &ClickHouseConfig, sql: &str) {
    touchline::sink::clickhouse::client(cfg)
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

async fn count(cfg: &ClickHouseConfig, table: &str) -> u64 {
    touchline::sink::clickhouse::client(cfg)
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one()
        .await
        .unwrap_or(0)
}

/// Clicks over the last 120 days for 1,000 partners (a tenth of them bots or repeats);
/// conversions on a tenth of the clicks (sales, some recurring payments and leads,
/// 300,000 customers), one ledger row each with its creation step, a fifth approved.
async fn load(cfg: &ClickHouseConfig) {
    let now = Utc::now().timestamp() as u64;
    let span = DAYS * 86_400;
    // Table by table, so that a load cut short goes on where it stopped.
    if count(cfg, "clicks").await == 0 {
        exec(cfg, &format!(
        "INSERT INTO clicks (click_id, ts, ts_ms, program_id, partner_id, link_code, campaign, \
         visitor_id, ip_hash, user_agent, referer, utm_source, utm_medium, utm_campaign, utm_term, \
         utm_content, is_bot, status, is_unique, sub_ids) \
         SELECT generateUUIDv4(), toDateTime({now} - (number * 7919) % {span}), 0, 'bench', \
         concat('p', toString(number % {PARTNERS})), concat('l', toString(number % 3000)), \
         concat('c', toString(number % 7)), generateUUIDv4(), 'hash', 'Mozilla/5.0', NULL, \
         concat('s', toString(number % 13)), NULL, NULL, NULL, NULL, toUInt8(number % 40 = 0), 'ok', \
         toUInt8(number % 10 != 0), if(number % 3 = 0, [concat('sub', toString(number % 5))], emptyArrayString()) \
         FROM numbers({CLICKS})"
        )).await;
    }
    if count(cfg, "attributions").await == 0 {
        exec(cfg, &format!(
        "INSERT INTO attributions (conversion_id, program_id, partner_id, click_id, campaign, position, \
         touches, model, weight, credited_amount, kind, occurred_at, occurred_at_ms, source, \
         customer_id, country) \
         SELECT generateUUIDv4(), program_id, partner_id, click_id, ifNull(campaign, ''), 1, 1, \
         'last_touch', toDecimal64(1, 12), toDecimal64(10 + cityHash64(toString(click_id)) % 200, 4), \
         multiIf(cityHash64(toString(click_id)) % 20 = 0, 'lead', cityHash64(toString(click_id)) % 20 = 1, 'recurring', 'sale'), \
         ts + 3600, 0, 'click', concat('cust', toString(cityHash64(toString(click_id)) % 300000)), \
         arrayElement(['US', 'DE', 'FR', 'GB'], 1 + cityHash64(toString(click_id)) % 4) \
         FROM clicks WHERE program_id = 'bench' AND is_unique = 1 LIMIT {CONVERSIONS}"
        )).await;
    }
    if count(cfg, "commissions").await == 0 {
        exec(cfg,
        "INSERT INTO commissions (commission_id, conversion_id, program_id, partner_id, level, kind, \
         base_amount, rate, amount, currency, status, created_at, created_at_ms, occurred_at, \
         occurred_at_ms, reason, customer_id) \
         SELECT generateUUIDv4(), conversion_id, program_id, partner_id, 0, 'direct', credited_amount, \
         toDecimal64(0.1, 12), toDecimal64(credited_amount / 10, 4), 'USD', 'pending', occurred_at, 0, \
         occurred_at, 0, '', customer_id FROM attributions WHERE program_id = 'bench'",
        ).await;
    }
    if count(cfg, "commission_status").await == 0 {
        exec(cfg,
        "INSERT INTO commission_status (event_id, commission_id, conversion_id, program_id, partner_id, \
         kind, amount, currency, status, step, reason, actor, at, at_ms, payout_id) \
         SELECT generateUUIDv4(), commission_id, conversion_id, program_id, partner_id, kind, amount, \
         currency, 'pending', 0, '', 'pipeline', created_at, 0, '' FROM commissions \
         WHERE program_id = 'bench' \
         UNION ALL SELECT generateUUIDv4(), commission_id, conversion_id, program_id, partner_id, kind, \
         amount, currency, 'approved', 1, 'hold period over', 'pipeline', created_at + 86400 * 30, 0, '' \
         FROM commissions WHERE program_id = 'bench' AND cityHash64(toString(commission_id)) % 5 = 0",
        ).await;
    }
}

fn config() -> Config {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
    let vars = vec![(
        "TOUCHLINE__CLICKHOUSE__DATABASE".to_string(),
        "bench_analytics".to_string(),
    )];
    Config::load(Some(&local), vars).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(runs: usize) {
    let config = config();
    let ch = &config.clickhouse;
    if std::env::var("BENCH_RELOAD").is_ok() {
        exec(ch, "DROP DATABASE IF EXISTS bench_analytics").await;
    }
    touchline::sink::clickhouse::migrate(ch)
        .await
        .expect("clickhouse answers");
    let started = Instant::now();
    load(ch).await;
    println!("loaded in {:.1}s", started.elapsed().as_secs_f64());
    for table in ["clicks", "attributions", "commissions", "commission_status"] {
        println!("{table}: {} rows", count(ch, table).await);
    }
    let source = ClickHouseAnalytics::new(ch);
    let program = Scope {
        program_id: "bench".into(),
        partner_id: None,
    };
    let partner = Scope {
        partner_id: Some("p7".into()),
        ..program.clone()
    };
    let cases: [(&str, &str, &Scope); 9] = [
        ("overview", "", &program),
        ("overview", "", &partner),
        ("timeseries", "interval=day", &program),
        ("funnel", "group_by=partner", &program),
        ("funnel", "group_by=link", &program),
        ("funnel", "group_by=sub_id", &program),
        ("leaderboard", "rank_by=revenue", &program),
        ("cohorts", "", &program),
        ("cohorts", "", &partner),
    ];
    println!("| report | scope | p50 | p99 | max | rows |");
    println!("|---|---|---|---|---|---|");
    for (report, query, scope) in cases {
        let now = Utc::now();
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|q| !q.is_empty())
            .filter_map(|q| q.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let from = (now - chrono::Duration::days(90)).to_rfc3339();
        pairs.push(("from".into(), from));
        let params = Params::parse(report, &pairs, now).unwrap();
        let mut times = Vec::with_capacity(runs);
        let mut rows = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let table = report::run(&source, scope, &params, 2, 30)
                .await
                .unwrap_or_else(|_| panic!("{report} failed"));
            times.push(started.elapsed());
            rows = table.rows.len();
        }
        times.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let who = scope.partner_id.as_deref().map_or("program", |_| "partner");
        println!(
            "| {report} {query} | {who} | {} | {} | {} | {rows} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
}
