//! A partner's tier as `GET /api/v1/me` shows it (SPEC §10.2): the tier in force now,
//! its history of moves, and its progress toward the next rung in the current period.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::engine::tiers::{self, Figures, TierMove, TierRules};
use crate::http::ApiError;
use crate::ledger::{Ledger, TierMoveRow};
use crate::registry::{Partner, Program};

/// The tier fields of the partner's profile at `now`: with a ledger, its moves and its
/// progress; without one (nothing to read), the registry's tier alone.
pub(super) async fn tier_view(
    ledger: Option<&Ledger>,
    program: &Program,
    me: &Partner,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let plan = &program.commission;
    let moves = match ledger {
        Some(l) => l
            .view
            .tier_moves(&program.id, &me.id)
            .await
            .map_err(unavailable)?,
        None => Vec::new(),
    };
    let latest = latest_auto(&moves, now);
    let tier = tiers::in_force(me.held_at(now), latest.as_ref())
        .filter(|t| plan.tiers.contains_key(*t))
        .unwrap_or(&plan.default_tier)
        .to_string();
    let progress = match (ledger, &program.tier_rules) {
        (Some(l), Some(rules)) => {
            let period = rules.period.key(now);
            let figures = l
                .view
                .tier_figures(&program.id, &me.id, &period)
                .await
                .map_err(unavailable)?;
            progress(program, rules, &tier, (now, period), figures)
        }
        _ => Value::Null,
    };
    Ok(json!({
        "tier": tier, "tier_auto": me.tier_auto, "tier_history": moves,
        "tier_progress": progress,
    }))
}

fn unavailable(e: crate::sink::SinkError) -> ApiError {
    ApiError::unavailable(format!("ledger unavailable: {e}"), 5)
}

/// The latest automatic move at or before `now`, as the engine reads moves.
fn latest_auto(moves: &[TierMoveRow], now: DateTime<Utc>) -> Option<TierMove> {
    moves
        .iter()
        .filter(|m| m.source == "auto" && m.effective_at <= now)
        .max_by_key(|m| m.effective_at)
        .map(|m| TierMove {
            from: m.effective_at,
            tier: m.tier.clone(),
            previous: m.previous.clone(),
            figures: m.figures,
        })
}

/// The current period's figures so far and what the next rung above `tier` still asks
/// for (null at the top): the figures the next boundary decides on.
fn progress(
    program: &Program,
    rules: &TierRules,
    tier: &str,
    (now, period): (DateTime<Utc>, String),
    figures: Figures,
) -> Value {
    let held = rules.rung_of(tier);
    let next = rules.tiers.get(held).map(|step| {
        let short = |min: Option<Decimal>, have: Decimal| {
            min.map(|m| (m - have).max(Decimal::ZERO).to_string())
        };
        json!({
            "tier": step.tier, "min": step.min,
            "missing": {
                "conversions": step.min.conversions.map(|m| m.saturating_sub(figures.conversions)),
                "revenue": short(step.min.revenue, figures.revenue),
                "commission": short(step.min.commission, figures.commission),
            },
        })
    });
    json!({
        "period": period,
        "from": rules.period.start(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "until": rules.period.next(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "figures": figures, "currency": program.currency,
        "earns": rules.tier_of(rules.rung_for(&figures), &program.commission),
        "next": next,
    })
}
