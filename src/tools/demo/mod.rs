//! `touchline demo`: the embedded default end to end. Seeds a demo program through the
//! admin API, sends generated traffic through the real HTTP edge (repeat visitors, bots,
//! duplicate clicks, multi-touch journeys, sales in two currencies, leads, signups,
//! recurring payments, a refund, a duplicate order, a subscription sold through Stripe),
//! lets the pipeline drain, then prints a per-partner summary computed from the
//! `JSONEachRow` files it wrote.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rust_decimal::Decimal;
use serde_json::Value;

mod analytics;
mod history;
mod http;
mod keys;
mod lifecycle;
mod stripe;
mod summary;
mod traffic;

use http::Http;
use touchline::config::Config;
use touchline::sink::file::partner_stats;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub visitors: usize,
    pub seed: u64,
    pub data_dir: PathBuf,
    pub concurrency: usize,
}

pub(super) const PROGRAM: &str = "demo-shop";
pub(super) const HOLD_DAYS: u32 = 7;
pub(super) const SECRET: &str = "demo-shop-signing-secret-0001";

/// The embedded default on ephemeral ports, writing under the demo's data directory.
pub(super) fn demo_config(opts: &DemoOptions) -> anyhow::Result<Config> {
    let mut config = Config::embedded();
    config.edge.listen = "127.0.0.1:0".parse()?;
    config.pipeline.admin_listen = "127.0.0.1:0".parse()?;
    // Visitors come from many addresses; the demo sends them as a proxy would.
    config.edge.trust_forwarded_for = true;
    config.sink.data_dir = opts.data_dir.clone();
    Ok(config)
}

/// Runs the demo; prints what it shows on stdout.
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
    traffic::seed(&http).await?;
    println!(
        "seeded program {PROGRAM}: {} partners in a parent chain, {} links, promo code {}",
        traffic::PARTNERS.len(),
        traffic::links().len(),
        traffic::PROMO_CODE
    );
    let replayed = history::replay_last_month(&*addrs.bus).await?;
    println!("replayed last month's recorded log: {replayed} sales, as the edge took them in then");

    let started = Instant::now();
    let seeded = http.done.load(Ordering::Relaxed);
    let sales = traffic::visitors(&http, &opts, seeded).await?;
    // Posted as signed batches, as a merchant's nightly job would.
    let later = traffic::returning(&sales, opts.seed);
    for chunk in later.chunks(touchline::edge::conversions::MAX_BATCH) {
        http.convert(Value::Array(chunk.to_vec())).await?;
    }
    let total = http.done.load(Ordering::Relaxed) - seeded;
    traffic::progress(total, total, started);
    eprintln!();
    let stripe_booked = stripe::stripe_story(&http).await?;
    println!(
        "sent {total} requests in {:.2}s through the edge; draining the pipeline…",
        started.elapsed().as_secs_f64()
    );

    trigger.fire();
    serve.await.context("embedded server")??;
    let stats = partner_stats(&opts.data_dir)?;
    summary::print_summary(&stats, &opts.data_dir)?;
    summary::print_rewards(&opts.data_dir)?;
    summary::print_tiers(&opts.data_dir)?;
    stripe::print_ledger(&opts.data_dir, &stripe_booked)?;
    lifecycle::lifecycle(&opts.data_dir).await?;
    keys::keys_tour(&opts).await?;
    Ok(())
}

/// A JSON answer's value as printed: a string's text, anything else as JSON.
pub(super) fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

pub(super) fn money(d: Decimal) -> String {
    touchline::money::at_minor_units(d, 2).to_string()
}
