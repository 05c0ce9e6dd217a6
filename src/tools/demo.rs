//! `touchline demo`: the embedded default end to end. Seeds a demo program through the
//! admin API, sends generated traffic through the real HTTP edge (repeat visitors, bots,
//! duplicate clicks, multi-touch journeys, sales in two currencies, leads, signups,
//! recurring payments, a refund, a duplicate order), lets the pipeline drain, then prints
//! a per-partner summary computed from the `JSONEachRow` files it wrote.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use touchline::config::Config;
use touchline::rng::Rng;
use touchline::sink::file::{partner_stats, PartnerDay};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub visitors: usize,
    pub seed: u64,
    pub data_dir: PathBuf,
    pub concurrency: usize,
}

const PROGRAM: &str = "demo-shop";
const HOLD_DAYS: u32 = 7;
const SECRET: &str = "demo-shop-signing-secret-0001";
const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];
const CRAWLERS: &[&str] = &[
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
];

/// A demo partner: id, tier, parent and links as (code, campaign).
type DemoPartner = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
);

const PARTNERS: &[DemoPartner] = &[
    (
        "network",
        "platinum",
        None,
        &[("network-home", "always-on")],
    ),
    (
        "agency",
        "gold",
        Some("network"),
        &[("agency-bf", "black-friday")],
    ),
    (
        "ana",
        "silver",
        Some("agency"),
        &[("ana-bf", "black-friday"), ("ana-news", "newsletter")],
    ),
    (
        "ben",
        "bronze",
        Some("agency"),
        &[("ben-video", "black-friday")],
    ),
    (
        "cat",
        "gold",
        None,
        &[("cat-blog", "newsletter"), ("cat-bf", "black-friday")],
    ),
    ("dan", "bronze", None, &[("dan-deals", "always-on")]),
];

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

struct Http {
    client: Client,
    base: String,
    admin_token: String,
    done: AtomicU64,
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    /// `name=value` of the Set-Cookie header, as a browser would send it back.
    cookie: Option<String>,
    body: Bytes,
}

impl Http {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await
            .context("edge request")?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let cookie = header("set-cookie").and_then(|c| c.split(';').next().map(str::to_string));
        let body = resp.into_body().collect().await?.to_bytes();
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(Reply {
            status,
            location,
            cookie,
            body,
        })
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> anyhow::Result<()> {
        let auth = format!("Bearer {}", self.admin_token);
        let r = self
            .send(
                method,
                path,
                &[
                    ("authorization", auth),
                    ("content-type", "application/json".into()),
                ],
                body.to_string().into_bytes(),
            )
            .await?;
        if !r.status.is_success() {
            bail!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }

    /// A call with `token` as bearer: the status and the JSON answer (null if none).
    async fn keyed(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
        ];
        let r = self.send(method, path, &headers, body).await?;
        Ok((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ))
    }

