//! `touchline loadgen`: an open-loop load generator for any edge. Requests leave on a
//! fixed schedule whether or not earlier ones have returned, and each latency is taken
//! from the request's scheduled start, so a stalling server cannot hide its queueing
//! (no coordinated omission). Clicks, and optionally signed conversions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::json;

use touchline::rng::Rng;

/// What to send, how fast, for how long.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: String,
    pub rate: u64,
    pub duration: Duration,
    pub code: String,
    pub conversion_percent: u64,
    pub program: String,
    pub secret: String,
    pub max_in_flight: usize,
    /// Create the program, partner and link first, with this admin token.
    pub setup_token: Option<String>,
    pub seed: u64,
}

/// What a run achieved.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub duration_secs: f64,
    pub requested_rate: u64,
    pub achieved_rate: f64,
    pub sent: u64,
    pub clicks: u64,
    pub conversions: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// Requests not sent because `max_in_flight` were outstanding.
    pub skipped: u64,
    pub latency_ms: Percentiles,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn call(client: &Client, req: Request<Full<Bytes>>) -> anyhow::Result<StatusCode> {
    let resp = client.request(req).await?;
    let status = resp.status();
    // Read the body so that the connection goes back to the pool.
    resp.into_body().collect().await?;
    Ok(status)
}

/// Creates the program, partner and link the run uses (idempotent).
async fn setup(client: &Client, o: &LoadOptions, token: &str) -> anyhow::Result<()> {
    let admin = |method: Method, path: String, body: serde_json::Value| {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", o.target))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
    };
    let program = json!({"name": "Load generator", "currency": "USD", "secret": o.secret,
        "fallback_url": "https://shop.example/", "commission": {"tiers": {"standard": "0.10"}, "default_tier": "standard"}});
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/api/v1/programs/{}", o.program),
            program,
        ),
        (
            Method::PUT,
            "/api/v1/partners/loadgen-partner".into(),
            json!({"program_id": o.program}),
        ),
    ] {
        let status = call(client, admin(method, path.clone(), body)?).await?;
        if !status.is_success() {
            bail!("setup {path}: {status}");
        }
    }
    let link = json!({"program_id": o.program, "partner_id": "loadgen-partner", "code": o.code,
        "destination": "https://shop.example/landing"});
    let status = call(client, admin(Method::POST, "/api/v1/links".into(), link)?).await?;
    if !status.is_success() && status != StatusCode::CONFLICT {
        bail!("setup link: {status}");
    }
    Ok(())
}

/// Runs the load and reports.
// Long on purpose: the load's script (warm up, open-loop schedule, drain, report) in
// the order it runs.
pub async fn run(o: LoadOptions) -> anyhow::Result<LoadReport> {
    if o.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(o.max_in_flight)
            .build_http();
    if let Some(token) = &o.setup_token {
        setup(&client, &o, token)
            .await
            .context("setup through the admin API")?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Result<u16, ()>, bool)>();
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut rng = Rng::new(o.seed);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let total = (o.duration.as_secs_f64() * o.rate as f64) as u64;
    let mut skipped = 0;
    let collector = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        let (mut errors, mut clicks, mut conversions) = (0u64, 0u64, 0u64);
        while let Some((micros, status, conversion)) = rx.recv().await {
            let _ = hist.record(micros.max(1));
            match status {
                Ok(s) => *statuses.entry(s).or_default() += 1,
                Err(()) => errors += 1,
            }
            if conversion {
                conversions += 1;
            } else {
                clicks += 1;
            }
        }
        (hist, statuses, errors, clicks, conversions)
    });
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    ];
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if scheduled > now {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        if in_flight.load(Ordering::Relaxed) >= o.max_in_flight as u64 {
            skipped += 1;
            continue;
        }
        let conversion = rng.below(100) < o.conversion_percent;
        let req = if conversion {
            let body = json!({"program_id": o.program, "order_id": format!("lg-{}-{i}", o.seed), "kind": "sale",
                "amount": format!("{}.{:02}", 10 + rng.below(200), rng.below(100)), "currency": "USD",
                "referral_code": o.code})
            .to_string();
            let sig = touchline::signature::sign(
                &o.secret,
                chrono::Utc::now().timestamp(),
                body.as_bytes(),
            );
            Request::post(format!("{}/api/v1/conversions", o.target))
                .header("x-touchline-signature", sig)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?
        } else {
            Request::get(format!("{}/r/{}", o.target, o.code))
                .header("user-agent", *rng.pick(&agents))
                .header(
                    "x-forwarded-for",
                    format!("203.0.113.{}", rng.below(250) + 1),
                )
                .body(Full::new(Bytes::new()))?
        };
        let client = client.clone();
        let tx = tx.clone();
        let in_flight = Arc::clone(&in_flight);
        in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let status = call(&client, req).await.map(|s| s.as_u16()).map_err(|_| ());
            let micros = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = tx.send((micros, status, conversion));
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(tx);
    let (hist, statuses, errors, clicks, conversions) = collector.await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sent = clicks + conversions;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(LoadReport {
        target: o.target,
        duration_secs: elapsed,
        requested_rate: o.rate,
        achieved_rate: sent as f64 / elapsed,
        sent,
        clicks,
        conversions,
        statuses,
        errors,
        skipped,
        latency_ms: Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: hist.max() as f64 / 1000.0,
        },
    })
}

impl LoadReport {
    /// A human-readable report.
    pub fn text(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let l = &self.latency_ms;
        format!(
            "target          {}\nduration        {:.2} s\nrequested rate  {}/s\nachieved rate   {:.0}/s ({} clicks, {} conversions)\nresponses       {}\nerrors          {}   skipped (max in flight reached): {}\nlatency         p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
            self.target,
            self.duration_secs,
            self.requested_rate,
            self.achieved_rate,
            self.clicks,
            self.conversions,
            statuses.join(", "),
            self.errors,
            self.skipped,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        )
    }
}
