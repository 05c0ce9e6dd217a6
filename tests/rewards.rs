//! Rewards beyond the plan on the real stack (SPEC §10): reward rules through the admin
//! API (their bad input rows of §7), signed conversions carrying country, product and
//! metadata, the pipeline, and the ledger in ClickHouse with each row's reason.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

fn rules() -> Value {
    json!([
        {"name": "eu-enterprise", "when": {"all": [
            {"field": "country", "op": "in", "value": ["DE", "FR"]},
            {"field": "product_id", "op": "eq", "value": "enterprise"}]},
         "kinds": ["sale"], "rate": "0.35"},
        {"name": "big-deal", "when": {"any": [{"field": "amount", "op": "gte", "value": "1000"}]},
         "kinds": ["sale"], "rate": "0.30", "months": 3},
        {"name": "partner-plan", "when": {"field": "metadata.plan", "op": "eq", "value": "partner"},
         "kinds": ["sale"], "rate": "0.05"},
        {"name": "gold-leads", "when": {"all": [{"field": "partner.tier", "op": "eq", "value": "gold"}]},
         "kinds": ["lead"], "bounty": "8.00"}
    ])
}

fn program_with(rules: Value) -> Value {
    let mut p = program_json();
    p["commission"]["rules"] = rules;
    p
}

/// Each bad rule answers 400 naming the field and the rule, each bad cap its field, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_naming_the_rule() {
    let config = config(&[]);
    create_topics(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("/api/v1/programs/acme");
    let rule = |when: Value, extra: Value| {
        let mut r = json!({"name": "geo", "when": when, "kinds": ["sale"], "rate": "0.3"});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let de = json!({"field": "country", "op": "eq", "value": "DE"});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([rule(
                json!({"field": "land", "op": "eq", "value": "DE"}),
                json!({})
            )]),
            "commission.rules[0]",
            "rule `geo`: when.field: unknown field `land`",
        ),
        (
            json!([rule(
                json!({"all": [{"field": "country", "op": "like", "value": "DE"}]}),
                json!({})
            )]),
            "commission.rules[0]",
            "rule `geo`: when.all[0].op: unknown op `like`",
        ),
        (
            json!([rule(
                json!({"all": [{"any": [{"all": [{"any": [de.clone()]}]}]}]}),
                json!({})
            )]),
            "commission.rules[0]",
            "nest at most 3 deep",
        ),
        (
            json!([rule(
                json!({"field": "amount", "op": "gte", "value": "99999999999999"}),
                json!({})
            )]),
            "commission.rules[0]",
            "rule `geo`: when.value",
        ),
        (
            json!([rule(de.clone(), json!({"rate": "1.01"}))]),
            "commission.rules[0]",
            "rule `geo`: rate must be from 0 to 1",
        ),
        (
            json!([rule(de.clone(), json!({"kinds": ["lead"]}))]),
            "commission.rules[0]",
            "rule `geo`: a rate pays sale",
        ),
        (
            json!([rule(de.clone(), json!({"colour": "red"}))]),
            "commission.rules[0].colour",
            "unknown field `colour`",
        ),
        (
            json!([rule(de.clone(), json!({})), rule(de.clone(), json!({}))]),
            "commission.rules[1].name",
            "unique",
        ),
        (
            Value::Array(
                (0..51)
                    .map(|i| rule(de.clone(), json!({"name": format!("r{i}")})))
                    .collect(),
            ),
            "commission.rules",
            "at most 50",
        ),
    ];
    for (rules, field, message) in cases {
        let r = admin(Method::PUT, &url, program_with(rules.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{rules}: {:?}", r.body);
        let err = &r.json()["error"];
        assert_eq!(err["field"], field, "{rules}: {err}");
        let text = err["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{rules}: {err}");
    }
    // Caps: a period there is not, more decimals than the currency's, one period twice.
    for (caps, field) in [
        (
            json!([{"period": "week", "max": "10"}]),
            "commission.caps[0].period",
        ),
        (
            json!([{"period": "day", "max": "10.001"}]),
            "commission.caps[0].max",
        ),
        (
            json!([{"period": "day", "max": "-1"}]),
            "commission.caps[0].max",
        ),
        (
            json!([{"period": "day", "max": "1"}, {"period": "day", "max": "2"}]),
            "commission.caps[1].period",
        ),
    ] {
        let mut p = program_json();
        p["commission"]["caps"] = caps.clone();
        let r = admin(Method::PUT, &url, p).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{caps}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], field, "{caps}");
    }
    // Tier rules (SPEC §10.2): thresholds that do not increase with the tiers' order,
    // tiers the plan lacks, rungs asking for nothing, periods there are not.
    let ladder = |tiers: Value| json!({"period": "month", "demote": true, "tiers": tiers});
    for (rules, field, message) in [
        (
            json!({"period": "week", "tiers": [{"tier": "silver", "min": {"conversions": 1}}]}),
            "tier_rules.period",
            "",
        ),
        (
            ladder(json!([{"tier": "diamond", "min": {"conversions": 1}}])),
            "tier_rules.tiers[0].tier",
            "not a tier",
        ),
        (
            ladder(json!([{"tier": "silver", "min": {}}])),
            "tier_rules.tiers[0].min",
            "must ask for",
        ),
        (
            ladder(json!([
                {"tier": "silver", "min": {"conversions": 10}},
                {"tier": "gold", "min": {"conversions": 5, "revenue": "1000"}}])),
            "tier_rules.tiers[1].min.conversions",
            "below the tier before it",
        ),
        (
            ladder(json!([
                {"tier": "silver", "min": {"revenue": "100"}},
                {"tier": "gold", "min": {"revenue": "100"}}])),
            "tier_rules.tiers[1].min",
            "more than the tier before it",
        ),
        (
            ladder(json!([{"tier": "silver", "min": {"revenue": "1.00001"}}])),
            "tier_rules.tiers[0].min.revenue",
            "at most 4 decimals",
        ),
    ] {
        let mut p = program_json();
        p["tier_rules"] = rules.clone();
        let r = admin(Method::PUT, &url, p).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{rules}: {:?}", r.body);
        let err = &r.json()["error"];
        assert_eq!(err["field"], field, "{rules}: {err}");
        let text = err["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{rules}: {err}");
    }
    let r = admin(Method::GET, &url, Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was written");
    // SPEC §10.2's example is accepted and read back as sent.
    let spec = json!({"period": "month", "demote": true, "tiers": [
        {"tier": "silver", "min": {"conversions": 10}},
        {"tier": "gold", "min": {"revenue": "10000", "conversions": 25}},
        {"tier": "platinum", "min": {"revenue": "50000"}}]});
    let mut p = program_json();
    p["tier_rules"] = spec.clone();
    let r = admin(Method::PUT, &url, p).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(Method::GET, &url, Value::Null).await;
    assert_eq!(r.json()["tier_rules"], spec);
    // The rules of SPEC §10.1 are accepted and read back as sent.
    let r = admin(Method::PUT, &url, program_with(rules())).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = admin(Method::GET, &url, Value::Null).await;
    assert_eq!(r.json()["commission"]["rules"], rules());
    edge.stop().await;
}

