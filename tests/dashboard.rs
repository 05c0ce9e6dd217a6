//! The operator's dashboard (`GET /dashboard`, SPEC §9.2) in Debian's headless Chromium
//! on the real stack: a program key typed into the page shows the program's figures,
//! which this test computes from what it sent, to the cent; a partner key shows only its
//! own rows; a wrong key shows the API's error. The page's screenshot is written to
//! `target/tmp/dashboard.png`.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// 10 % of every sale: each sale below earns an exact cent amount.
fn program() -> Value {
    let mut p = program_json();
    // seed_program makes alice gold; bob has the default tier.
    p["commission"] = json!({"tiers": {"std": "0.10", "gold": "0.10"}, "default_tier": "std"});
    p
}

/// Program `acme` with alice (`al-dash`) and bob (`bo-dash`); a program key and bob's.
async fn setup(url: &str) -> (String, String) {
    seed_program(
        url,
        "acme",
        program(),
        ("alice", "al-dash", "https://acme.example/"),
    )
    .await;
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/bob"),
        json!({"program_id": "acme"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let link = json!({"program_id": "acme", "partner_id": "bob", "code": "bo-dash",
                      "destination": "https://acme.example/"});
    let r = admin(Method::POST, &format!("{url}/api/v1/links"), link).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let key = |body: Value| make_key(url, body);
    (
        key(json!({"scope": "program", "program_id": "acme", "name": "merchant"})).await,
        key(json!({"scope": "partner", "program_id": "acme", "partner_id": "bob", "name": "b"}))
            .await,
    )
}

/// What was sent, per partner: clicks, unique clicks, sales and their amounts.
struct Sent {
    partner: &'static str,
    clicks: u64,
    unique: u64,
    sales: Vec<Decimal>,
}

impl Sent {
    fn revenue(&self) -> Decimal {
        self.sales.iter().sum()
    }

    fn commission(&self) -> Decimal {
        self.sales
            .iter()
            .map(|a| (a * Decimal::new(10, 2)).round_dp(2))
            .sum()
    }
}

/// Alice: three clicks from two browsers and two sales; bob: one click and one sale.
async fn send_story(url: &str) -> Vec<Sent> {
    let a1 = click_through(url, "al-dash", "Mozilla/5.0 dash-1").await;
    let a2 = click_through(url, "al-dash", "Mozilla/5.0 dash-2").await;
    click_through(url, "al-dash", "Mozilla/5.0 dash-1").await;
    let b1 = click_through(url, "bo-dash", "Mozilla/5.0 dash-3").await;
    let sale = |order: &str, amount: &str, click: &str| {
        json!({"program_id": "acme", "order_id": order, "kind": "sale", "amount": amount,
               "currency": "USD", "click_id": click, "customer_id": format!("c-{order}")})
    };
    let body = json!([
        sale("D-1", "120.00", &a1),
        sale("D-2", "30.50", &a2),
        sale("D-3", "45.20", &b1)
    ]);
    let r = post_conversions(url, &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    vec![
        Sent {
            partner: "alice",
            clicks: 3,
            unique: 2,
            sales: vec![d("120.00"), d("30.50")],
        },
        Sent {
            partner: "bob",
            clicks: 1,
            unique: 1,
            sales: vec![d("45.20")],
        },
    ]
}

/// Waits until the analytics API counts `sales` sales for `key` (the pipeline's lag).
async fn wait_for_sales(url: &str, key: &str, sales: u64) {
    let auth = format!("Bearer {key}");
    for _ in 0..300 {
        let r = send(
            Method::GET,
            &format!("{url}/api/v1/analytics/overview"),
            &[("authorization", &auth)],
            "",
        )
        .await;
        if r.status == StatusCode::OK && r.json()["rows"][0]["sales"] == json!(sales) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the analytics API never counted {sales} sales");
}

/// Types `key` into the page, shows it, and waits for every panel (or the error).
async fn show(browser: &Browser, key: &str) -> Value {
    browser.click("#forget").await;
    browser.type_into("#key", key).await;
    browser.click("#load").await;
    browser
        .wait_for("return document.body.getAttribute('data-loaded');", 30)
        .await
}

/// The overview's tiles as `{field: text}`.
async fn tiles(browser: &Browser) -> Value {
    browser
        .run(
            "return Object.fromEntries([...document.querySelectorAll('#overview .tile')]
               .map(t => [t.dataset.field, t.querySelector('.value').textContent]));",
        )
        .await
}

/// The rows of table `id` as lists of cell texts, the heading left out.
async fn rows(browser: &Browser, id: &str) -> Value {
    let script = format!(
        "return [...document.querySelectorAll('#{id} tr')].slice(1)
           .map(r => [...r.querySelectorAll('td')].map(c => c.textContent));"
    );
    browser.run(&script).await
}

fn money(d: Decimal) -> String {
    format!("{:.2}", d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_key_its_own_figures() {
    let (_config, edge, pipeline, url) = live().await;
    let (merchant, bob_key) = setup(&url).await;
    let sent = send_story(&url).await;
    wait_for_sales(&url, &merchant, 3).await;

    let browser = Browser::start().await;
    browser.go(&format!("{url}/dashboard")).await;
    assert_eq!(show(&browser, &merchant).await, json!("true"));
    let t = tiles(&browser).await;
    let sum = |f: fn(&Sent) -> u64| sent.iter().map(f).sum::<u64>().to_string();
    assert_eq!(t["clicks"], json!(sum(|s| s.clicks)), "{t}");
    assert_eq!(t["unique_clicks"], json!(sum(|s| s.unique)), "{t}");
    assert_eq!(t["sales"], json!(sum(|s| s.sales.len() as u64)), "{t}");
    let revenue: Decimal = sent.iter().map(Sent::revenue).sum();
    let commission: Decimal = sent.iter().map(Sent::commission).sum();
    assert_eq!(t["revenue"], json!(money(revenue)), "{t}");
    assert_eq!(t["commission"], json!(money(commission)), "{t}");
    // Ranked by revenue: alice (150.50) over bob (45.20).
    let board = rows(&browser, "leaderboard").await;
    let ranked: Vec<(String, String)> = board
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[1].as_str().unwrap().into(), r[5].as_str().unwrap().into()))
        .collect();
    let expected: Vec<(String, String)> = sent
        .iter()
        .map(|s| (s.partner.to_string(), money(s.revenue())))
        .collect();
    assert_eq!(ranked, expected);
    // Today's bars carry the exact figures in their titles.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let tip = format!(
        "{today}: revenue {}, commission {}",
        money(revenue),
        money(commission)
    );
    let titles = browser
        .run("return [...document.querySelectorAll('#chart rect title')].map(t => t.textContent);")
        .await;
    assert!(titles.as_array().unwrap().contains(&json!(tip)), "{titles}");
    let funnel = rows(&browser, "funnel").await;
    assert_eq!(funnel[0][0], json!("alice"), "{funnel}");
    // Three customers, each with a first sale this month: one cohort, lifetime value
    // the revenue per customer.
    let cohorts = rows(&browser, "cohorts").await;
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let ltv = (revenue / Decimal::from(3)).round_dp(2);
    assert_eq!(
        cohorts,
        json!([[
            month,
            "0",
            "3",
            "3",
            money(revenue),
            money(commission),
            money(ltv)
        ]])
    );
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard.png"),
        browser.screenshot(1280, 1200).await,
    )
    .unwrap();

    // Bob's key: his figures only, in every panel.
    assert_eq!(show(&browser, &bob_key).await, json!("true"));
    let t = tiles(&browser).await;
    assert_eq!(t["clicks"], json!("1"), "{t}");
    assert_eq!(t["revenue"], json!(money(sent[1].revenue())), "{t}");
    assert_eq!(t["commission"], json!(money(sent[1].commission())), "{t}");
    let board = rows(&browser, "leaderboard").await;
    assert_eq!(board.as_array().unwrap().len(), 1, "{board}");
    assert_eq!(board[0][1], json!("bob"));
    let funnel = rows(&browser, "funnel").await;
    assert_eq!(funnel.as_array().unwrap().len(), 1, "{funnel}");
    let scope = browser
        .run("return document.getElementById('scope').textContent;")
        .await;
    assert_eq!(scope, json!("partner bob of acme, USD"));

    // A wrong key: the API's 401, no panel left on screen.
    assert_eq!(show(&browser, "tl_not_a_key").await, json!("error"));
    let status = browser
        .run("return document.getElementById('status').textContent;")
        .await;
    assert!(status.as_str().unwrap().starts_with("401"), "{status}");
    let hidden = browser
        .run("return document.getElementById('panels').hidden;")
        .await;
    assert_eq!(hidden, json!(true));
    browser.stop().await;
    pipeline.stop().await;
    edge.stop().await;
}
