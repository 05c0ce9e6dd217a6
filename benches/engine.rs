//! Core engine benchmarks (SPEC §8): no I/O. Throughput is in conversions (or clicks).
//!
//! `cargo bench --bench engine`

use std::collections::HashMap;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;
use touchline::engine::attribution::{AttributionModel, Touch};
use touchline::engine::commission::{self, Earning, Share};
use touchline::engine::dedup;
use touchline::engine::journey;
use touchline::engine::settle::{self, Credit};
use touchline::events::{ClickEvent, ClickStatus, ConversionEvent, ConversionKind};
use touchline::registry::{Hasher, Partner, PartnerStatus, Program};
use uuid::Uuid;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn program(model: AttributionModel) -> Program {
    let mut p: Program =
        serde_json::from_value(touchline::testkit::fixtures::program_json()).unwrap();
    p.id = "bench".into();
    p.attribution = model;
    p.validate().unwrap();
    p
}

fn directory() -> HashMap<String, Arc<Partner>, Hasher> {
    let mk = |id: &str, tier: &str, parent: Option<&str>| {
        (
            id.to_string(),
            Arc::new(Partner {
                email_sha256: None,
                tier_auto: true,
                tier_history: Vec::new(),
                id: id.into(),
                program_id: "bench".into(),
                name: None,
                tier: Some(tier.into()),
                parent_id: parent.map(str::to_string),
                status: PartnerStatus::Active,
            }),
        )
    };
    HashMap::from_iter([
        mk("root", "platinum", None),
        mk("mid", "gold", Some("root")),
        mk("p1", "silver", Some("mid")),
        mk("p2", "bronze", None),
        mk("p3", "gold", Some("root")),
    ])
}

fn journey4() -> Vec<Touch> {
    let conv = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
    ["p1", "p2", "p3", "p1"]
        .iter()
        .enumerate()
        .map(|(i, p)| Touch {
            click_id: Uuid::from_u128(i as u128 + 1),
            partner_id: p.to_string(),
            ts: conv - Duration::hours(10 * (4 - i as i64)),
        })
        .collect()
}

fn conversion() -> ConversionEvent {
    let at = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
    ConversionEvent {
        program_id: "bench".into(),
        order_id: "INV-1".into(),
        currency: "EUR".into(),
        received_at: at + Duration::seconds(1),
        click_id: Some(Uuid::from_u128(4)),
        customer_id: Some("c-1".into()),
        ..touchline::testkit::fixtures::conversion(99, ConversionKind::Sale, "129.99", at)
    }
}

fn models() -> Vec<AttributionModel> {
    vec![
        AttributionModel::FirstTouch,
        AttributionModel::LastTouch,
        AttributionModel::Linear,
        AttributionModel::TimeDecay {
            half_life_days: d("7"),
        },
        AttributionModel::PositionBased {
            first: d("0.4"),
            last: d("0.4"),
        },
    ]
}

fn bench_models(c: &mut Criterion) {
    let touches = journey4();
    let mut g = c.benchmark_group("attribution_4_touches");
    g.throughput(Throughput::Elements(1));
    for m in models() {
        g.bench_function(m.name(), |b| {
            b.iter(|| black_box(m.weights(black_box(&touches))))
        });
    }
    g.finish();
}

