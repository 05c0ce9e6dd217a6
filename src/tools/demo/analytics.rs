//! The analytics API in the demo (SPEC §9.2): what the merchant's key and a partner's
//! key read of the same program, from the embedded files.

use hyper::Method;
use serde_json::Value;

use super::http::Http;
use super::{text, PROGRAM};

/// The rows of one report over the last 62 days (last month's replayed sales and
/// today's traffic).
async fn rows(http: &Http, key: &str, report: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let from = (chrono::Utc::now() - chrono::Duration::days(62)).format("%Y-%m-%d");
    let path = format!("/api/v1/analytics/{report}?from={from}&{query}");
    let (status, body) = http.keyed(key, Method::GET, &path, Value::Null).await?;
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body["rows"].as_array().cloned().unwrap_or_default())
}

/// Prints the merchant's overview, leaderboard and cohorts, then the partner's own
/// overview and what its leaderboard holds.
pub(super) async fn tour(
    http: &Http,
    merchant: &str,
    partner: &str,
    name: &str,
) -> anyhow::Result<()> {
    let o = rows(http, merchant, "overview", "").await?;
    let o = o.first().cloned().unwrap_or_default();
    println!();
    println!("analytics (GET /api/v1/analytics/…, last 62 days, program {PROGRAM}):");
    println!(
        "  overview: {} clicks ({} unique, {} bots), {} sales, {} recurring, revenue {} USD, \
         commission {} USD, conversion rate {}, EPC {} USD",
        o["clicks"],
        o["unique_clicks"],
        o["bot_clicks"],
        o["sales"],
        o["recurring"],
        text(&o["revenue"]),
        text(&o["commission"]),
        text(&o["conversion_rate"]),
        text(&o["epc"])
    );
    println!("  leaderboard by revenue:");
    for r in rows(http, merchant, "leaderboard", "limit=3").await? {
        println!(
            "    {}. {:<10} {:>4} sales {:>12} USD revenue {:>10} USD commission",
            r["rank"],
            text(&r["partner_id"]),
            r["sales"],
            text(&r["revenue"]),
            text(&r["commission"])
        );
    }
    println!("  cohorts (customers by the month of their first sale):");
    for r in rows(http, merchant, "cohorts", "").await? {
        println!(
            "    {} +{} months: {:>4} of {:>4} customers, revenue {:>10} USD, lifetime value {} USD",
            text(&r["cohort"]), r["months_since"], r["customers"], r["cohort_customers"],
            text(&r["revenue"]), text(&r["ltv"])
        );
    }
    let own = rows(http, partner, "overview", "").await?;
    let own = own.first().cloned().unwrap_or_default();
    let board = rows(http, partner, "leaderboard", "").await?;
    let names: Vec<String> = board.iter().map(|r| text(&r["partner_id"])).collect();
    println!(
        "  {name}'s own key: {} clicks, {} sales, revenue {} USD, commission {} USD; \
         its leaderboard holds only {}",
        own["clicks"],
        own["sales"],
        text(&own["revenue"]),
        text(&own["commission"]),
        names.join(", ")
    );
    Ok(())
}
