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
