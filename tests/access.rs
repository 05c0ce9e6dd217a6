//! Keys and scopes (SPEC §9) on the real stack: every route of the edge's table walked
//! with every kind of caller, the answer checked, and after each refused write the
//! registry and the ledger compared with what they were before.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use touchline::access::keys::{generate, hash_secret};
use touchline::access::{ApiKey, KeyScope};
use touchline::edge::routes::ROUTES;
use touchline::engine::Status;
use touchline::registry::Entity;
use touchline::sink::{Batch, RowKey, Sink, StatusRow, Step};
use uuid::Uuid;

/// The callers with a key or token, in the order of [`Case::expect`].
const CALLERS: [&str; 6] = [
    "operator",
    "own program",
    "other program",
    "own partner",
    "other partner of the program",
    "partner of another program",
];

/// Callers that never authenticate: revoked, expired, none, malformed (four forms).
const UNAUTHENTICATED: [&str; 7] = [
    "revoked",
    "expired",
    "none",
    "empty bearer",
    "basic scheme",
    "bare prefix",
    "unknown key",
];

struct Case {
    method: Method,
    template: &'static str,
    path: String,
    body: Value,
    /// The status each of [`CALLERS`] gets.
    expect: [u16; 6],
    /// An operator request made before each allowed call (recreating what the
    /// previous allowed call removed).
    setup: Option<(Method, String, Value)>,
}

fn case(method: Method, template: &'static str, path: &str, body: Value, expect: [u16; 6]) -> Case {
    Case {
        method,
        template,
        path: path.to_string(),
        body,
        expect,
        setup: None,
    }
}

/// The secrets of every caller.
struct Keys {
    by_caller: Vec<String>,
    revoked: String,
    expired: String,
}

impl Keys {
    fn authorization(&self, caller: &str) -> Option<String> {
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        match caller {
            "operator" => bearer(ADMIN_TOKEN),
            "revoked" => bearer(&self.revoked),
            "expired" => bearer(&self.expired),
            "none" => None,
            "empty bearer" => Some("Bearer ".into()),
            "basic scheme" => Some(format!("Basic {ADMIN_TOKEN}")),
            "bare prefix" => bearer("tlk_"),
            "unknown key" => bearer(&generate().1),
            other => {
                let i = CALLERS.iter().position(|c| *c == other).unwrap();
                bearer(&self.by_caller[i])
            }
        }
    }
}

async fn call(url: &str, auth: Option<&str>, method: Method, path: &str, body: &Value) -> Resp {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    send(method, &format!("{url}{path}"), &headers, body).await
}

