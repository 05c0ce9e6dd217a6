//! The demo's ledger after the run: the lifecycle of its rows and one payout batch.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;

use super::{money, HOLD_DAYS, PROGRAM};

/// The ledger's lifecycle after the run, and one payout batch over it, through the same
/// code the review and payout API runs.
pub(super) async fn lifecycle(dir: &std::path::Path) -> anyhow::Result<()> {
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