    async fn convert(&self, body: Value) -> anyhow::Result<()> {
        let raw = body.to_string();
        let sig =
            touchline::signature::sign(SECRET, chrono::Utc::now().timestamp(), raw.as_bytes());
        let r = self
            .send(
                Method::POST,
                "/api/v1/conversions",
                &[
                    ("x-touchline-signature", sig),
                    ("content-type", "application/json".into()),
                ],
                raw.into_bytes(),
            )
            .await?;
        if r.status != StatusCode::ACCEPTED {
            bail!(
                "conversion refused: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(())
    }
}

async fn seed(http: &Http) -> anyhow::Result<()> {
    http.admin(
        Method::PUT,
        &format!("/api/v1/programs/{PROGRAM}"),
        json!({
            "name": "Demo shop partners", "currency": "USD", "secret": SECRET,
            "fallback_url": "https://shop.example/", "lookback_days": 30,
            "attribution": {"model": "position_based", "first": "0.4", "last": "0.4"},
            "click_dedup_window_secs": 3600, "max_touches": 32,
            "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
            "commission": touchline::engine::commission::example_plan(),
            // A week's hold; the largest sales wait for review; payouts from 25.00.
            "hold_days": HOLD_DAYS, "min_payout": "25",
            "fraud": {"review_above": "250"}
        }),
    )
    .await?;
    for (id, tier, parent, links) in PARTNERS {
        http.admin(
            Method::PUT,
            &format!("/api/v1/partners/{id}"),
            json!({"program_id": PROGRAM, "tier": tier, "parent_id": parent, "name": id}),
        )
        .await?;
        for (code, campaign) in *links {
            http.admin(
                Method::POST,
                "/api/v1/links",
                json!({"program_id": PROGRAM, "partner_id": id, "code": code, "campaign": campaign,
                       "destination": "https://shop.example/deals?lang=en", "utm_source": id, "utm_medium": "affiliate"}),
            )
            .await?;
        }
    }
    Ok(())
}

fn links() -> Vec<&'static str> {
    PARTNERS
        .iter()
        .flat_map(|(_, _, _, l)| l.iter().map(|(code, _)| *code))
        .collect()
}

/// One visitor: a few clicks (sometimes repeated), then maybe a conversion.
async fn visit(http: Arc<Http>, visitor: usize, seed: u64) -> anyhow::Result<Vec<Value>> {
    let mut rng = Rng::new(seed ^ (visitor as u64).wrapping_mul(0x9E37_79B9));
    let ip = format!("198.51.{}.{}", (visitor / 250) % 250, visitor % 250 + 1);
    let links = links();
    if rng.chance(6) {
        // A crawler or a link preview: one hit, never a touchpoint.
        let ua = rng.pick(CRAWLERS).to_string();
        let method = if rng.chance(50) {
            Method::HEAD
        } else {
            Method::GET
        };
        http.send(
            method,
            &format!("/r/{}", rng.pick(&links)),
            &[("user-agent", ua), ("x-forwarded-for", ip)],
            Vec::new(),
        )
        .await?;
        return Ok(Vec::new());
    }
    let ua = rng.pick(BROWSERS).to_string();
    let mut cookie: Option<String> = None;
    let mut last_click: Option<String> = None;
    for _ in 0..(1 + rng.below(4)) {
        let code = *rng.pick(&links);
        let repeats = if rng.chance(15) { 2 } else { 1 };
        for _ in 0..repeats {
            let mut headers = vec![("user-agent", ua.clone()), ("x-forwarded-for", ip.clone())];
            if let Some(c) = &cookie {
                headers.push(("cookie", c.clone()));
            }
            let reply = http
                .send(
                    Method::GET,
                    &format!("/r/{code}?utm_campaign=demo"),
                    &headers,
                    Vec::new(),
                )
                .await?;
            if reply.status != StatusCode::FOUND {
                bail!("/r/{code} answered {}", reply.status);
            }
            last_click = reply.location.as_deref().and_then(click_of);
            // The browser keeps the visitor cookie, so the visit builds one journey.
            if cookie.is_none() {
                cookie = reply.cookie;
            }
        }
    }
    let mut conversions = Vec::new();
    let roll = rng.below(100);
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if roll < 30 {
        let euros = rng.chance(25);
        let cents = 1_000 + rng.below(29_000);
        conversions.push(json!({
            "program_id": PROGRAM, "order_id": format!("ORD-{visitor}"), "kind": "sale",
            "amount": format!("{}.{:02}", cents / 100, cents % 100), "currency": if euros { "EUR" } else { "USD" },
            "occurred_at": at, "click_id": last_click, "customer_id": format!("cust-{visitor}")
        }));
    } else if roll < 40 {
        conversions.push(
            json!({"program_id": PROGRAM, "order_id": format!("LEAD-{visitor}"), "kind": "lead",
            "occurred_at": at, "click_id": last_click}),
        );
    } else if roll < 46 {
        conversions.push(
            json!({"program_id": PROGRAM, "order_id": format!("SIGNUP-{visitor}"), "kind": "signup",
            "occurred_at": at, "referral_code": rng.pick(&links)}),
        );
    }
    Ok(conversions)
}

fn click_of(location: &str) -> Option<String> {
    let query = location.split_once('?')?.1;
    form_urlencoded::parse(query.split('#').next()?.as_bytes())
        .find(|(k, _)| k == "tl_click")
        .map(|(_, v)| v.into_owned())
}

fn progress(done: u64, total: u64, started: Instant) {
    let width: u64 = 30;
    let filled = (done.min(total) * width)
        .checked_div(total)
        .unwrap_or(width);
    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
    eprint!(
        "\r  [{}{}] {done}/{total} requests  {rate:.0}/s ",
        "#".repeat(filled as usize),
        "-".repeat((width as usize).saturating_sub(filled as usize))
    );
    let _ = std::io::stderr().flush();
}

/// Runs the demo; prints the summary on stdout.
/// The embedded default on ephemeral ports, writing under the demo's data directory.
fn demo_config(opts: &DemoOptions) -> anyhow::Result<Config> {
    let mut config = Config::embedded();
    config.edge.listen = "127.0.0.1:0".parse()?;
    config.pipeline.admin_listen = "127.0.0.1:0".parse()?;
    // Visitors come from many addresses; the demo sends them as a proxy would.
    config.edge.trust_forwarded_for = true;
    config.sink.data_dir = opts.data_dir.clone();
    Ok(config)
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let config = demo_config(&opts)?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
    for table in touchline::sink::TABLES
        .iter()
        .chain(["partner_stats_daily"].iter())
    {
        let _ = std::fs::remove_file(opts.data_dir.join(format!("{table}.jsonl")));
    }

    let (trigger, shutdown) = touchline::shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let admin_token = config.admin.token.clone();
    let serve = tokio::spawn(touchline::app::run_serve(config, shutdown, Some(tx)));
    let addrs = rx.await.context("the embedded server did not start")?;
    println!(
        "touchline demo: embedded edge on http://{} (pipeline admin on http://{})",
        addrs.edge, addrs.admin
    );

    let http = Arc::new(Http {
        client: touchline::http::client(),
        base: format!("http://{}", addrs.edge),
        admin_token,
        done: AtomicU64::new(0),
    });
    seed(&http).await?;
    println!(
        "seeded program {PROGRAM}: {} partners in a parent chain, {} links",
        PARTNERS.len(),
        links().len()
    );

    // Roughly 3.3 requests per visitor; the bar counts what the edge answered.
    let expected = (opts.visitors as u64 * 33) / 10 + opts.visitors as u64 / 3;
    let started = Instant::now();
    let seeded = http.done.load(Ordering::Relaxed);
    let ticker = {
        let http = Arc::clone(&http);
        tokio::spawn(async move {
            loop {
                progress(
                    http.done.load(Ordering::Relaxed) - seeded,
                    expected,
                    started,
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for v in 0..opts.visitors {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let http = Arc::clone(&http);
        let seed = opts.seed;
        tasks.spawn(async move {
            let conversions = visit(Arc::clone(&http), v, seed).await?;
            for c in &conversions {
                http.convert(c.clone()).await?;
            }
            drop(permit);
            anyhow::Ok(conversions)
        });
    }
    let mut sales = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for c in done?? {
            if c["kind"] == "sale" {
                sales.push(c);
            }
        }
    }
    // Customers come back: recurring payments, one refund and one retried order.
    sales.sort_by(|a, b| a["order_id"].as_str().cmp(&b["order_id"].as_str()));
    let mut rng = Rng::new(opts.seed);
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut later = Vec::new();
    for sale in &sales {
        if rng.chance(30) {
            later.push(json!({"program_id": PROGRAM, "order_id": format!("SUB-{}", sale["order_id"].as_str().unwrap_or("")),
                "kind": "recurring", "amount": "19.99", "currency": "USD", "occurred_at": at, "customer_id": sale["customer_id"]}));
        }
    }
    // Orders imported from last month's backlog, past their hold: approved at once, and
    // paid below.
    let backdated = (chrono::Utc::now() - chrono::Duration::days(20))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let codes = links();
    for n in 0..40 {
        later.push(json!({"program_id": PROGRAM, "order_id": format!("HIST-{n}"), "kind": "sale",
            "amount": format!("{}.00", 40 + rng.below(300)), "currency": "USD", "occurred_at": backdated,
            "referral_code": codes[n % codes.len()], "customer_id": format!("hist-{n}")}));
    }
    if let Some(first) = sales.first() {
        later.push(json!({"program_id": PROGRAM, "order_id": "RMA-1", "kind": "refund", "amount": "10.00",
            "currency": first["currency"], "occurred_at": at, "original_order_id": first["order_id"]}));
        // The merchant's retry of an order already reported: recorded as a duplicate.
        later.push(first.clone());
    }
    // Posted as one signed batch, as a merchant's nightly job would.
    for chunk in later.chunks(touchline::edge::conversions::MAX_BATCH) {
        http.convert(Value::Array(chunk.to_vec())).await?;
    }
    ticker.abort();
    let total = http.done.load(Ordering::Relaxed) - seeded;
    progress(total, total, started);
    eprintln!();
    println!(
        "sent {total} requests in {:.2}s through the edge; draining the pipeline…",
        started.elapsed().as_secs_f64()
    );

    trigger.fire();
    serve.await.context("embedded server")??;
    let stats = partner_stats(&opts.data_dir)?;
    print_summary(&stats, &opts.data_dir)?;
    lifecycle(&opts.data_dir).await?;
    keys_tour(&opts).await?;
    Ok(())
}

/// What the merchant and one partner see through keys of their own (SPEC §9), on a
/// second start of the embedded server over the same data files (the embedded
/// registry lives in memory, so the program is seeded again).
async fn keys_tour(opts: &DemoOptions) -> anyhow::Result<()> {
    let config = demo_config(opts)?;
    let (trigger, shutdown) = touchline::shutdown::channel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let admin_token = config.admin.token.clone();
    let serve = tokio::spawn(touchline::app::run_serve(config, shutdown, Some(tx)));
    let addrs = rx
        .await
        .context("the embedded server did not start again")?;
    let http = Http {
        client: touchline::http::client(),
        base: format!("http://{}", addrs.edge),
        admin_token: admin_token.clone(),
        done: AtomicU64::new(0),
    };
    seed(&http).await?;
    let (partner, other) = (PARTNERS[1].0, PARTNERS[2].0);
    let merchant = http
        .keyed(
            &admin_token,
            Method::POST,
            "/api/v1/keys",
            json!({"scope": "program", "program_id": PROGRAM, "name": "demo backoffice"}),
        )
        .await?;
    let merchant_key = merchant.1["key"].as_str().unwrap_or_default().to_string();
    let theirs = http
        .keyed(&merchant_key, Method::POST, "/api/v1/keys",
            json!({"scope": "partner", "program_id": PROGRAM, "partner_id": partner, "name": "partner dashboard"}))
        .await?;
    let partner_key = theirs.1["key"].as_str().unwrap_or_default().to_string();
    println!();
    println!("keys (the secrets are shown once, stored as SHA-256):");
    println!(
        "  merchant key {} (program {PROGRAM}, made by the operator)",
        merchant.1["id"].as_str().unwrap_or("")
    );
    println!(
        "  partner key  {} (partner {partner}, made with the merchant's key)",
        theirs.1["id"].as_str().unwrap_or("")
    );
    let (status, balance) = http
        .keyed(&partner_key, Method::GET, "/api/v1/me/balance", Value::Null)
        .await?;
    println!("what {partner} sees at GET /api/v1/me/balance ({status}):");
    for field in ["pending", "held", "approved", "paid", "carried_clawback"] {
        println!(
            "  {field:<18} {:>14} {}",
            balance[field].as_str().unwrap_or("?"),
            balance["currency"].as_str().unwrap_or("")
        );
    }
    let (status, payouts) = http
        .keyed(&partner_key, Method::GET, "/api/v1/me/payouts", Value::Null)
        .await?;
    println!("  payouts ({status}): {}", payouts["payouts"]);
    for (what, path) in [
        (
            "the program's whole ledger",
            "/api/v1/commissions?program_id=demo-shop".to_string(),
        ),
        (
            "another partner's balance",
            format!("/api/v1/me/balance?partner_id={other}"),
        ),
    ] {
        let (status, _) = http
            .keyed(&partner_key, Method::GET, &path, Value::Null)
            .await?;
        println!("  and {what}: {status}");
    }
    trigger.fire();
    serve.await.context("embedded server")??;
    Ok(())
}

/// The ledger's lifecycle after the run, and one payout batch over it, through the same
/// code the review and payout API runs.
async fn lifecycle(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use touchline::engine::Status;
    let file = Arc::new(touchline::sink::file::FileSink::open(dir)?);
    let (sink, view) = touchline::ledger::memory::over_files(file)?;
    let ledger = touchline::ledger::Ledger {
        view: view.clone(),
        sink,
        locks: Arc::new(touchline::registry::MemoryStore::new()),
        outbox: None,
    };
    let all = |view: Arc<touchline::ledger::MemoryLedger>| async move {
        touchline::ledger::LedgerView::entries(
            &*view,
            &touchline::ledger::Filter {
                program_id: PROGRAM.into(),
                limit: usize::MAX,
                ..Default::default()
            },
        )
        .await
    };
    let print = |entries: &[touchline::ledger::Entry]| {
        let mut by: BTreeMap<(&str, &str), (usize, Decimal)> = BTreeMap::new();
        for e in entries {
            let reason = if e.status == Status::Held {
                e.reason.as_str()
            } else {
                ""
            };
            let slot = by.entry((e.status.as_str(), reason)).or_default();
            slot.0 += 1;
            slot.1 += e.amount;
        }
        for ((status, reason), (rows, amount)) in by {
            let status = if reason.is_empty() {
                status.to_string()
            } else {
                format!("{status} ({reason})")
            };
            println!("  {status:<36} {rows:>6} rows {:>14} USD", money(amount));
        }
    };
    println!();
    println!(
        "commission lifecycle ({HOLD_DAYS}-day hold; the audit trail is commission_status.jsonl):"
    );
    print(&all(view.clone()).await?);
    // Payouts cut at whole seconds: pass the second the last rows were approved in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = chrono::Utc::now();
    let up_to = chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let payout = ledger
        .payout(PROGRAM, "USD", Decimal::new(25, 0), up_to, "admin", now)
        .await?;
    let paid: Decimal = payout.lines.iter().map(|l| l.amount).sum();
    println!();
    println!(
        "payout {} up to {}: {} partners, {} USD (balances under 25.00 roll over)",
        payout.payout_id,
        up_to.to_rfc3339(),
        payout.lines.len(),
        money(paid)
    );
    for l in &payout.lines {
        println!(
            "  {:<10} {:>6} rows {:>14} USD",
            l.partner_id,
            l.rows,
            money(l.amount)
        );
    }
    println!();
    println!("after the payout:");
    print(&all(view).await?);
    Ok(())
}

fn print_summary(stats: &[PartnerDay], dir: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let mut by_partner: BTreeMap<&str, PartnerDay> = BTreeMap::new();
    for d in stats {
        let p = by_partner.entry(&d.partner_id).or_default();
        p.clicks += d.clicks;
        p.unique_clicks += d.unique_clicks;
        p.bot_clicks += d.bot_clicks;
        p.conversions += d.conversions;
        p.revenue += d.revenue;
        p.commission += d.commission;
    }
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>6} {:>12} {:>14} {:>14}",
        "partner", "clicks", "unique", "bots", "conversions", "revenue USD", "commission USD"
    );
    let mut total = PartnerDay::default();
    for (partner, p) in &by_partner {
        println!(
            "{:<10} {:>8} {:>8} {:>6} {:>12} {:>14} {:>14}",
            partner,
            p.clicks,
            p.unique_clicks,
            p.bot_clicks,
            p.conversions,
            money(p.revenue),
            money(p.commission)
        );
        total.clicks += p.clicks;
        total.unique_clicks += p.unique_clicks;
        total.bot_clicks += p.bot_clicks;
        total.conversions += p.conversions;
        total.revenue += p.revenue;
        total.commission += p.commission;
    }
    println!(
        "{:<10} {:>8} {:>8} {:>6} {:>12} {:>14} {:>14}",
        "total",
        total.clicks,
        total.unique_clicks,
        total.bot_clicks,
        total.conversions,
        money(total.revenue),
        money(total.commission)
    );
    println!();
    println!("data files (ClickHouse JSONEachRow, one per table):");
    for table in touchline::sink::TABLES
        .iter()
        .chain(["partner_stats_daily"].iter())
    {
        let path = dir.join(format!("{table}.jsonl"));
        let rows = std::fs::read_to_string(&path)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        println!("  {:<45} {rows:>7} rows", path.display());
    }
    println!(
        "load one into ClickHouse: clickhouse-client -q \"INSERT INTO touchline.clicks FORMAT JSONEachRow\" < {}",
        dir.join("clicks.jsonl").display()
    );
    Ok(())
}

fn money(d: Decimal) -> String {
    let mut r = d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
    r.rescale(2);
    r.to_string()
}
