//! The demo's program, partners and visitors: what is seeded through the admin API and
//! the traffic generated against the edge.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::Http;
use super::{DemoOptions, HOLD_DAYS, PROGRAM, SECRET};
use touchline::rng::Rng;

pub(super) const BROWSERS: &[&str] = &[
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

pub(super) const PARTNERS: &[DemoPartner] = &[
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

pub(super) async fn seed(http: &Http) -> anyhow::Result<()> {
    http.admin(
        Method::PUT,
        &format!("/api/v1/programs/{PROGRAM}"),
        json!({
            "name": "Demo shop partners", "currency": "USD", "secret": SECRET,
            "fallback_url": "https://shop.example/", "lookback_days": 30,
            // Stripe posts the shop's checkouts and invoices here (SPEC §11.1).
            "stripe_webhook_secret": super::stripe::STRIPE_SECRET,
            "attribution": {"model": "position_based", "first": "0.4", "last": "0.4"},
            "click_dedup_window_secs": 3600, "max_touches": 32,
            "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
            "commission": plan(),
            // A week's hold; the largest sales wait for review; payouts from 25.00.
            "hold_days": HOLD_DAYS, "min_payout": "25",
            "fraud": {"review_above": "250"},
            // Monthly tier moves, up only (SPEC §10.2).
            "tier_rules": {"period": "month", "tiers": [
                {"tier": "silver", "min": {"conversions": 5}},
                {"tier": "gold", "min": {"conversions": 20, "revenue": "2000"}},
                {"tier": "platinum", "min": {"revenue": "20000"}}]}
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
    // cat's newsletter readers type her code at checkout (SPEC §10.3).
    http.admin(
        Method::PUT,
        &format!("/api/v1/programs/{PROGRAM}/promo_codes/{PROMO_CODE}"),
        json!({"partner_id": "cat"}),
    )
    .await?;
    Ok(())
}

/// The promo code some shoppers type (in any case): it credits cat over any clicks.
pub(super) const PROMO_CODE: &str = "CAT20";

/// The example plan with reward rules and a cap (SPEC §10.1): shoppers from Germany or
/// France pay 30 % on sales, large baskets 28 %, and no partner earns more than 4000.00
/// of direct commission a day.
fn plan() -> serde_json::Value {
    let mut plan = touchline::engine::commission::example_plan();
    plan["rules"] = json!([
        {"name": "eu-shoppers", "kinds": ["sale"], "rate": "0.30",
         "when": {"field": "country", "op": "in", "value": ["DE", "FR"]}},
        {"name": "big-basket", "kinds": ["sale"], "rate": "0.28",
         "when": {"all": [{"field": "amount", "op": "gte", "value": "200"},
                          {"field": "partner.tier", "op": "ne", "value": "platinum"}]}}]);
    plan["caps"] = json!([{"period": "day", "max": "4000.00"}]);
    plan
}

pub(super) fn links() -> Vec<&'static str> {
    PARTNERS
        .iter()
        .flat_map(|(_, _, _, l)| l.iter().map(|(code, _)| *code))
        .collect()
}

/// One visitor: a few clicks (sometimes repeated), then maybe a conversion.
pub(super) async fn visit(
    http: Arc<Http>,
    visitor: usize,
    seed: u64,
) -> anyhow::Result<Vec<Value>> {
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
            "occurred_at": at, "click_id": last_click, "customer_id": format!("cust-{visitor}"),
            "country": rng.pick(&["US", "DE", "GB", "FR", "US", "CA"]),
            "promo_code": rng.chance(12).then(|| PROMO_CODE.to_lowercase())
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

pub(super) fn progress(done: u64, total: u64, started: Instant) {
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

/// Every visitor's visit, `concurrency` at a time, each posting its own conversions;
/// the sales made, for the customers who come back. The bar counts what the edge
/// answered after the `seeded` requests.
pub(super) async fn visitors(
    http: &Arc<Http>,
    opts: &DemoOptions,
    seeded: u64,
) -> anyhow::Result<Vec<Value>> {
    // Roughly 3.3 requests per visitor.
    let expected = (opts.visitors as u64 * 33) / 10 + opts.visitors as u64 / 3;
    let started = Instant::now();
    let ticker = {
        let http = Arc::clone(http);
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
        let http = Arc::clone(http);
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
        sales.extend(done??.into_iter().filter(|c| c["kind"] == "sale"));
    }
    ticker.abort();
    Ok(sales)
}

/// Customers come back: recurring payments, orders imported from last month's backlog,
/// one refund and one retried order.
pub(super) fn returning(sales: &[Value], seed: u64) -> Vec<Value> {
    let mut sales = sales.to_vec();
    sales.sort_by(|a, b| a["order_id"].as_str().cmp(&b["order_id"].as_str()));
    let mut rng = Rng::new(seed);
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut later = Vec::new();
    for sale in &sales {
        if rng.chance(30) {
            later.push(json!({"program_id": PROGRAM, "order_id": format!("SUB-{}", sale["order_id"].as_str().unwrap_or("")),
                "kind": "recurring", "amount": "19.99", "currency": "USD", "occurred_at": at, "customer_id": sale["customer_id"]}));
        }
    }
    // Orders from last month's backlog, past their hold: approved at once, and paid.
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
    later
}
