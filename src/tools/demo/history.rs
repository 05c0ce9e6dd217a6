//! Last month as the edge recorded it (SPEC §10.2): the demo cannot wait for a month to
//! end, so it replays a recorded month of sales onto the bus before today's traffic —
//! events with last month's `received_at`, exactly as the edge would have published
//! them then. The pipeline settles them first (intake order), and when today's first
//! conversion passes the month's start the partners' tiers move on their figures.

use chrono::{Datelike, TimeZone, Utc};
use touchline::bus::EventBus;
use touchline::events::{ConversionEvent, ConversionKind, EVENT_VERSION};
use uuid::Uuid;

use super::PROGRAM;

/// Ids of the replayed conversions: uuid v5 of their order ids.
const HISTORY_NS: Uuid = Uuid::from_u128(0x4c2d_8e61_93a7_4b05_a1f8_2e6d_7c90_b3e4);

/// (partner's link, sales last month): ana earns gold, ben silver.
const LAST_MONTH: &[(&str, u32)] = &[("ana-news", 24), ("ben-video", 6)];

/// Publishes last month's sales; how many.
pub(super) async fn replay_last_month(bus: &dyn EventBus) -> anyhow::Result<usize> {
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .ok_or_else(|| anyhow::anyhow!("no start of this month"))?;
    let start = this_month - chrono::Duration::days(25);
    let mut events = Vec::new();
    for (code, sales) in LAST_MONTH {
        for n in 0..*sales {
            let at = start + chrono::Duration::hours(i64::from(n) * 20 + 1);
            let order = format!("LM-{code}-{n}");
            let e = ConversionEvent {
                v: EVENT_VERSION,
                conversion_id: Uuid::new_v5(&HISTORY_NS, order.as_bytes()),
                program_id: PROGRAM.into(),
                order_id: order,
                kind: ConversionKind::Sale,
                amount: "120.00".parse()?,
                currency: "USD".into(),
                occurred_at: at,
                received_at: at,
                click_id: None,
                visitor_id: None,
                referral_code: Some((*code).into()),
                customer_id: Some(format!("lm-{code}-{n}")),
                original_order_id: None,
                registry_version: 0,
                customer_email_sha256: None,
                country: Some("US".into()),
                product_id: None,
                metadata: Default::default(),
                promo_code: None,
            };
            events.push((e.partition_key(), serde_json::to_vec(&e)?));
        }
    }
    events.sort_by_key(|(_, e)| e.clone());
    bus.publish_conversions(&events).await?;
    Ok(events.len())
}
