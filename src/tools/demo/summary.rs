//! The demo's per-partner summary, from the files the embedded sink wrote.

use touchline::sink::file::PartnerDay;

use super::money;

/// Adds a day's (or a partner's) figures into `into`.
fn add(into: &mut PartnerDay, d: &PartnerDay) {
    into.clicks += d.clicks;
    into.unique_clicks += d.unique_clicks;
    into.bot_clicks += d.bot_clicks;
    into.conversions += d.conversions;
    into.revenue += d.revenue;
    into.commission += d.commission;
}

pub(super) fn print_summary(stats: &[PartnerDay], dir: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let mut by_partner: BTreeMap<&str, PartnerDay> = BTreeMap::new();
    for d in stats {
        add(by_partner.entry(&d.partner_id).or_default(), d);
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
        add(&mut total, p);
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

/// What reward rules and caps did (SPEC §10.1): the direct rows by reason, from the
/// ledger file the embedded sink wrote.
pub(super) fn print_rewards(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(dir.join("commissions.jsonl"))?;
    let mut by: BTreeMap<String, (usize, rust_decimal::Decimal)> = BTreeMap::new();
    #[derive(serde::Deserialize)]
    struct Row<'a> {
        kind: &'a str,
        #[serde(default)]
        reason: String,
        // JSONEachRow writes Decimal(18,4) as a number: read its text, never a float.
        #[serde(borrow)]
        amount: &'a serde_json::value::RawValue,
    }
    for line in text.lines() {
        let row: Row = serde_json::from_str(line)?;
        if row.kind != "direct" {
            continue;
        }
        let reason = if row.reason.is_empty() {
            "tier rate or bounty".to_string()
        } else {
            row.reason
        };
        let amount: rust_decimal::Decimal = row.amount.get().parse()?;
        let slot = by.entry(reason).or_default();
        slot.0 += 1;
        slot.1 += amount;
    }
    println!();
    println!("reward rules and caps: direct rows by what paid them");
    for (reason, (rows, amount)) in by {
        println!("  {reason:<28} {rows:>6} rows {:>12} USD", money(amount));
    }
    println!("  (eu-shoppers: 30 % for German and French shoppers; big-basket: 28 % from 200.00;");
    println!("   capped: clipped to what is left of a partner's 4000.00 a day)");
    Ok(())
}

/// The tier moves the pipeline made and the sales promo codes credited.
pub(super) fn print_tiers(dir: &std::path::Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Move {
        partner_id: String,
        effective_at: String,
        previous: String,
        tier: String,
        source: String,
        conversions: u64,
    }
    let text = std::fs::read_to_string(dir.join("partner_tiers.jsonl")).unwrap_or_default();
    let mut moves: Vec<Move> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    moves.sort_by(|a, b| (&a.effective_at, &a.partner_id).cmp(&(&b.effective_at, &b.partner_id)));
    moves.dedup_by(|a, b| (&a.effective_at, &a.partner_id) == (&b.effective_at, &b.partner_id));
    println!();
    println!("tier moves (tier_rules, at the month's start in event time):");
    for m in &moves {
        println!(
            "  {:<8} {} → {} from {} ({}, {} conversions last month)",
            m.partner_id, m.previous, m.tier, m.effective_at, m.source, m.conversions
        );
    }
    let attributions = std::fs::read_to_string(dir.join("attributions.jsonl"))?;
    let promo = attributions
        .lines()
        .filter(|l| l.contains(r#""source":"promo_code""#))
        .count();
    println!(
        "promo code {}: {promo} conversions credited to cat by the code, over any clicks",
        super::traffic::PROMO_CODE
    );
    Ok(())
}