/// Conversions carrying country, product and metadata are paid by the best matching
/// rule, each direct row naming it; overrides follow from the rule's amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_rule_pays_and_names_itself_in_the_ledger() {
    let (config, edge, pipeline, url) = live().await;
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/acme"),
        program_with(rules()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for (id, tier, parent) in [("mid", "silver", None), ("alice", "gold", Some("mid"))] {
        let r = admin(
            Method::PUT,
            &format!("{url}/api/v1/partners/{id}"),
            json!({"program_id": "acme", "tier": tier, "parent_id": parent}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "alice", "code": "alice-eu", "destination": "https://acme.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sale = |order: &str, amount: &str, extra: Value| {
        let mut s = json!({"program_id": "acme", "order_id": order, "kind": "sale", "amount": amount,
                           "currency": "USD", "referral_code": "alice-eu", "customer_id": format!("c-{order}")});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let body = json!([
        // eu-enterprise 0.35 beats big-deal 0.30: 2000 × 0.35 = 700.00, mid 10 % 70.00.
        sale("S-1", "2000.00", json!({"country": "de", "product_id": "enterprise"})),
        // big-deal only (a first sale, within three months): 1500 × 0.30 = 450.00.
        sale("S-2", "1500.00", json!({"country": "US", "product_id": "enterprise"})),
        // partner-plan pays less than gold's 0.25, and still takes its place: 5.00.
        sale("S-3", "100.00", json!({"metadata": {"plan": "partner"}})),
        // No rule matches: gold 0.25 → 25.00.
        sale("S-4", "100.00", json!({"country": "FR", "product_id": "starter"})),
        {"program_id": "acme", "order_id": "L-1", "kind": "lead", "referral_code": "alice-eu"}
    ]);
    let r = post_conversions(&url, &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let n = wait_count(
        &config,
        "SELECT count() FROM conversions FINAL",
        5,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, 5);
    wait_count(
        &config,
        "SELECT count() FROM commissions FINAL",
        10,
        Duration::from_secs(30),
    )
    .await;
    let ledger = ch_query(
        &config,
        "SELECT c.order_id, m.partner_id, m.level, m.amount, m.reason \
         FROM commissions AS m FINAL ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL) AS c USING conversion_id \
         ORDER BY c.order_id, m.level",
    )
    .await;
    let ledger: Vec<String> = ledger
        .iter()
        .map(|r| r.join(" ").trim_end().to_string())
        .collect();
    assert_eq!(
        ledger,
        vec![
            "L-1 alice 0 8.0000 rule gold-leads",
            "L-1 mid 1 0.8000",
            "S-1 alice 0 700.0000 rule eu-enterprise",
            "S-1 mid 1 70.0000",
            "S-2 alice 0 450.0000 rule big-deal",
            "S-2 mid 1 45.0000",
            "S-3 alice 0 5.0000 rule partner-plan",
            "S-3 mid 1 0.5000",
            "S-4 alice 0 25.0000",
            "S-4 mid 1 2.5000",
        ]
    );
    // The ledger API shows the rule beside each row's status, to the merchant and to
    // the partner.
    for path in [
        "/api/v1/commissions?program_id=acme",
        "/api/v1/me/commissions?partner_id=alice",
    ] {
        let r = admin(Method::GET, &format!("{url}{path}"), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let mut reasons: Vec<String> = r.json()["commissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["partner_id"] == "alice")
            .map(|e| e["earned_reason"].as_str().unwrap().to_string())
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "",
                "rule big-deal",
                "rule eu-enterprise",
                "rule gold-leads",
                "rule partner-plan"
            ],
            "{path}"
        );
    }
    pipeline.stop().await;
    edge.stop().await;
}

/// A tier set by hand holds from the moment it is set (SPEC §10.2): a sale before the
/// change keeps the old tier's rate when the whole log is settled again later by a
/// pipeline with fresh state — the registry keeps the tier's history. The change is a
/// `manual` row of `partner_tiers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_tier_change_then_a_replay_pays_what_live_settlement_paid() {
    let fast = [
        ("TOUCHLINE__PIPELINE__LATE_GRACE_SECS", "2"),
        ("TOUCHLINE__PIPELINE__FLUSH_INTERVAL_MS", "200"),
    ];
    let live = config(&fast);
    migrate(&live).await;
    let edge = start_edge(&live).await;
    let pipeline = start_pipeline(&live);
    let url = edge.url("");
    let put = |path: &str, body: Value| {
        let url = format!("{url}{path}");
        async move { admin(Method::PUT, &url, body).await }
    };
    assert_eq!(
        put("/api/v1/programs/acme", program_json()).await.status,
        StatusCode::CREATED
    );
    let r = put(
        "/api/v1/partners/alice",
        json!({"program_id": "acme", "tier": "silver"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "alice", "code": "alice-t", "destination": "https://acme.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sale = |order: &str| {
        json!({"program_id": "acme", "order_id": order, "kind": "sale", "amount": "100.00",
               "currency": "USD", "referral_code": "alice-t"})
    };
    let ledger = |config: touchline::config::Config| async move {
        ch_query(
            &config,
            "SELECT c.order_id, toString(m.amount) FROM commissions AS m FINAL \
             ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL) AS c USING conversion_id \
             ORDER BY c.order_id",
        )
        .await
    };
    let r = post_conversions(&url, &sale("T-1").to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &live,
        "SELECT count() FROM commissions FINAL",
        1,
        Duration::from_secs(60),
    )
    .await;
    // Gold from now on, by hand.
    let r = admin(
        Method::PATCH,
        &format!("{url}/api/v1/partners/alice"),
        json!({"tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json()["tier_auto"],
        json!(false),
        "a tier set by hand pins: {:?}",
        r.body
    );
    assert_eq!(
        r.json()["tier_history"].as_array().map(Vec::len),
        Some(2),
        "{:?}",
        r.body
    );
    // The edge follows its own write; the pipeline waits for the version it names.
    let r = post_conversions(&url, &sale("T-2").to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &live,
        "SELECT count() FROM commissions FINAL",
        2,
        Duration::from_secs(60),
    )
    .await;
    let paid = ledger(live.clone()).await;
    assert_eq!(
        paid,
        vec![
            vec!["T-1".to_string(), "20.0000".to_string()],
            vec!["T-2".to_string(), "25.0000".to_string()]
        ]
    );
    let manual = ch_query(
        &live,
        "SELECT partner_id, previous, tier, source FROM partner_tiers FINAL",
    )
    .await;
    assert_eq!(manual, vec![vec!["alice", "silver", "gold", "manual"]]);
    pipeline.stop().await;
    edge.stop().await;

    // The replay: the same topics and registry, fresh state, database and group.
    let mut replay = config(&fast);
    replay.kafka.topics = live.kafka.topics.clone();
    let client = redis::Client::open(live.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in ["reg:entities", "reg:log"] {
        let copied: i64 = redis::cmd("COPY")
            .arg(format!("{}:{key}", live.redis.prefix))
            .arg(format!("{}:{key}", replay.redis.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(copied, 1, "{key} copied");
    }
    migrate(&replay).await;
    let again = start_pipeline(&replay);
    wait_count(
        &replay,
        "SELECT count() FROM commissions FINAL",
        2,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        ledger(replay.clone()).await,
        paid,
        "the replay pays what live settlement paid"
    );
    again.stop().await;
}

/// `GET /api/v1/me` shows the tier in force, the partner's moves and its progress in the
/// current period toward the next rung, from what the ledger holds (SPEC §10.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_sees_its_tier_progress_and_history() {
    let (config, edge, pipeline, url) = live().await;
    let mut program = program_json();
    program["tier_rules"] = json!({"period": "month", "tiers": [
        {"tier": "silver", "min": {"conversions": 3}},
        {"tier": "gold", "min": {"conversions": 5, "revenue": "1000"}}]});
    let r = admin(Method::PUT, &format!("{url}/api/v1/programs/acme"), program).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/alice"),
        json!({"program_id": "acme"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "alice", "code": "alice-p", "destination": "https://acme.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sales: Vec<Value> = ["P-1", "P-2"]
        .iter()
        .map(|o| {
            json!({"program_id": "acme", "order_id": o, "kind": "sale", "amount": "120.50",
                   "currency": "USD", "referral_code": "alice-p"})
        })
        .collect();
    let r = post_conversions(&url, &Value::Array(sales).to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM partner_tier_figures FINAL",
        2,
        Duration::from_secs(60),
    )
    .await;
    let me_url = format!("{url}/api/v1/me?partner_id=alice");
    let me = || admin(Method::GET, &me_url, Value::Null);
    let r = me().await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = r.json();
    assert_eq!(body["tier"], "bronze", "{body}");
    let progress = &body["tier_progress"];
    let dec = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    assert_eq!(progress["figures"]["conversions"], 2, "{progress}");
    assert_eq!(dec(&progress["figures"]["revenue"]), dec(&json!("241.00")));
    // bronze 15 % of each 120.50 is 18.075, booked 18.08 (half even): 36.16.
    assert_eq!(
        dec(&progress["figures"]["commission"]),
        dec(&json!("36.16"))
    );
    assert_eq!(progress["next"]["tier"], "silver", "{progress}");
    assert_eq!(progress["next"]["missing"]["conversions"], 1, "{progress}");
    assert_eq!(progress["earns"], "bronze");
    // A tier set by hand is in force at once, pinned, and in the history.
    let r = admin(
        Method::PATCH,
        &format!("{url}/api/v1/partners/alice"),
        json!({"tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = me().await.json();
    assert_eq!(body["tier"], "gold", "{body}");
    assert_eq!(body["tier_set_by_hand"], true);
    let history = body["tier_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{body}");
    assert_eq!(
        (
            &history[0]["previous"],
            &history[0]["tier"],
            &history[0]["source"]
        ),
        (&json!("bronze"), &json!("gold"), &json!("manual"))
    );
    assert_eq!(
        body["tier_progress"]["next"],
        Value::Null,
        "gold is the top rung"
    );
    pipeline.stop().await;
    edge.stop().await;
}

/// Promo codes (SPEC §10.3): a known code credits its partner with one synthetic touch,
/// over the clicks by default, only without a journey under `fallback`; codes are
/// case-insensitive; an unknown code changes nothing; a recurring payment follows the
/// first sale however it was credited. Attribution rows say where the credit came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promo_codes_credit_their_partner_over_clicks_or_as_a_fallback() {
    let (config, edge, pipeline, url) = live().await;
    let put = |path: String, body: Value| async move { admin(Method::PUT, &path, body).await };
    let r = put(format!("{url}/api/v1/programs/acme"), program_json()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let mut other = program_json();
    other["name"] = json!("Globex");
    assert!(put(format!("{url}/api/v1/programs/globex"), other)
        .await
        .status
        .is_success());
    for (id, program) in [("alice", "acme"), ("bob", "acme"), ("gina", "globex")] {
        let r = put(
            format!("{url}/api/v1/partners/{id}"),
            json!({"program_id": program}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        json!({"program_id": "acme", "partner_id": "alice", "code": "alice-c", "destination": "https://acme.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // Bad codes: a partner of another program, characters a code cannot have.
    let code_url = |code: &str| format!("{url}/api/v1/programs/acme/promo_codes/{code}");
    let r = put(code_url("GINA"), json!({"partner_id": "gina"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.json()["error"]["field"], "partner_id");
    let r = put(code_url("no%20spaces"), json!({"partner_id": "bob"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.json()["error"]["field"], "code");
    let r = put(code_url("BOB10"), json!({"partner_id": "bob"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The same code in another case is the same code, its first spelling kept.
    let r = put(code_url("bob10"), json!({"partner_id": "bob"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["code"], "BOB10");

    // Each click from its own browser: unique, a touch.
    let clicks = std::sync::atomic::AtomicU32::new(0);
    let click = || async {
        let n = clicks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let agent = format!("Mozilla/5.0 promo {n}");
        let r = send(
            Method::GET,
            &format!("{url}/r/alice-c"),
            &[("user-agent", agent.as_str())],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
        let location = r.header("location").to_string();
        form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "tl_click")
            .unwrap()
            .1
            .into_owned()
    };
    let sale = |order: &str, click: Option<String>, code: Option<&str>| {
        json!({"program_id": "acme", "order_id": order, "kind": "sale", "amount": "100.00",
               "currency": "USD", "click_id": click, "promo_code": code,
               "customer_id": format!("cust-{order}")})
    };
    // A promo code is for sales, leads and signups.
    let refund = json!({"program_id": "acme", "order_id": "RF", "kind": "refund", "amount": "1",
                        "original_order_id": "S-1", "promo_code": "BOB10"});
    let r = post_conversions(&url, &refund.to_string()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.json()["error"]["field"], "promo_code");

    let body = json!([
        sale("S-1", Some(click().await), Some("bob10")),
        sale("S-2", Some(click().await), None),
        sale("S-3", Some(click().await), Some("UNKNOWN")),
    ]);
    let r = post_conversions(&url, &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM attributions FINAL",
        3,
        Duration::from_secs(60),
    )
    .await;
    // Fallback from now on: the code counts only without a journey.
    let mut fallback = program_json();
    fallback["promo_code_priority"] = json!("fallback");
    assert_eq!(
        put(format!("{url}/api/v1/programs/acme"), fallback)
            .await
            .status,
        StatusCode::OK
    );
    let body = json!([
        sale("S-4", Some(click().await), Some("BOB10")),
        sale("S-5", None, Some("Bob10")),
        {"program_id": "acme", "order_id": "R-1", "kind": "recurring", "amount": "50.00",
         "currency": "USD", "customer_id": "cust-S-5"},
    ]);
    let r = post_conversions(&url, &body.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_count(
        &config,
        "SELECT count() FROM attributions FINAL",
        6,
        Duration::from_secs(60),
    )
    .await;
    let rows = ch_query(
        &config,
        "SELECT c.order_id, a.partner_id, a.model, a.source FROM attributions AS a FINAL \
         ANY INNER JOIN (SELECT conversion_id, order_id FROM conversions FINAL) AS c USING conversion_id \
         ORDER BY c.order_id",
    )
    .await;
    let rows: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        rows,
        vec![
            "R-1 bob promo_code first_sale",
            "S-1 bob promo_code promo_code",
            "S-2 alice last_touch click",
            "S-3 alice last_touch click",
            "S-4 alice last_touch click",
            "S-5 bob promo_code promo_code",
        ]
    );
    let r = admin(
        Method::GET,
        &format!("{url}/api/v1/programs/acme/promo_codes"),
        Value::Null,
    )
    .await;
    assert_eq!(
        r.json()["promo_codes"],
        json!([{"program_id": "acme", "code": "BOB10", "partner_id": "bob"}])
    );
    pipeline.stop().await;
    edge.stop().await;
}