fn bench_commission(c: &mut Criterion) {
    let plan = program(AttributionModel::LastTouch).commission;
    let shares = vec![
        Share {
            partner_id: "p1".into(),
            weight: d("0.5"),
            tier_rate: d("0.20"),
            volume_bonus: d("0.05"),
            ancestors: vec![Some("mid".into()), Some("root".into())],
            rule: None,
            headroom: None,
        },
        Share {
            partner_id: "p2".into(),
            weight: d("0.25"),
            tier_rate: d("0.15"),
            volume_bonus: d("0"),
            ancestors: vec![],
            rule: None,
            headroom: None,
        },
        Share {
            partner_id: "p3".into(),
            weight: d("0.25"),
            tier_rate: d("0.25"),
            volume_bonus: d("0"),
            ancestors: vec![Some("root".into())],
            rule: None,
            headroom: None,
        },
    ];
    let mut g = c.benchmark_group("commission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sale_3_partners_with_overrides", |b| {
        b.iter(|| {
            black_box(
                commission::earn(&plan, Earning::Sale, black_box(d("140.870163")), &shares, 2)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

fn bench_decision(c: &mut Criterion) {
    let dir = directory();
    let conv = conversion();
    let clicks = journey4();
    let mut g = c.benchmark_group("full_decision");
    g.throughput(Throughput::Elements(1));
    for m in [
        AttributionModel::LastTouch,
        AttributionModel::TimeDecay {
            half_life_days: d("7"),
        },
    ] {
        let p = program(m.clone());
        g.bench_function(format!("sale_4_touch_journey_{}", m.name()), |b| {
            // The journey arrives owned from the state store: cloning it is setup.
            b.iter_batched(
                || clicks.clone(),
                |touches| decide(&p, &conv, &dir, touches, &|_: &str, _: u32| 60),
                BatchSize::SmallInput,
            )
        });
    }
    // SPEC §8 with §10.1: the same decision under ten reward rules (two of them match)
    // and two caps, the customer's history and the running totals handed in.
    let mut p = program(AttributionModel::LastTouch);
    p.commission.rules = serde_json::from_value(ten_rules()).unwrap();
    p.commission.caps = serde_json::from_value(serde_json::json!([
        {"period": "day", "max": "500.00"}, {"period": "month", "max": "5000"}]))
    .unwrap();
    p.validate().unwrap();
    let mut conv = conv;
    conv.country = Some("DE".into());
    conv.product_id = Some("enterprise".into());
    conv.metadata.insert("plan".into(), "pro".into());
    g.bench_function("sale_4_touch_journey_last_touch_10_rules_2_caps", |b| {
        b.iter_batched(
            || clicks.clone(),
            |touches| decide(&p, &conv, &dir, touches, &Seen),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Everything the pipeline decides for one conversion, without I/O: dedup key, journey
/// selection, weights, plan and joint rounding. The decision is dropped inside the
/// timing, as the pipeline drops it once its rows are written: handed back, criterion
/// would keep a whole batch of them alive, and the routine would time the kernel
/// zeroing fresh heap pages (a quarter of the samples under `perf`) instead of the
/// decision.
fn decide(
    p: &Program,
    conv: &ConversionEvent,
    dir: &HashMap<String, Arc<Partner>, Hasher>,
    touches: Vec<Touch>,
    history: &impl settle::History,
) {
    let key = dedup::conversion_key(&conv.program_id, conv.kind.as_str(), &conv.order_id);
    let touches = journey::select(
        touches,
        conv.occurred_at,
        None,
        p.lookback_days,
        p.max_touches,
        |id| settle::is_active(dir, id),
    );
    let decision = settle::settle(p, conv, Credit::Journey(touches), dir, history).unwrap();
    black_box((key, decision));
}

/// A history for the rules bench: volume for the bonus, a returning customer, and cap
/// totals below the caps.
struct Seen;

impl settle::History for Seen {
    fn volume(&self, _: &str, _: u32) -> u64 {
        60
    }
    fn customer(&self) -> settle::Customer {
        settle::Customer {
            sale_number: Some(2),
            months_since_first_sale: Some(1),
        }
    }
    fn cap_total(&self, _: &str, _: touchline::engine::caps::Period) -> Decimal {
        Decimal::new(12_000, 2)
    }
}

/// Ten rules over every kind of field; `eu-enterprise` and `returning` match the bench's
/// sale, the rest do not.
fn ten_rules() -> serde_json::Value {
    let rule = |name: &str, when: serde_json::Value, rate: &str| serde_json::json!({"name": name, "when": when, "kinds": ["sale"], "rate": rate});
    let test = |field: &str, op: &str, value: serde_json::Value| serde_json::json!({"field": field, "op": op, "value": value});
    serde_json::json!([
        rule("us-only", test("country", "eq", "US".into()), "0.40"),
        rule(
            "eu-enterprise",
            serde_json::json!({"all": [
            test("country", "in", serde_json::json!(["DE", "FR", "IT", "ES"])),
            test("product_id", "eq", "enterprise".into())]}),
            "0.35"
        ),
        rule("big-deal", test("amount", "gte", "100000".into()), "0.50"),
        rule(
            "starter",
            test("product_id", "eq", "starter".into()),
            "0.10"
        ),
        rule(
            "free-plan",
            test("metadata.plan", "eq", "free".into()),
            "0.05"
        ),
        rule(
            "returning",
            test("customer.sale_number", "gte", 2.into()),
            "0.12"
        ),
        rule(
            "first-year",
            serde_json::json!({"all": [
            test("months_since_first_sale", "lt", 12.into()),
            test("currency", "eq", "JPY".into())]}),
            "0.45"
        ),
        rule(
            "platinum-us",
            serde_json::json!({"all": [
            test("partner.tier", "eq", "platinum".into()),
            test("country", "eq", "US".into())]}),
            "0.42"
        ),
        rule(
            "vip",
            test(
                "partner.id",
                "in",
                serde_json::json!(["vip1", "vip2", "vip3"])
            ),
            "0.60"
        ),
        rule(
            "mid-deal",
            serde_json::json!({"any": [
            test("amount", "gt", "50000".into()),
            {"all": [test("country", "eq", "GB".into()), test("metadata.plan", "ne", "pro".into())]}]}),
            "0.30"
        )
    ])
}

fn bench_click_dedup(c: &mut Criterion) {
    let click = ClickEvent {
        v: 1,
        click_id: Uuid::from_u128(1),
        ts: Utc::now(),
        program_id: "bench".into(),
        partner_id: "p1".into(),
        link_code: "abcdefgh".into(),
        campaign: None,
        visitor_id: Uuid::from_u128(2),
        ip_hash: "0123456789abcdef0123456789abcdef".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
            .into(),
        referer: None,
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        utm_term: None,
        utm_content: None,
        sub_ids: Vec::new(),
        is_bot: false,
        status: ClickStatus::Ok,
        registry_version: 0,
    };
    let previous = [click.ts - Duration::seconds(7200)];
    let mut g = c.benchmark_group("click_dedup");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fingerprint_and_decide", |b| {
        b.iter(|| {
            let fp = dedup::click_fingerprint(black_box(&click));
            black_box((fp, dedup::decide_click(click.ts, previous, 3600)))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_models,
    bench_commission,
    bench_decision,
    bench_click_dedup
);
criterion_main!(benches);
