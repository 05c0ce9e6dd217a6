//! The demo's per-partner summary, from the files the embedded sink wrote.

use touchline::sink::file::PartnerDay;

use super::money;

pub(super) fn print_summary(stats: &[PartnerDay], dir: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let mut by_partner: BTreeMap<&str, PartnerDay> = BTreeMap::new();
    for d in stats {
        let p = by_partner.entry(&d.partner_id).or_default();
        p.clicks += d.clicks;
        p.unique_clicks += d.unique_clicks;
        p.bot_clicks += d.bot_clicks;
        p.conversions += d.conversions;
        p.revenue += d.revenue;
        p.commission += d.commission;
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
        total.clicks += p.clicks;
        total.unique_clicks += p.unique_clicks;
        total.bot_clicks += p.bot_clicks;
        total.conversions += p.conversions;
        total.revenue += p.revenue;
        total.commission += p.commission;
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
