//! A deterministic synthetic stream: a registry of partners with parent chains, and
//! clicks and conversions of every kind produced straight onto the topics. The
//! exactly-once and fault tests compare runs over it; the pipeline benchmark measures
//! throughput on it.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use chrono::Datelike;

use crate::config::KafkaConfig;
use crate::events::{to_millis, ClickEvent, ClickStatus, ConversionEvent, ConversionKind};
use crate::registry::{Link, LinkStatus, Partner, PartnerStatus, Program, Registry, RegistryError};
use crate::rng::Rng;

/// Reward rules and caps for the synthetic program (SPEC §10.1): every field kind a
/// condition reads, the customer's history, and caps that clip within the stream's day.
/// p1 keeps the plan's rates: the volume bonus scenario reads them.
pub fn rewards() -> (serde_json::Value, serde_json::Value) {
    let not_p1 = serde_json::json!({"field": "partner.id", "op": "ne", "value": "p1"});
    let rules = serde_json::json!([
        {"name": "eu-enterprise", "when": {"all": [not_p1,
            {"field": "country", "op": "in", "value": ["DE", "FR"]},
            {"field": "product_id", "op": "eq", "value": "enterprise"}]},
         "kinds": ["sale", "recurring"], "rate": "0.35"},
        {"name": "first-sale", "when": {"all": [not_p1,
            {"field": "customer.sale_number", "op": "eq", "value": 1},
            {"field": "amount", "op": "gte", "value": "100"}]},
         "kinds": ["sale"], "rate": "0.22", "months": 1},
        {"name": "pro-plan", "when": {"all": [not_p1, {"any": [
            {"field": "metadata.plan", "op": "eq", "value": "pro"},
            {"field": "months_since_first_sale", "op": "gte", "value": 1}]}]},
         "kinds": ["sale"], "rate": "0.18"},
        {"name": "gold-leads", "when": {"field": "partner.tier", "op": "eq", "value": "gold"},
         "kinds": ["lead"], "bounty": "7.50"}]);
    let caps =
        serde_json::json!([{"period": "day", "max": "400.00"}, {"period": "month", "max": "900"}]);
    (rules, caps)
}

/// The synthetic program's tier ladder (SPEC §10.2): monthly, with demotion, so that a
/// stream spanning months moves partners both ways.
pub fn tier_rules() -> serde_json::Value {
    serde_json::json!({"period": "month", "demote": true, "tiers": [
        {"tier": "silver", "min": {"conversions": 12}},
        {"tier": "gold", "min": {"conversions": 20, "revenue": "2500"}},
        {"tier": "platinum", "min": {"revenue": "6000"}}]})
}

/// Writes program `acme` (a week's hold, every fraud rule that counts history on),
/// `partners`
/// partners (every fourth the parent of the next three) and one link per partner.
pub async fn seed_registry(registry: &Registry, partners: usize) -> Result<(), RegistryError> {
    seed_registry_with(registry, partners, false).await
}

