//! Tier moves through the whole pipeline on the memory bus and store (SPEC §10.2): a
//! backlog of three calendar months moves partners up and down at each month's start,
//! each conversion is paid at the tier in force when it occurred, and the moves are
//! rows of `partner_tiers` and `partner.tier_changed` events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;

use super::tests::Capture;
use super::{store, Pipeline};
use crate::bus::memory::MemoryBus;
use crate::bus::EventBus;
use crate::events::{ConversionEvent, ConversionKind};
use crate::registry::{MemoryStore, Program, Registry, Webhook, WebhookEventType};
use crate::sink::Sink;
use crate::testkit::fixtures;

fn day(m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap()
}

async fn registry() -> Arc<Registry> {
    let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
    let mut json = fixtures::unit_program_json();
    json["commission"] = serde_json::json!({
        "tiers": {"bronze": "0.10", "silver": "0.20", "gold": "0.30"},
        "default_tier": "bronze"});
    json["tier_rules"] = serde_json::json!({"period": "month", "demote": true, "tiers": [
        {"tier": "silver", "min": {"conversions": 2}},
        {"tier": "gold", "min": {"conversions": 3, "revenue": "250"}}]});
    let program: Program = serde_json::from_value(json).unwrap();
    registry.put_program("acme", program).await.unwrap();
    for p in ["alice", "bob"] {
        registry
            .put_partner(p, fixtures::partner("acme"))
            .await
            .unwrap();
        let link = fixtures::link(&format!("{p}-1"), "acme", p);
        registry.create_link(link).await.unwrap();
    }
    let hook: Webhook = serde_json::from_value(serde_json::json!({
        "url": "https://hooks.example/t", "secret": "s".repeat(32),
        "events": ["partner.tier_changed"]}))
    .unwrap();
    registry.put_webhook("acme", "tiers", hook).await.unwrap();
    registry
}

fn sale(id: u128, partner: &str, at: DateTime<Utc>) -> ConversionEvent {
    ConversionEvent {
        referral_code: Some(format!("{partner}-1")),
        ..fixtures::conversion(id, ConversionKind::Sale, "100", at)
    }
}

#[tokio::test(start_paused = true)]
async fn tiers_move_at_month_starts_and_pay_from_there() {
    let registry = registry().await;
    let bus = MemoryBus::new(1000);
    let sink = Arc::new(Capture::default());
    let (trigger, shutdown) = crate::shutdown::channel();
    let pipeline = Pipeline::new(
        crate::config::Config::embedded().pipeline,
        Arc::clone(&registry),
        Arc::new(store::MemoryState::new()),
        Arc::clone(&sink) as Arc<dyn Sink>,
        Arc::clone(&bus) as Arc<dyn EventBus>,
    );
    let task = tokio::spawn(pipeline.run(Box::new(bus.source()), shutdown));
    let sales = [
        // September: alice earns gold (3 sales, 300), bob silver (2 sales).
        sale(1, "alice", day(9, 3)),
        sale(2, "bob", day(9, 5)),
        sale(3, "alice", day(9, 10)),
        sale(4, "bob", day(9, 20)),
        sale(5, "alice", day(9, 30)),
        // October, paid at those tiers: alice's one sale takes her back to bronze.
        sale(6, "alice", day(10, 2)),
        sale(7, "bob", day(10, 31)),
        // November: both at bronze again (one sale each in October).
        sale(8, "alice", day(11, 15)),
    ];
    for s in &sales {
        bus.publish_conversions(&[(s.partition_key(), serde_json::to_vec(s).unwrap())])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    trigger.fire();
    task.await.unwrap().unwrap();

    let rows = sink.0.lock().unwrap();
    let paid: BTreeMap<u128, Decimal> = rows
        .commissions
        .iter()
        .map(|c| (c.conversion_id.as_u128(), c.amount))
        .collect();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    assert_eq!(
        paid,
        BTreeMap::from([
            (1, d("10")),
            (2, d("10")),
            (3, d("10")),
            (4, d("10")),
            (5, d("10")),
            (6, d("30")),
            (7, d("20")),
            (8, d("10")),
        ]),
        "{:?}",
        rows.commissions
    );
    let mut moves: Vec<(String, String, String, String, u64)> = rows
        .tiers
        .iter()
        .map(|t| {
            (
                t.effective_at.format("%m-%d").to_string(),
                t.partner_id.clone(),
                t.previous.clone(),
                t.tier.clone(),
                t.conversions,
            )
        })
        .collect();
    moves.sort();
    moves.dedup();
    let mv = |at: &str, p: &str, from: &str, to: &str, n| {
        (
            at.to_string(),
            p.to_string(),
            from.to_string(),
            to.to_string(),
            n,
        )
    };
    assert_eq!(
        moves,
        vec![
            mv("10-01", "alice", "bronze", "gold", 3),
            mv("10-01", "bob", "bronze", "silver", 2),
            mv("11-01", "alice", "gold", "bronze", 1),
            mv("11-01", "bob", "silver", "bronze", 1),
        ]
    );
    assert!(rows.tiers.iter().all(|t| t.source == "auto"));
    let gold = rows.tiers.iter().find(|t| t.tier == "gold").unwrap();
    assert_eq!((gold.revenue, gold.commission), (d("300"), d("30")));
    // Every move's figures are the sum of what each conversion of the period before
    // counted (partner_tier_figures), so the ledger shows what decided it.
    for t in &rows.tiers {
        let period = format!(
            "m{}",
            (t.effective_at - chrono::Duration::days(1)).format("%Y%m")
        );
        let mut seen = std::collections::HashSet::new();
        let counted = rows
            .tier_figures
            .iter()
            .filter(|f| f.partner_id == t.partner_id && f.period == period)
            .filter(|f| seen.insert(f.conversion_id));
        let (n, revenue, commission) = counted.fold((0, d("0"), d("0")), |(n, r, c), f| {
            (n + f.conversions, r + f.revenue, c + f.commission)
        });
        assert_eq!(
            (n, revenue, commission),
            (t.conversions, t.revenue, t.commission),
            "{t:?}"
        );
    }
    let events: Vec<_> = bus
        .outbox()
        .into_iter()
        .filter_map(|m| serde_json::from_slice::<crate::outbox::WebhookEvent>(&m.payload).ok())
        .filter(|e| e.kind == WebhookEventType::PartnerTierChanged)
        .collect();
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{events:?}");
}