async fn key(url: &str, by: &str, body: Value) -> (String, String) {
    let r = call(url, Some(by), Method::POST, "/api/v1/keys", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{body}: {:?}", r.body);
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// Everything a refused request must leave as it was.
async fn state(config: &touchline::config::Config, edge: &RunningEdge) -> String {
    let (mut entities, _) = edge.registry.store().load().await.unwrap();
    entities.sort_by_key(|e| serde_json::to_string(e).unwrap());
    let mut out = serde_json::to_string(&entities).unwrap();
    for sql in [
        "SELECT commission_id, step, status, actor FROM commission_status FINAL ORDER BY commission_id, step",
        "SELECT payout_id, partner_id, amount FROM payouts FINAL ORDER BY payout_id, partner_id",
        "SELECT commission_id, amount FROM commissions FINAL ORDER BY commission_id",
        "SELECT dispute_id, version, status, amount FROM disputes FINAL ORDER BY dispute_id",
    ] {
        out.push_str(&format!("{:?}", ch_query(config, sql).await));
    }
    out
}

/// A ledger row written as the pipeline writes it: its step of `status`, at `at`.
fn step(n: u128, status: Status, at: chrono::DateTime<Utc>) -> StatusRow {
    let row = RowKey {
        commission_id: Uuid::from_u128(n),
        conversion_id: Uuid::from_u128(1000 + n),
        program_id: "acme",
        partner_id: "alice",
        kind: "direct",
        amount: "10.00".parse().unwrap(),
        currency: "USD",
    };
    let reason = if status == Status::Held {
        "review_above"
    } else {
        ""
    };
    StatusRow::step(
        &row,
        Step {
            step: 0,
            status,
            reason,
            actor: "pipeline",
            at,
        },
    )
}

struct World {
    config: touchline::config::Config,
    edge: RunningEdge,
    url: String,
    keys: Keys,
    revocable: String,
    payout: Uuid,
    held: Uuid,
    dispute: Uuid,
}

async fn world() -> World {
    let config = config(&[
        ("TOUCHLINE__ACCESS__RATE_PER_KEY", "100000"),
        ("TOUCHLINE__ACCESS__BURST", "100000"),
    ]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    seed(&url).await;
    let op = format!("Bearer {ADMIN_TOKEN}");
    for (path, body) in [
        ("/api/v1/programs/globex", program_json()),
        ("/api/v1/partners/bob", json!({"program_id": "acme"})),
        ("/api/v1/partners/gina", json!({"program_id": "globex"})),
        (
            "/api/v1/programs/acme/webhooks/crm",
            json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        (
            "/api/v1/programs/acme/promo_codes/ALICE10",
            json!({"partner_id": "alice"}),
        ),
    ] {
        let r = call(&url, Some(&op), Method::PUT, path, &body).await;
        assert!(r.status.is_success(), "{path}: {:?}", r.body);
    }
    let program_key = |p: &str| json!({"scope": "program", "program_id": p, "name": "merchant"});
    let partner_key = |p: &str, partner: &str| json!({"scope": "partner", "program_id": p, "partner_id": partner, "name": "dashboard"});
    let (_, acme) = key(&url, &op, program_key("acme")).await;
    let (_, globex) = key(&url, &op, program_key("globex")).await;
    let acme_auth = format!("Bearer {acme}");
    let (_, alice) = key(&url, &acme_auth, partner_key("acme", "alice")).await;
    let (_, bob) = key(&url, &acme_auth, partner_key("acme", "bob")).await;
    let (_, gina) = key(&url, &op, partner_key("globex", "gina")).await;
    let (revocable, _) = key(&url, &acme_auth, partner_key("acme", "bob")).await;
    let (revoked_id, revoked) = key(&url, &op, program_key("acme")).await;
    let r = call(
        &url,
        Some(&op),
        Method::DELETE,
        &format!("/api/v1/keys/{revoked_id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // An expired key: the API refuses an expiry in the past, so it is stored directly,
    // as a key whose time ran out would be.
    let (id, expired) = generate();
    let stale = ApiKey {
        id,
        scope: KeyScope::Program,
        program_id: "acme".into(),
        partner_id: None,
        name: "old".into(),
        hash: hash_secret(&expired),
        created_at: Utc::now() - chrono::Duration::days(2),
        expires_at: Some(Utc::now() - chrono::Duration::days(1)),
        revoked_at: None,
        created_by: "admin".into(),
    };
    edge.registry
        .store()
        .put(&Entity::Key(stale))
        .await
        .unwrap();
    edge.registry.refresh().await.unwrap();

    // The ledger: a held row to review, an approved one paid out an hour ago.
    let sink = touchline::sink::clickhouse::ClickHouseSink::new(&config.clickhouse);
    let now = Utc::now();
    let held = Uuid::from_u128(1);
    let mut rows = vec![
        step(1, Status::Held, now - chrono::Duration::hours(3)),
        step(2, Status::Approved, now - chrono::Duration::hours(3)),
    ];
    rows[1].reason = "hold ended".into();
    sink.write(&Batch {
        statuses: rows,
        ..Batch::default()
    })
    .await
    .unwrap();
    let up_to = chrono::DateTime::from_timestamp((now - chrono::Duration::hours(1)).timestamp(), 0)
        .unwrap();
    let body = json!({"program_id": "acme", "up_to": up_to.to_rfc3339()});
    let r = call(&url, Some(&op), Method::POST, "/api/v1/payouts", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let payout = Uuid::parse_str(r.json()["payout_id"].as_str().unwrap()).unwrap();
    let paid: rust_decimal::Decimal = r.json()["lines"][0]["amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(paid, rust_decimal::Decimal::new(10, 0));
    // A dispute of alice's held row, opened for her by the operator.
    let r = call(
        &url,
        Some(&op),
        Method::POST,
        "/api/v1/me/disputes?partner_id=alice",
        &json!({"commission_id": held, "claimed_amount": "15.00", "message": "the order was 150.00"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let dispute = Uuid::parse_str(r.json()["dispute_id"].as_str().unwrap()).unwrap();
    World {
        config,
        edge,
        url,
        keys: Keys {
            by_caller: vec![ADMIN_TOKEN.into(), acme, globex, alice, bob, gina],
            revoked,
            expired,
        },
        revocable,
        payout,
        held,
        dispute,
    }
}

fn cases(w: &World) -> Vec<Case> {
    const M: [u16; 6] = [200, 200, 404, 403, 403, 403];
    const P: [u16; 6] = [200, 200, 404, 200, 404, 404];
    let all = |s: u16| [s; 6];
    let hook = json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]});
    let half_hour_ago = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 1800, 0)
        .unwrap()
        .to_rfc3339();
    let conversion =
        json!({"program_id": "acme", "order_id": "O-1", "kind": "sale", "amount": "1.00"});
    let mut delete_hook = case(
        Method::DELETE,
        "/api/v1/programs/{id}/webhooks/{name}",
        "/api/v1/programs/acme/webhooks/crm",
        Value::Null,
        [204, 204, 404, 403, 403, 403],
    );
    delete_hook.setup = Some((
        Method::PUT,
        "/api/v1/programs/acme/webhooks/crm".into(),
        hook.clone(),
    ));
    let me = |p: &str| format!("{p}?partner_id=alice");
    let postback = json!({"url": "https://alice.example/pb", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]});
    let mut delete_postback = case(
        Method::DELETE,
        "/api/v1/me/postbacks/{name}",
        &me("/api/v1/me/postbacks/pb"),
        Value::Null,
        [204, 204, 404, 204, 404, 404],
    );
    delete_postback.setup = Some((Method::PUT, me("/api/v1/me/postbacks/pb"), postback.clone()));
    vec![
        case(
            Method::GET,
            "/r/{code}",
            "/r/alice-spring",
            Value::Null,
            all(302),
        ),
        case(
            Method::HEAD,
            "/r/{code}",
            "/r/alice-spring",
            Value::Null,
            all(302),
        ),
        // Conversions take the program's signature, never a key.
        case(
            Method::POST,
            "/api/v1/conversions",
            "/api/v1/conversions",
            conversion,
            all(401),
        ),
        // Stripe's deliveries take the program's Stripe signature, never a key; this
        // program has no Stripe secret, so a key reaches nothing.
        case(
            Method::POST,
            "/api/v1/integrations/stripe/{id}",
            "/api/v1/integrations/stripe/acme",
            json!({"id": "evt_1", "type": "invoice.paid"}),
            all(404),
        ),
        case(Method::GET, "/tl.js", "/tl.js", Value::Null, all(200)),
        // The dashboard's files hold no data: every figure is an analytics call above.
        case(
            Method::GET,
            "/dashboard",
            "/dashboard",
            Value::Null,
            all(200),
        ),
        case(
            Method::GET,
            "/dashboard.js",
            "/dashboard.js",
            Value::Null,
            all(200),
        ),
        case(
            Method::GET,
            "/dashboard.css",
            "/dashboard.css",
            Value::Null,
            all(200),
        ),
        case(Method::GET, "/healthz", "/healthz", Value::Null, all(200)),
        case(Method::GET, "/readyz", "/readyz", Value::Null, all(200)),
        case(Method::GET, "/metrics", "/metrics", Value::Null, all(200)),
        case(
            Method::PUT,
            "/api/v1/programs/{id}",
            "/api/v1/programs/acme",
            program_json(),
            M,
        ),
        case(
            Method::GET,
            "/api/v1/programs/{id}",
            "/api/v1/programs/acme",
            Value::Null,
            M,
        ),
        case(
            Method::GET,
            "/api/v1/programs/{id}/webhooks",
            "/api/v1/programs/acme/webhooks",
            Value::Null,
            M,
        ),
        case(
            Method::PUT,
            "/api/v1/programs/{id}/webhooks/{name}",
            "/api/v1/programs/acme/webhooks/crm",
            hook,
            M,
        ),
        case(
            Method::GET,
            "/api/v1/programs/{id}/webhooks/{name}",
            "/api/v1/programs/acme/webhooks/crm",
            Value::Null,
            M,
        ),
        delete_hook,
        case(
            Method::GET,
            "/api/v1/programs/{id}/promo_codes",
            "/api/v1/programs/acme/promo_codes",
            Value::Null,
            M,
        ),
        case(
            Method::PUT,
            "/api/v1/programs/{id}/promo_codes/{code}",
            "/api/v1/programs/acme/promo_codes/ALICE10",
            json!({"partner_id": "alice"}),
            M,
        ),
        case(
            Method::PUT,
            "/api/v1/partners/{id}",
            "/api/v1/partners/bob",
            json!({"program_id": "acme"}),
            M,
        ),
        case(
            Method::GET,
            "/api/v1/partners/{id}",
            "/api/v1/partners/alice",
            Value::Null,
            M,
        ),
        case(
            Method::PATCH,
            "/api/v1/partners/{id}",
            "/api/v1/partners/bob",
            json!({"status": "active"}),
            M,
        ),
        case(
            Method::POST,
            "/api/v1/links",
            "/api/v1/links",
            json!({"program_id": "acme", "partner_id": "alice", "destination": "https://shop.example/"}),
            [201, 201, 404, 403, 403, 403],
        ),
        case(
            Method::GET,
            "/api/v1/links/{code}",
            "/api/v1/links/alice-spring",
            Value::Null,
            M,
        ),
        case(
            Method::PATCH,
            "/api/v1/links/{code}",
            "/api/v1/links/alice-spring",
            json!({"status": "active"}),
            M,
        ),
        case(
            Method::GET,
            "/api/v1/commissions",
            "/api/v1/commissions?program_id=acme",
            Value::Null,
            M,
        ),
        case(
            Method::POST,
            "/api/v1/commissions/review",
            "/api/v1/commissions/review",
            json!({"program_id": "acme", "commission_ids": [w.held], "action": "approve"}),
            M,
        ),
        case(
            Method::POST,
            "/api/v1/payouts",
            "/api/v1/payouts",
            json!({"program_id": "acme", "up_to": half_hour_ago}),
            M,
        ),
        case(
            Method::GET,
            "/api/v1/payouts/{id}",
            &format!("/api/v1/payouts/{}?program_id=acme", w.payout),
            Value::Null,
            M,
        ),
        case(
            Method::POST,
            "/api/v1/keys",
            "/api/v1/keys",
            json!({"scope": "partner", "program_id": "acme", "partner_id": "alice", "name": "more"}),
            [201, 201, 404, 403, 403, 403],
        ),
        case(
            Method::GET,
            "/api/v1/keys",
            "/api/v1/keys?program_id=acme",
            Value::Null,
            M,
        ),
        case(
            Method::DELETE,
            "/api/v1/keys/{id}",
            &format!("/api/v1/keys/{}", w.revocable),
            Value::Null,
            M,
        ),
        case(Method::GET, "/api/v1/me", &me("/api/v1/me"), Value::Null, P),
        case(
            Method::GET,
            "/api/v1/me/links",
            &me("/api/v1/me/links"),
            Value::Null,
            P,
        ),
        case(
            Method::POST,
            "/api/v1/me/links",
            &me("/api/v1/me/links"),
            json!({"destination": "https://acme.example/spring", "sub_ids": ["newsletter"]}),
            [201, 201, 404, 201, 404, 404],
        ),
        case(
            Method::GET,
            "/api/v1/me/commissions",
            &me("/api/v1/me/commissions"),
            Value::Null,
            P,
        ),
        case(
            Method::GET,
            "/api/v1/me/balance",
            &me("/api/v1/me/balance"),
            Value::Null,
            P,
        ),
        // A partner key reads its own rows of its own program's analytics.
        case(
            Method::GET,
            "/api/v1/analytics/{report}",
            "/api/v1/analytics/overview?program_id=acme",
            Value::Null,
            [200, 200, 404, 200, 200, 404],
        ),
        case(
            Method::GET,
            "/api/v1/analytics/{report}",
            "/api/v1/analytics/leaderboard?program_id=acme&partner_id=alice",
            Value::Null,
            P,
        ),
        case(
            Method::GET,
            "/api/v1/me/payouts",
            &me("/api/v1/me/payouts"),
            Value::Null,
            P,
        ),
        case(
            Method::GET,
            "/api/v1/me/payouts/{id}",
            &me(&format!("/api/v1/me/payouts/{}", w.payout)),
            Value::Null,
            P,
        ),
        // The program key opens it, the partner and the operator get the open one back.
        case(
            Method::POST,
            "/api/v1/me/disputes",
            &me("/api/v1/me/disputes"),
            json!({"order_id": "ORDER-77", "message": "my customer bought with my link"}),
            [200, 201, 404, 200, 404, 404],
        ),
        case(
            Method::GET,
            "/api/v1/me/disputes",
            &me("/api/v1/me/disputes"),
            Value::Null,
            P,
        ),
        case(
            Method::GET,
            "/api/v1/disputes",
            "/api/v1/disputes?program_id=acme",
            Value::Null,
            M,
        ),
        case(
            Method::GET,
            "/api/v1/me/postbacks",
            &me("/api/v1/me/postbacks"),
            Value::Null,
            P,
        ),
        case(
            Method::PUT,
            "/api/v1/me/postbacks/{name}",
            &me("/api/v1/me/postbacks/pb"),
            postback.clone(),
            [200, 201, 404, 200, 404, 404],
        ),
        case(
            Method::GET,
            "/api/v1/me/postbacks/{name}",
            &me("/api/v1/me/postbacks/pb"),
            Value::Null,
            P,
        ),
        delete_postback,
        case(
            Method::POST,
            "/api/v1/disputes/{id}/resolve",
            &format!("/api/v1/disputes/{}/resolve", w.dispute),
            json!({"action": "accept", "amount": "5.00", "note": "checked the order"}),
            M,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_its_scope_says() {
    let w = world().await;
    let cases = cases(&w);
    // The matrix covers the whole route table: a new route needs its row here.
    for r in ROUTES {
        assert!(
            cases
                .iter()
                .any(|c| c.method == r.method && c.template == r.template),
            "{} {} has no row in the access matrix",
            r.method,
            r.template
        );
    }
    let op = format!("Bearer {ADMIN_TOKEN}");
    for c in &cases {
        let public = !c.template.starts_with("/api/v1/")
            || c.template == "/api/v1/conversions"
            || c.template.starts_with("/api/v1/integrations/");
        let writes = !matches!(c.method, Method::GET | Method::HEAD);
        // Refused callers first, while everything they must not touch is there.
        let mut order: Vec<(&str, u16)> = UNAUTHENTICATED
            .iter()
            .map(|u| (*u, if public { c.expect[0] } else { 401 }))
            .collect();
        let refused: Vec<(&str, u16)> = CALLERS
            .iter()
            .zip(c.expect)
            .filter(|(_, s)| *s >= 400 && !public)
            .map(|(caller, s)| (*caller, s))
            .collect();
        order.extend(refused);
        // Then the allowed ones, the operator last.
        for i in [1, 3, 0] {
            if c.expect[i] < 400 || public {
                order.push((CALLERS[i], c.expect[i]));
            }
        }
        for (caller, want) in order {
            let auth = w.keys.authorization(caller);
            let allowed = want < 400;
            if allowed {
                if let Some((m, p, b)) = &c.setup {
                    let r = call(&w.url, Some(&op), m.clone(), p, b).await;
                    assert!(r.status.is_success(), "setup of {}: {:?}", c.path, r.body);
                }
            }
            let before = (writes && !allowed).then_some(state(&w.config, &w.edge).await);
            let r = call(&w.url, auth.as_deref(), c.method.clone(), &c.path, &c.body).await;
            assert_eq!(
                r.status.as_u16(),
                want,
                "{} {} as {caller}: {:?}",
                c.method,
                c.path,
                r.body
            );
            if let Some(before) = before {
                assert_eq!(
                    before,
                    state(&w.config, &w.edge).await,
                    "{} {} refused for {caller} changed something",
                    c.method,
                    c.path
                );
            }
        }
    }
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_resource_answers_exactly_as_a_missing_one() {
    let w = world().await;
    let globex = w.keys.authorization("other program").unwrap();
    let bob = w
        .keys
        .authorization("other partner of the program")
        .unwrap();
    for (auth, there, missing) in [
        (&globex, "/api/v1/partners/alice", "/api/v1/partners/nobody"),
        (
            &globex,
            "/api/v1/links/alice-spring",
            "/api/v1/links/no-such-link",
        ),
        (&globex, "/api/v1/programs/acme", "/api/v1/programs/nothing"),
        (
            &globex,
            "/api/v1/programs/acme/webhooks/crm",
            "/api/v1/programs/nothing/webhooks/crm",
        ),
        (
            &globex,
            "/api/v1/programs/acme/promo_codes",
            "/api/v1/programs/nothing/promo_codes",
        ),
        (
            &globex,
            "/api/v1/commissions?program_id=acme",
            "/api/v1/commissions?program_id=nothing",
        ),
        (
            &globex,
            "/api/v1/me?partner_id=alice",
            "/api/v1/me?partner_id=nobody",
        ),
        (
            &bob,
            "/api/v1/me/balance?partner_id=alice",
            "/api/v1/me/balance?partner_id=nobody",
        ),
        (
            &globex,
            "/api/v1/analytics/overview?program_id=acme",
            "/api/v1/analytics/overview?program_id=nothing",
        ),
        (
            &bob,
            "/api/v1/analytics/funnel?program_id=acme&partner_id=alice",
            "/api/v1/analytics/funnel?program_id=acme&partner_id=nobody",
        ),
    ] {
        let a = call(&w.url, Some(auth), Method::GET, there, &Value::Null).await;
        let b = call(&w.url, Some(auth), Method::GET, missing, &Value::Null).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{there}");
        assert_eq!(
            (a.status, &a.body),
            (b.status, &b.body),
            "{there} vs {missing}"
        );
    }
    // A payout of the program that the partner is not in is not its payout.
    let r = call(
        &w.url,
        Some(&bob),
        Method::GET,
        &format!("/api/v1/me/payouts/{}", w.payout),
        &Value::Null,
    )
    .await;
    let none = call(
        &w.url,
        Some(&bob),
        Method::GET,
        &format!("/api/v1/me/payouts/{}", Uuid::new_v4()),
        &Value::Null,
    )
    .await;
    assert_eq!((r.status, &r.body), (none.status, &none.body));
    // Program keys make partner keys only, and cannot create programs.
    let acme = w.keys.authorization("own program").unwrap();
    let r = call(
        &w.url,
        Some(&acme),
        Method::POST,
        "/api/v1/keys",
        &json!({"scope": "program", "program_id": "acme", "name": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = call(
        &w.url,
        Some(&acme),
        Method::PUT,
        "/api/v1/programs/newco",
        &program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_reads_its_own_ledger_and_writes_are_audited() {
    let w = world().await;
    let alice = w.keys.authorization("own partner").unwrap();
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/balance",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let b = r.json();
    // Computed from the rows this test wrote: 10.00 held, 10.00 paid.
    assert_eq!(
        (b["held"].as_str(), b["paid"].as_str()),
        (Some("10.00"), Some("10.00"))
    );
    assert_eq!(
        (b["approved"].as_str(), b["pending"].as_str()),
        (Some("0.00"), Some("0.00"))
    );
    assert_eq!(b["currency"], "USD");
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/commissions",
        &Value::Null,
    )
    .await;
    let rows = r.json()["commissions"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|e| e["partner_id"] == "alice"));
    // Both were earned three hours ago; the paid one changed an hour ago, which the
    // span does not look at.
    let ago = |h: i64| {
        (Utc::now() - chrono::Duration::hours(h))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for (span, n) in [
        (format!("from={}&to={}", ago(4), ago(2)), 2),
        (format!("from={}", ago(2)), 0),
        (format!("to={}", ago(4)), 0),
    ] {
        let path = format!("/api/v1/me/commissions?{span}");
        let r = call(&w.url, Some(&alice), Method::GET, &path, &Value::Null).await;
        let got = r.json()["commissions"].as_array().map(Vec::len);
        assert_eq!(got, Some(n), "{span}: {:?}", r.body);
    }
    for (span, field) in [
        (format!("from={}&to={}", ago(2), ago(4)), "to"),
        ("from=yesterday".to_string(), "from"),
        ("to=2200-01-01".to_string(), "to"),
    ] {
        let path = format!("/api/v1/me/commissions?{span}");
        let r = call(&w.url, Some(&alice), Method::GET, &path, &Value::Null).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{span}");
        assert_eq!(r.json()["error"]["field"], field, "{span}");
    }
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/payouts",
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["payouts"][0]["payout_id"], w.payout.to_string());
    assert_eq!(r.json()["payouts"][0]["amount"], "10.00");
    // Its own links only, with sub ids carried; a destination off the program's hosts
    // is refused by name.
    let r = call(
        &w.url,
        Some(&alice),
        Method::POST,
        "/api/v1/me/links",
        &json!({"destination": "https://evil.example/", "sub_ids": ["a"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "destination");
    let r = call(
        &w.url,
        Some(&alice),
        Method::POST,
        "/api/v1/me/links",
        &json!({"destination": "https://acme.example/x", "sub_ids": ["mail", "dec"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["sub_ids"], json!(["mail", "dec"]));
    assert_eq!(r.json()["partner_id"], "alice");
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/links",
        &Value::Null,
    )
    .await;
    let links = r.json()["links"].as_array().unwrap().clone();
    assert_eq!(links.len(), 2, "alice-spring and the new one");
    assert!(links.iter().all(|l| l["partner_id"] == "alice"));
    // Two writes with alice's key (one refused, one made), recorded with her key id.
    let key_id = w
        .edge
        .registry
        .keys_of("acme")
        .into_iter()
        .find(|k| k.partner_id.as_deref() == Some("alice"))
        .unwrap()
        .id
        .clone();
    let sql = format!(
        "SELECT route, status FROM api_audit WHERE key_id = '{key_id}' ORDER BY at, at_ms, status"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut rows = loop {
        let rows = ch_query(&w.config, &sql).await;
        if rows.len() >= 2 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    rows.sort();
    assert_eq!(
        rows,
        vec![
            vec!["/api/v1/me/links".to_string(), "201".to_string()],
            vec!["/api/v1/me/links".to_string(), "400".to_string()],
        ]
    );
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_edge_within_a_second_and_budgets_hold() {
    let config = config(&[
        ("TOUCHLINE__ACCESS__RATE_PER_KEY", "1"),
        ("TOUCHLINE__ACCESS__BURST", "3"),
    ]);
    create_topics(&config).await;
    migrate(&config).await;
    let a = start_edge(&config).await;
    let b = start_edge(&config).await;
    seed(&a.url("")).await;
    let op = format!("Bearer {ADMIN_TOKEN}");
    let (id, secret) = key(
        &a.url(""),
        &op,
        json!({"scope": "program", "program_id": "acme", "name": "m"}),
    )
    .await;
    let auth = format!("Bearer {secret}");
    let get = |edge: &RunningEdge| {
        let (url, auth) = (edge.url(""), auth.clone());
        async move {
            call(
                &url,
                Some(&auth),
                Method::GET,
                "/api/v1/programs/acme",
                &Value::Null,
            )
            .await
        }
    };
    // Within one second the other edge knows the key.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&b).await.status, StatusCode::OK);
    // A burst of three, then 429 with Retry-After; the other edge has its own bucket.
    assert_eq!(get(&a).await.status, StatusCode::OK);
    assert_eq!(get(&a).await.status, StatusCode::OK);
    assert_eq!(get(&a).await.status, StatusCode::OK);
    let r = get(&a).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let r = call(
        &a.url(""),
        Some(&op),
        Method::DELETE,
        &format!("/api/v1/keys/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["revoked_at"].is_string());
    let revoked_at = tokio::time::Instant::now();
    loop {
        let r = get(&b).await;
        if r.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the other edge still accepts a revoked key: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The listing shows the revocation and when the key was last used, never a secret.
    let r = call(
        &a.url(""),
        Some(&op),
        Method::GET,
        "/api/v1/keys?program_id=acme",
        &Value::Null,
    )
    .await;
    let listed = r.json()["keys"][0].clone();
    assert_eq!(listed["id"], id.as_str());
    assert!(listed["revoked_at"].is_string() && listed["last_used_at"].is_string());
    assert!(!r.body.windows(4).any(|w| w == b"tlk_"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_register_endpoints_in_the_operators_network() {
    let w = world().await;
    let acme = w.keys.authorization("own program").unwrap();
    let op = format!("Bearer {ADMIN_TOKEN}");
    let hook = |url: &str| json!({"url": url, "secret": "whsec-0123456789abcdef", "events": ["commission.created"]});
    for url in [
        "http://127.0.0.1:8123/",
        "http://[::1]:6379/",
        "http://localhost:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://[fc00::1]/",
        "http://[fd00::5]/",
        "http://0.0.0.0:9000/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let before = state(&w.config, &w.edge).await;
        let r = call(
            &w.url,
            Some(&acme),
            Method::PUT,
            "/api/v1/programs/acme/webhooks/x",
            &hook(url),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], "url", "{url}");
        assert_eq!(before, state(&w.config, &w.edge).await, "{url}");
    }
    // The operator's own endpoints are the operator's choice.
    let r = call(
        &w.url,
        Some(&op),
        Method::PUT,
        "/api/v1/programs/acme/webhooks/x",
        &hook("http://127.0.0.1:9000/"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_exceptions_are_honoured() {
    let config = config(&[(
        "TOUCHLINE__WEBHOOKS__ALLOWED_PRIVATE_HOSTS",
        r#"["127.0.0.1"]"#,
    )]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let url = edge.url("");
    seed(&url).await;
    let (_, secret) = key(
        &url,
        &format!("Bearer {ADMIN_TOKEN}"),
        json!({"scope": "program", "program_id": "acme", "name": "m"}),
    )
    .await;
    let auth = format!("Bearer {secret}");
    let hook = |u: &str| json!({"url": u, "secret": "whsec-0123456789abcdef", "events": ["commission.created"]});
    let r = call(
        &url,
        Some(&auth),
        Method::PUT,
        "/api/v1/programs/acme/webhooks/local",
        &hook("http://127.0.0.1:9000/"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = call(
        &url,
        Some(&auth),
        Method::PUT,
        "/api/v1/programs/acme/webhooks/local",
        &hook("http://127.0.0.2:9000/"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    edge.stop().await;
}

/// SPEC §9.1: accepting a dispute moves the partner's balance by exactly the
/// adjustment, paid with the next payout; repeating the decision books nothing; a
/// rejection books nothing; the dispute webhooks leave with the ledger's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_accepted_books_one_adjustment_and_moves_the_balance_by_it() {
    let w = world().await;
    let op = format!("Bearer {ADMIN_TOKEN}");
    let r = call(
        &w.url,
        Some(&op),
        Method::PUT,
        "/api/v1/programs/acme/webhooks/disputes",
        &json!({"url": "https://crm.example/d", "secret": "whsec-0123456789abcdef",
                "events": ["dispute.opened", "dispute.resolved", "commission.created"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let alice = w.keys.authorization("own partner").unwrap();
    let acme = w.keys.authorization("own program").unwrap();
    let balance = || async {
        let r = call(
            &w.url,
            Some(&alice),
            Method::GET,
            "/api/v1/me/balance",
            &Value::Null,
        )
        .await;
        r.json()
    };
    let before = balance().await;
    assert_eq!(before["approved"], "0.00");
    // An inquiry about an order alice says she referred, and a dispute of another's row.
    let r = call(
        &w.url,
        Some(&alice),
        Method::POST,
        "/api/v1/me/disputes",
        &json!({"order_id": "INV-404", "claimed_amount": "12.345", "message": "tracked on my side"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let inquiry = r.json();
    assert_eq!(
        (inquiry["kind"].as_str(), inquiry["status"].as_str()),
        (Some("inquiry"), Some("open"))
    );
    let bob = w
        .keys
        .authorization("other partner of the program")
        .unwrap();
    let r = call(
        &w.url,
        Some(&bob),
        Method::POST,
        "/api/v1/me/disputes",
        &json!({"commission_id": w.held, "message": "mine"}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another partner's row is not there for bob"
    );
    for (body, field) in [
        (json!({"message": "x"}), "commission_id"),
        (
            json!({"order_id": "A", "commission_id": w.held, "message": "x"}),
            "commission_id",
        ),
        (json!({"order_id": "A", "message": ""}), "message"),
        (
            json!({"order_id": "A", "message": "x", "claimed_amount": "-1"}),
            "claimed_amount",
        ),
    ] {
        let r = call(
            &w.url,
            Some(&alice),
            Method::POST,
            "/api/v1/me/disputes",
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    // The program accepts with an amount to three places: half-even to the cent.
    let id = inquiry["dispute_id"].as_str().unwrap().to_string();
    let resolve = |body: Value| {
        let (url, acme, path) = (
            w.url.clone(),
            acme.clone(),
            format!("/api/v1/disputes/{id}/resolve"),
        );
        async move { call(&url, Some(&acme), Method::POST, &path, &body).await }
    };
    for (body, field) in [
        (json!({"action": "accept"}), "amount"),
        (json!({"action": "accept", "amount": "0.004"}), "amount"),
        (json!({"action": "reject", "amount": "1.00"}), "amount"),
    ] {
        let r = resolve(body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json()["error"]["field"], field);
    }
    let r = resolve(json!({"action": "accept", "amount": "12.345", "note": "found it"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let accepted = r.json();
    assert_eq!(
        (accepted["status"].as_str(), accepted["amount"].as_str()),
        (Some("accepted"), Some("12.34"))
    );
    let adjustment = accepted["adjustment_id"].as_str().unwrap().to_string();
    let after = balance().await;
    assert_eq!(
        after["approved"], "12.34",
        "moved by exactly the adjustment"
    );
    assert_eq!(
        (after["held"].clone(), after["paid"].clone()),
        (before["held"].clone(), before["paid"].clone())
    );
    // The same decision again: the same answer, nothing booked; another one: 409.
    let rows = |sql: &'static str| {
        let config = w.config.clone();
        async move { ch_query(&config, sql).await }
    };
    let ledger = rows("SELECT count() FROM commission_status").await;
    let r = resolve(json!({"action": "accept", "amount": "12.345", "note": "found it"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["adjustment_id"], adjustment.as_str());
    let r = resolve(json!({"action": "reject"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(rows("SELECT count() FROM commission_status").await, ledger);
    assert_eq!(balance().await["approved"], "12.34");
    // The adjustment is an approved ledger row of kind adjustment, audited with the key.
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/commissions?status=approved",
        &Value::Null,
    )
    .await;
    let adj: Vec<Value> = r.json()["commissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "adjustment")
        .cloned()
        .collect();
    assert_eq!(adj.len(), 1);
    assert_eq!(adj[0]["commission_id"], adjustment.as_str());
    assert!(adj[0]["actor"].as_str().unwrap().starts_with("key:"));
    // Rejecting the dispute the world opened books nothing.
    let r = call(
        &w.url,
        Some(&acme),
        Method::POST,
        &format!("/api/v1/disputes/{}/resolve", w.dispute),
        &json!({"action": "reject", "note": "the order was 100.00"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(rows("SELECT count() FROM commission_status").await, ledger);
    // The next payout pays the adjustment.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let up_to = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0)
        .unwrap()
        .to_rfc3339();
    let r = call(
        &w.url,
        Some(&acme),
        Method::POST,
        "/api/v1/payouts",
        &json!({"program_id": "acme", "up_to": up_to}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let paid: rust_decimal::Decimal = r.json()["lines"][0]["amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(paid, "12.34".parse().unwrap());
    assert_eq!(balance().await["approved"], "0.00");
    // Both parties' listings, and the events on the outbox.
    let r = call(
        &w.url,
        Some(&alice),
        Method::GET,
        "/api/v1/me/disputes",
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["disputes"].as_array().unwrap().len(), 2);
    let r = call(
        &w.url,
        Some(&acme),
        Method::GET,
        "/api/v1/disputes?program_id=acme&status=open",
        &Value::Null,
    )
    .await;
    assert!(r.json()["disputes"].as_array().unwrap().is_empty());
    let events = read_topic(
        &w.config.kafka.brokers,
        &w.config.kafka.topics.webhooks,
        5,
        Duration::from_secs(20),
    )
    .await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"dispute.opened") && kinds.contains(&"dispute.resolved"),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"commission.created"),
        "the adjustment's creation: {kinds:?}"
    );
    w.edge.stop().await;
}