/// [`seed_registry`], with the plan's [`rewards`] when `with_rewards`.
pub async fn seed_registry_with(
    registry: &Registry,
    partners: usize,
    with_rewards: bool,
) -> Result<(), RegistryError> {
    let mut program: Program = serde_json::from_value(serde_json::json!({
        "name": "Synthetic", "currency": "USD", "secret": "synthetic-signing-secret-0001",
        "fallback_url": "https://shop.example/",
        "attribution": {"model": "time_decay", "half_life_days": "7"},
        "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
        "commission": crate::engine::commission::example_plan(),
        // A week's hold: last month's signups are past it when they arrive (approved at
        // once), this month's sales pending, holds ending only for streams placed more
        // than a week back. The largest sales (EUR) go to review; a visitor's third click
        // on one partner's links is suspicious; partners with many refunds are held: the
        // rules that count what came before, exercised in every run over this stream.
        "hold_days": 7,
        "fraud": {"review_above": "450", "max_clicks_per_ip_hour": 2, "refund_rate": "0.25"}
    }))
    .expect("a valid program");
    if with_rewards {
        let (rules, caps) = rewards();
        program.commission.rules = serde_json::from_value(rules).expect("valid rules");
        program.commission.caps = serde_json::from_value(caps).expect("valid caps");
    }
    // Tier figures in every stream (moves in those that span a month's start).
    program.tier_rules = Some(serde_json::from_value(tier_rules()).expect("valid tier rules"));
    registry.put_program("acme", program).await?;
    let tiers = ["bronze", "silver", "gold", "platinum"];
    for i in 0..partners {
        // Every fourth partner is a parent of the next three: override chains.
        let parent = if i % 4 == 0 {
            None
        } else {
            Some(format!("p{}", i - i % 4))
        };
        let partner = Partner {
            email_sha256: None,
            tier_auto: true,
            tier_history: Vec::new(),
            id: String::new(),
            program_id: "acme".into(),
            name: None,
            tier: Some(tiers[i % 4].to_string()),
            parent_id: parent,
            status: PartnerStatus::Active,
        };
        registry.put_partner(&format!("p{i}"), partner).await?;
        let link = Link {
            code: format!("link-p{i}"),
            program_id: "acme".into(),
            partner_id: format!("p{i}"),
            destination: "https://shop.example/".into(),
            campaign: Some(format!("c{}", i % 3)),
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            sub_ids: Vec::new(),
            status: LinkStatus::Active,
        };
        match registry.create_link(link).await {
            Ok(_) | Err(RegistryError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if with_rewards && partners > 3 {
        // Some conversions carry it (see `produce_in`): p3 takes their credit.
        let code = crate::registry::PromoCode {
            program_id: "acme".into(),
            code: PROMO_CODE.into(),
            partner_id: "p3".into(),
        };
        registry.put_promo_code(code).await?;
    }
    Ok(())
}

/// The promo code some synthetic conversions carry, in other cases than registered.
pub const PROMO_CODE: &str = "PROMO-P3";

/// Sizes of a generated stream.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub clicks: u64,
    pub conversions: u64,
}

/// The order events are published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Clicks in `(ts, click_id)` order, then conversions in intake order
    /// `(received_at, conversion_id)`: as one edge would have published them.
    Intake,
    /// Both topics interleaved in a shuffled order (from this seed): conversions before
    /// their clicks, refunds before their sales, last month's conversions after this
    /// month's.
    Shuffled(u64),
}

/// Produces a deterministic stream of clicks and conversions of every kind (sales in
/// three currencies, duplicates, recurring payments, partial and full refunds, leads,
/// signups by referral code, unattributed signups, and last month's signups that earn
/// one partner its volume bonus) onto the topics of `kafka`, keyed as the edge keys
/// them, in intake order.
pub async fn produce(
    kafka: &KafkaConfig,
    seed: u64,
    visitors: usize,
    partners: usize,
) -> Result<Stream, KafkaError> {
    let base = to_millis(chrono::Utc::now() - chrono::Duration::hours(3));
    produce_in(kafka, seed, visitors, partners, base, Order::Intake).await
}

/// [`produce`], with the first click at `base` (conversions two hours later), in the
/// given order: the same arguments give the same events.
pub async fn produce_in(
    kafka: &KafkaConfig,
    seed: u64,
    visitors: usize,
    partners: usize,
    base: chrono::DateTime<chrono::Utc>,
    order: Order,
) -> Result<Stream, KafkaError> {
    produce_burst(kafka, seed, visitors, partners, (base, 0), order).await
}

/// One [`produce_in`] stream per base, one after the other (each shuffled on its own
/// with [`Order::Shuffled`]): the same visitors and customers coming back, with ids and
/// order ids of their own per burst. Bases months apart make a backlog spanning months.
pub async fn produce_bursts(
    kafka: &KafkaConfig,
    seed: u64,
    visitors: usize,
    partners: usize,
    bases: &[chrono::DateTime<chrono::Utc>],
    order: Order,
) -> Result<Stream, KafkaError> {
    let mut total = Stream {
        clicks: 0,
        conversions: 0,
    };
    for (burst, base) in bases.iter().enumerate() {
        let s = produce_burst(
            kafka,
            seed,
            visitors,
            partners,
            (*base, burst as u32),
            order,
        )
        .await?;
        total.clicks += s.clicks;
        total.conversions += s.conversions;
    }
    Ok(total)
}

/// Ids and order ids of burst `burst` (0: as they always were).
fn rebase(burst: u32, clicks: &mut [ClickEvent], conversions: &mut [ConversionEvent]) {
    if burst == 0 {
        return;
    }
    let shift = |u: uuid::Uuid| uuid::Uuid::from_u128(u.as_u128() + (u128::from(burst) << 48));
    let name = |o: &str| format!("m{burst}-{o}");
    for c in clicks {
        c.click_id = shift(c.click_id);
    }
    for c in conversions {
        c.conversion_id = shift(c.conversion_id);
        c.click_id = c.click_id.map(shift);
        c.order_id = name(&c.order_id);
        c.original_order_id = c.original_order_id.as_deref().map(name);
    }
}

async fn produce_burst(
    kafka: &KafkaConfig,
    seed: u64,
    visitors: usize,
    partners: usize,
    (base, burst): (chrono::DateTime<chrono::Utc>, u32),
    order: Order,
) -> Result<Stream, KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    // Each burst draws its own visitors' behaviour (burst 0: the stream as it always was).
    let mut rng = Rng::new(seed.wrapping_add(u64::from(burst)));
    let base = to_millis(base);
    let mut clicks = Vec::new();
    let mut visitor_clicks: Vec<Vec<uuid::Uuid>> = vec![Vec::new(); visitors];
    let mut n = 0u128;
    for (v, own_clicks) in visitor_clicks.iter_mut().enumerate() {
        let visitor = uuid::Uuid::from_u128(0xA000_0000 + v as u128);
        for _ in 0..(1 + rng.below(6)) {
            n += 1;
            let p = rng.below(partners as u64);
            let click_id = uuid::Uuid::from_u128(0xC000_0000_0000 + n);
            let bot = rng.below(20) == 0;
            clicks.push(ClickEvent {
                v: 1,
                click_id,
                // 10 ms apart: even a million clicks precede the conversions, two hours later.
                ts: base + chrono::Duration::milliseconds((n as i64) * 10),
                program_id: "acme".into(),
                partner_id: format!("p{p}"),
                link_code: format!("link-p{p}"),
                campaign: Some(format!("c{}", p % 3)),
                visitor_id: visitor,
                ip_hash: format!("{:032x}", v),
                user_agent: "Mozilla/5.0 generated".into(),
                referer: None,
                utm_source: None,
                utm_medium: None,
                utm_campaign: None,
                utm_term: None,
                utm_content: None,
                sub_ids: Vec::new(),
                is_bot: bot,
                status: ClickStatus::Ok,
                registry_version: 0,
            });
            own_clicks.push(click_id);
        }
    }
    let at = base + chrono::Duration::hours(2);
    let mut conversions = Vec::new();
    let mut m = 0u128;
    let mut conv = |kind: ConversionKind,
                    order: String,
                    amount: &str,
                    currency: &str,
                    click: Option<uuid::Uuid>,
                    visitor: Option<uuid::Uuid>,
                    code: Option<String>,
                    customer: Option<String>,
                    original: Option<String>,
                    offset_s: i64| {
        m += 1;
        // What reward rules read, from the conversion's number (not the generator, so
        // that the rest of the stream is what it always was).
        let country = ["DE", "US", "FR", "GB", "US"][(m % 5) as usize];
        let product = (m % 7 == 0).then(|| "enterprise".to_string());
        let metadata = if m % 3 == 0 {
            std::collections::BTreeMap::from([("plan".to_string(), "pro".to_string())])
        } else {
            std::collections::BTreeMap::new()
        };
        ConversionEvent {
            v: 1,
            conversion_id: uuid::Uuid::from_u128(0xE000_0000_0000 + m),
            program_id: "acme".into(),
            order_id: order,
            kind,
            amount: amount.parse().unwrap(),
            currency: currency.into(),
            occurred_at: at + chrono::Duration::seconds(offset_s),
            received_at: at + chrono::Duration::seconds(offset_s),
            click_id: click,
            visitor_id: visitor,
            referral_code: code,
            customer_id: customer,
            original_order_id: original,
            registry_version: 0,
            customer_email_sha256: None,
            country: Some(country.into()),
            product_id: product,
            metadata,
            // Every eleventh sale, lead or signup, in lower case (codes ignore it).
            promo_code: (m % 11 == 0 && kind.is_journey_kind()).then(|| PROMO_CODE.to_lowercase()),
        }
    };
    for (v, own_clicks) in visitor_clicks.iter().enumerate() {
        let visitor = uuid::Uuid::from_u128(0xA000_0000 + v as u128);
        let cents = 100 + rng.below(50_000);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let currency = ["USD", "EUR", "JPY"][rng.below(3) as usize];
        let amount = if currency == "JPY" {
            format!("{}", cents)
        } else {
            amount
        };
        // Received over two minutes, among last month's signups (below).
        let at_s = rng.below(120) as i64;
        match rng.below(5) {
            0 | 1 => {
                // The visitor's latest click: the sale's journey is all of the visitor's
                // unique clicks.
                let click = *own_clicks.last().unwrap();
                let order = format!("S-{v}");
                let customer = format!("cust-{v}");
                conversions.push(conv(
                    ConversionKind::Sale,
                    order.clone(),
                    &amount,
                    currency,
                    Some(click),
                    None,
                    None,
                    Some(customer.clone()),
                    None,
                    at_s,
                ));
                if v % 8 == 0 {
                    // The customer buys again a minute later: its second sale (reward
                    // rules read the sale number; caps see a second row).
                    conversions.push(conv(
                        ConversionKind::Sale,
                        format!("S2-{v}"),
                        &amount,
                        currency,
                        Some(click),
                        None,
                        None,
                        Some(customer.clone()),
                        None,
                        at_s + 60,
                    ));
                }
                if rng.below(4) == 0 {
                    // A merchant retry of the same order: a duplicate.
                    conversions.push(conv(
                        ConversionKind::Sale,
                        order.clone(),
                        &amount,
                        currency,
                        Some(click),
                        None,
                        None,
                        Some(customer.clone()),
                        None,
                        at_s,
                    ));
                }
                if rng.below(2) == 0 {
                    conversions.push(conv(
                        ConversionKind::Recurring,
                        format!("R-{v}"),
                        "19.99",
                        "USD",
                        None,
                        None,
                        None,
                        Some(customer),
                        None,
                        at_s + 150,
                    ));
                }
                if rng.below(3) == 0 {
                    conversions.push(conv(
                        ConversionKind::Refund,
                        format!("RF-{v}"),
                        "10",
                        currency,
                        None,
                        None,
                        None,
                        None,
                        Some(order.clone()),
                        at_s + 200,
                    ));
                    conversions.push(conv(
                        ConversionKind::Refund,
                        format!("RF2-{v}"),
                        &amount,
                        currency,
                        None,
                        None,
                        None,
                        None,
                        Some(order),
                        at_s + 260,
                    ));
                }
            }
            2 => {
                let click = *own_clicks.last().unwrap();
                conversions.push(conv(
                    ConversionKind::Lead,
                    format!("L-{v}"),
                    "0",
                    "USD",
                    Some(click),
                    Some(visitor),
                    None,
                    None,
                    None,
                    at_s,
                ))
            }
            3 => {
                let p = rng.below(partners as u64);
                conversions.push(conv(
                    ConversionKind::Signup,
                    format!("G-{v}"),
                    "0",
                    "USD",
                    None,
                    None,
                    Some(format!("link-p{p}")),
                    None,
                    None,
                    at_s,
                ))
            }
            _ => conversions.push(conv(
                ConversionKind::Signup,
                format!("U-{v}"),
                "0",
                "USD",
                None,
                None,
                None,
                None,
                None,
                at_s,
            )),
        }
    }
    // Last month's signups by referral code, received among this month's sales: enough
    // for p1's volume bonus (50), counted only for what is received after them.
    let last_month =
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, at.year(), at.month(), 1, 12, 0, 0)
            .single()
            .expect("a valid date")
            - chrono::Duration::days(10);
    for i in 0..60 {
        let mut signup = conv(
            ConversionKind::Signup,
            format!("LM-{i}"),
            "0",
            "USD",
            None,
            None,
            Some("link-p1".into()),
            None,
            None,
            // Received spread over the first minute of sales.
            i,
        );
        signup.occurred_at = last_month + chrono::Duration::minutes(i);
        conversions.push(signup);
    }
    rebase(burst, &mut clicks, &mut conversions);
    clicks.sort_by_key(|c| (c.ts, c.click_id));
    conversions.sort_by_key(|c| (c.received_at, c.conversion_id));
    let mut records: Vec<(&String, String, serde_json::Result<Vec<u8>>)> = clicks
        .iter()
        .map(|c| {
            (
                &kafka.topics.clicks,
                c.visitor_id.to_string(),
                serde_json::to_vec(c),
            )
        })
        .chain(conversions.iter().map(|c| {
            (
                &kafka.topics.conversions,
                c.partition_key(),
                serde_json::to_vec(c),
            )
        }))
        .collect();
    if let Order::Shuffled(seed) = order {
        // Fisher–Yates, reversed order first so that conversions lead.
        records.reverse();
        let mut rng = Rng::new(seed);
        for i in (1..records.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            records.swap(i, j);
        }
    }
    // Every delivery awaited before returning.
    let mut deliveries = Vec::with_capacity(records.len());
    for (topic, key, payload) in records {
        let payload = payload.expect("events encode");
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    deliveries.push(f);
                    break;
                }
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(Stream {
        clicks: clicks.len() as u64,
        conversions: conversions.len() as u64,
    })
}
