//! The demo's tour of keys (SPEC §9): a merchant key, a partner key and what each
//! reaches.

use std::sync::atomic::AtomicU64;

use anyhow::Context;
use hyper::Method;
use serde_json::{json, Value};

use super::http::Http;
use super::traffic::{seed, PARTNERS};
use super::{demo_config, text, DemoOptions, PROGRAM};

/// What the merchant and one partner see through keys of their own (SPEC §9), on a
/// second start of the embedded server over the same data files (the embedded
/// registry lives in memory, so the program is seeded again).
pub(super) async fn keys_tour(opts: &DemoOptions) -> anyhow::Result<()> {
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
    // ana, who moved up a tier at the month's start; agency is another partner.
    let (partner, other) = (PARTNERS[2].0, PARTNERS[1].0);
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
    let (status, me) = http
        .keyed(&partner_key, Method::GET, "/api/v1/me", Value::Null)
        .await?;
    let moves: Vec<String> = me["tier_history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|m| {
                    let (from, to) = (text(&m["previous"]), text(&m["tier"]));
                    format!("{from} → {to} from {}", text(&m["effective_at"]))
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "and at GET /api/v1/me ({status}): tier {}; moves: {}",
        text(&me["tier"]),
        moves.join("; ")
    );
    let progress = &me["tier_progress"];
    let missing = &progress["next"]["missing"];
    println!(
        "  this month so far: {} conversions, {} USD revenue; {} needs {} USD more revenue",
        progress["figures"]["conversions"],
        text(&progress["figures"]["revenue"]),
        text(&progress["next"]["tier"]),
        text(&missing["revenue"]),
    );
    super::analytics::tour(&http, &merchant_key, &partner_key, partner).await?;
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
