//! docs/openapi.json describes what the edge does (SPEC §7): every documented operation
//! is exercised against a running edge on the real stack, every status it answers is
//! documented for that operation, error bodies use the documented codes, and 2xx JSON
//! bodies carry the documented required properties.

mod common;

use std::collections::BTreeSet;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

fn spec() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Follows a `$ref` within the document.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .trim_start_matches("#/")
            .split('/')
            .fold(spec, |node, key| &node[key]),
        None => v,
    }
}

struct Probe {
    template: &'static str,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn probe(template: &'static str, method: Method, path: &str, auth: bool, body: Value) -> Probe {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if auth {
        headers.push(("authorization".into(), format!("Bearer {ADMIN_TOKEN}")));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    Probe {
        template,
        method,
        path: path.to_string(),
        headers,
        body,
    }
}

fn signed(body: Value) -> Probe {
    let raw = body.to_string();
    let sig = touchline::signature::sign(SECRET, chrono::Utc::now().timestamp(), raw.as_bytes());
    Probe {
        template: "/api/v1/conversions",
        method: Method::POST,
        path: "/api/v1/conversions".into(),
        headers: vec![
            ("x-touchline-signature".into(), sig),
            ("content-type".into(), "application/json".into()),
        ],
        body: raw.into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_running_edge() {
    let spec = spec();
    let config = config(&[]);
    create_topics(&config).await;
    migrate(&config).await;
    let edge = start_edge(&config).await;
    let program = program_json();
    // A key to revoke, made before the probes (they run in order).
    seed(&edge.url("")).await;
    let made = admin(
        Method::POST,
        &edge.url("/api/v1/keys"),
        json!({"scope": "program", "program_id": "acme", "name": "probe"}),
    )
    .await;
    let key_id = made.json()["id"].as_str().unwrap().to_string();
    let probes = vec![
        probe(
            "/api/v1/programs/{id}",
            Method::PUT,
            "/api/v1/programs/acme",
            true,
            program.clone(),
        ),
        probe(
            "/api/v1/programs/{id}",
            Method::PUT,
            "/api/v1/programs/acme",
            true,
            program.clone(),
        ),
        probe(
            "/api/v1/programs/{id}",
            Method::PUT,
            "/api/v1/programs/bad",
            true,
            json!({"name": "x"}),
        ),
        probe(
            "/api/v1/programs/{id}",
            Method::PUT,
            "/api/v1/programs/acme",
            false,
            program,
        ),
        probe(
            "/api/v1/programs/{id}",
            Method::GET,
            "/api/v1/programs/acme",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}",
            Method::GET,
            "/api/v1/programs/none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::PUT,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::PUT,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::PUT,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            json!({"url": "ftp://crm.example/", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::PUT,
            "/api/v1/programs/none/webhooks/crm",
            true,
            json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::PUT,
            "/api/v1/programs/acme/webhooks/crm",
            false,
            json!({"url": "https://crm.example/hooks", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::GET,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::GET,
            "/api/v1/programs/acme/webhooks/none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks",
            Method::GET,
            "/api/v1/programs/acme/webhooks",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks",
            Method::GET,
            "/api/v1/programs/none/webhooks",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::DELETE,
            "/api/v1/programs/acme/webhooks/crm",
            false,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::DELETE,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/webhooks/{name}",
            Method::DELETE,
            "/api/v1/programs/acme/webhooks/crm",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::PUT,
            "/api/v1/partners/alice",
            true,
            json!({"program_id": "acme", "tier": "gold"}),
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::PUT,
            "/api/v1/partners/bob",
            true,
            json!({"program_id": "acme", "parent_id": "alice"}),
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes/{code}",
            Method::PUT,
            "/api/v1/programs/acme/promo_codes/ALICE10",
            true,
            json!({"partner_id": "alice"}),
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes/{code}",
            Method::PUT,
            "/api/v1/programs/acme/promo_codes/alice10",
            true,
            json!({"partner_id": "bob"}),
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes/{code}",
            Method::PUT,
            "/api/v1/programs/acme/promo_codes/NOBODY",
            true,
            json!({"partner_id": "nobody"}),
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes/{code}",
            Method::PUT,
            "/api/v1/programs/none/promo_codes/X",
            true,
            json!({"partner_id": "alice"}),
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes/{code}",
            Method::PUT,
            "/api/v1/programs/acme/promo_codes/X",
            false,
            json!({"partner_id": "alice"}),
        ),
        probe(
            "/api/v1/analytics/{report}",
            Method::GET,
            "/api/v1/analytics/overview?program_id=acme",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/analytics/{report}",
            Method::GET,
            "/api/v1/analytics/funnel?program_id=acme&group_by=visitor",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/analytics/{report}",
            Method::GET,
            "/api/v1/analytics/overview?program_id=none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/analytics/{report}",
            Method::GET,
            "/api/v1/analytics/overview?program_id=acme",
            false,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes",
            Method::GET,
            "/api/v1/programs/acme/promo_codes",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/programs/{id}/promo_codes",
            Method::GET,
            "/api/v1/programs/none/promo_codes",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::PUT,
            "/api/v1/partners/alice",
            true,
            json!({"program_id": "acme", "parent_id": "bob"}),
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::GET,
            "/api/v1/partners/alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::GET,
            "/api/v1/partners/none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::PATCH,
            "/api/v1/partners/bob",
            true,
            json!({"tier": "silver"}),
        ),
        probe(
            "/api/v1/partners/{id}",
            Method::PATCH,
            "/api/v1/partners/none",
            true,
            json!({"tier": "silver"}),
        ),
        probe(
            "/api/v1/links",
            Method::POST,
            "/api/v1/links",
            true,
            json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring", "destination": "https://shop.example/"}),
        ),
        probe(
            "/api/v1/links",
            Method::POST,
            "/api/v1/links",
            true,
            json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring", "destination": "https://shop.example/"}),
        ),
        probe(
            "/api/v1/links",
            Method::POST,
            "/api/v1/links",
            true,
            json!({"program_id": "acme"}),
        ),
        probe(
            "/api/v1/links/{code}",
            Method::GET,
            "/api/v1/links/alice-spring",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/links/{code}",
            Method::GET,
            "/api/v1/links/none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/links/{code}",
            Method::PATCH,
            "/api/v1/links/alice-spring",
            true,
            json!({"status": "active"}),
        ),
        probe(
            "/r/{code}",
            Method::GET,
            "/r/alice-spring",
            false,
            Value::Null,
        ),
        probe("/r/{code}", Method::GET, "/r/none", false, Value::Null),
        probe(
            "/r/{code}",
            Method::HEAD,
            "/r/alice-spring",
            false,
            Value::Null,
        ),
        signed(json!({"program_id": "acme", "order_id": "O-1", "kind": "sale", "amount": "10.00"})),
        signed(json!({"program_id": "acme", "order_id": "O-2", "kind": "sale", "amount": "-1"})),
        probe(
            "/api/v1/conversions",
            Method::POST,
            "/api/v1/conversions",
            false,
            json!({"program_id": "acme", "order_id": "O-3", "kind": "lead"}),
        ),
        probe(
            "/api/v1/commissions",
            Method::GET,
            "/api/v1/commissions?program_id=acme&status=held",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/commissions",
            Method::GET,
            "/api/v1/commissions?program_id=acme&status=booked",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/commissions",
            Method::GET,
            "/api/v1/commissions?program_id=acme",
            false,
            Value::Null,
        ),
        probe(
            "/api/v1/commissions/review",
            Method::POST,
            "/api/v1/commissions/review",
            true,
            json!({"program_id": "acme", "commission_ids": ["0193a3b2-7c4e-7000-8000-000000000001"], "action": "approve"}),
        ),
        probe(
            "/api/v1/commissions/review",
            Method::POST,
            "/api/v1/commissions/review",
            true,
            json!({"program_id": "acme", "commission_ids": [], "action": "approve"}),
        ),
        probe(
            "/api/v1/payouts",
            Method::POST,
            "/api/v1/payouts",
            true,
            json!({"program_id": "acme", "up_to": "2026-01-31T23:59:59Z"}),
        ),
        probe(
            "/api/v1/payouts",
            Method::POST,
            "/api/v1/payouts",
            true,
            json!({"program_id": "acme", "up_to": "2999-01-31T23:59:59Z"}),
        ),
        probe(
            "/api/v1/payouts/{id}",
            Method::GET,
            "/api/v1/payouts/0193a3b2-7c4e-7000-8000-000000000009?program_id=acme",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/payouts/{id}",
            Method::GET,
            "/api/v1/payouts/0193a3b2-7c4e-7000-8000-000000000009",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys",
            Method::POST,
            "/api/v1/keys",
            true,
            json!({"scope": "partner", "program_id": "acme", "partner_id": "alice", "name": "dashboard"}),
        ),
        probe(
            "/api/v1/keys",
            Method::POST,
            "/api/v1/keys",
            true,
            json!({"scope": "partner", "program_id": "acme", "name": "dashboard"}),
        ),
        probe(
            "/api/v1/keys",
            Method::GET,
            "/api/v1/keys?program_id=acme",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys",
            Method::GET,
            "/api/v1/keys?program_id=none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys",
            Method::GET,
            "/api/v1/keys",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys/{id}",
            Method::DELETE,
            &format!("/api/v1/keys/{key_id}"),
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys/{id}",
            Method::DELETE,
            "/api/v1/keys/none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/keys/{id}",
            Method::DELETE,
            &format!("/api/v1/keys/{key_id}"),
            false,
            Value::Null,
        ),
        probe(
            "/api/v1/me",
            Method::GET,
            "/api/v1/me?partner_id=alice",
            true,
            Value::Null,
        ),
        probe("/api/v1/me", Method::GET, "/api/v1/me", true, Value::Null),
        probe(
            "/api/v1/me",
            Method::GET,
            "/api/v1/me?partner_id=none",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/links",
            Method::GET,
            "/api/v1/me/links?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/links",
            Method::POST,
            "/api/v1/me/links?partner_id=alice",
            true,
            json!({"destination": "https://acme.example/spring", "sub_ids": ["mail"]}),
        ),
        probe(
            "/api/v1/me/links",
            Method::POST,
            "/api/v1/me/links?partner_id=alice",
            true,
            json!({"destination": "https://elsewhere.example/"}),
        ),
        probe(
            "/api/v1/me/commissions",
            Method::GET,
            "/api/v1/me/commissions?partner_id=alice&status=held",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/commissions",
            Method::GET,
            "/api/v1/me/commissions?partner_id=alice&program_id=x",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/balance",
            Method::GET,
            "/api/v1/me/balance?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/payouts",
            Method::GET,
            "/api/v1/me/payouts?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/payouts/{id}",
            Method::GET,
            "/api/v1/me/payouts/0193a3b2-7c4e-7000-8000-000000000009?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/disputes",
            Method::POST,
            "/api/v1/me/disputes?partner_id=alice",
            true,
            json!({"order_id": "INV-9", "message": "referred by me"}),
        ),
        probe(
            "/api/v1/me/disputes",
            Method::POST,
            "/api/v1/me/disputes?partner_id=alice",
            true,
            json!({"order_id": "INV-9", "message": "referred by me"}),
        ),
        probe(
            "/api/v1/me/disputes",
            Method::POST,
            "/api/v1/me/disputes?partner_id=alice",
            true,
            json!({"message": "no target"}),
        ),
        probe(
            "/api/v1/me/disputes",
            Method::GET,
            "/api/v1/me/disputes?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/disputes",
            Method::GET,
            "/api/v1/disputes?program_id=acme&status=open",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/disputes",
            Method::GET,
            "/api/v1/disputes?program_id=acme&status=lost",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/disputes/{id}/resolve",
            Method::POST,
            "/api/v1/disputes/0193a3b2-7c4e-7000-8000-000000000009/resolve",
            true,
            json!({"action": "reject"}),
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::PUT,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            json!({"url": "https://alice.example/pb", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::PUT,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            json!({"url": "https://alice.example/pb", "secret": "whsec-0123456789abcdef", "events": ["commission.created"]}),
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::PUT,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            json!({"url": "ftp://x/"}),
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::GET,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::GET,
            "/api/v1/me/postbacks/none?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/postbacks",
            Method::GET,
            "/api/v1/me/postbacks?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::DELETE,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            Value::Null,
        ),
        probe(
            "/api/v1/me/postbacks/{name}",
            Method::DELETE,
            "/api/v1/me/postbacks/crm?partner_id=alice",
            true,
            Value::Null,
        ),
        // acme has no Stripe secret: the documented 404 (tests/stripe.rs books through it).
        probe(
            "/api/v1/integrations/stripe/{id}",
            Method::POST,
            "/api/v1/integrations/stripe/acme",
            false,
            json!({"id": "evt_1", "type": "invoice.paid"}),
        ),
        probe("/tl.js", Method::GET, "/tl.js", false, Value::Null),
        probe("/dashboard", Method::GET, "/dashboard", false, Value::Null),
        probe(
            "/dashboard.js",
            Method::GET,
            "/dashboard.js",
            false,
            Value::Null,
        ),
        probe(
            "/dashboard.css",
            Method::GET,
            "/dashboard.css",
            false,
            Value::Null,
        ),
        probe("/healthz", Method::GET, "/healthz", false, Value::Null),
        probe("/readyz", Method::GET, "/readyz", false, Value::Null),
        probe("/metrics", Method::GET, "/metrics", false, Value::Null),
    ];
    let error_codes: BTreeSet<String> = spec["components"]["schemas"]["Error"]["properties"]
        ["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut covered = BTreeSet::new();
    for p in probes {
        let method = p.method.as_str().to_ascii_lowercase();
        let operation = &spec["paths"][p.template][&method];
        assert!(
            operation.is_object(),
            "{} {} is not documented",
            p.method,
            p.template
        );
        let headers: Vec<(&str, &str)> = p
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = send(p.method.clone(), &edge.url(&p.path), &headers, p.body).await;
        let status = r.status.as_u16().to_string();
        let documented = &operation["responses"][&status];
        assert!(
            documented.is_object(),
            "{} {} answered {status}, which is not documented",
            p.method,
            p.path
        );
        covered.insert((p.template, method.clone()));
        let documented = resolve(&spec, documented);
        let Some(schema) = documented["content"]["application/json"]["schema"].as_object() else {
            continue;
        };
        let body: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{} {}: JSON expected", p.method, p.path));
        let schema = resolve(&spec, &Value::Object(schema.clone())).clone();
        if let Some(required) = schema["required"].as_array() {
            for key in required {
                assert!(
                    body.get(key.as_str().unwrap()).is_some(),
                    "{} {} lacks {key}: {body}",
                    p.method,
                    p.path
                );
            }
        }
        if r.status.as_u16() >= 400 {
            let code = body["error"]["code"].as_str().unwrap();
            assert!(error_codes.contains(code), "undocumented error code {code}");
        }
    }
    // Every documented operation was exercised.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            assert!(
                covered.iter().any(|(t, m)| t == path && m == method),
                "{method} {path} was not exercised"
            );
        }
    }
    edge.stop().await;
}

/// The document's webhooks section (OpenAPI 3.1) lists every event type an endpoint
/// can subscribe to, with the body delivered and the headers that sign it.
#[test]
fn the_webhooks_section_describes_every_event_type() {
    let spec = spec();
    let hooks = spec["webhooks"].as_object().expect("a webhooks section");
    let documented: BTreeSet<&str> = hooks.keys().map(String::as_str).collect();
    let types: BTreeSet<&str> = touchline::registry::WebhookEventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(documented, types);
    let event = touchline::webhooks::WebhookEvent {
        v: 1,
        id: uuid::Uuid::new_v4(),
        kind: touchline::registry::WebhookEventType::PayoutCreated,
        program_id: "acme".into(),
        partner_id: "alice".into(),
        created_at: chrono::Utc::now(),
        data: json!({}),
    };
    let body = serde_json::to_value(&event).unwrap();
    for (name, item) in hooks {
        let post = &item["post"];
        let schema = resolve(
            &spec,
            &post["requestBody"]["content"]["application/json"]["schema"],
        );
        for required in schema["required"].as_array().unwrap() {
            let key = required.as_str().unwrap();
            assert!(body.get(key).is_some(), "{name}: {key} is not delivered");
        }
        let headers: BTreeSet<String> = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| resolve(&spec, p)["name"].as_str().unwrap().to_lowercase())
            .collect();
        for h in [
            touchline::signature::HEADER,
            touchline::webhooks::delivery::EVENT_ID_HEADER,
            touchline::webhooks::delivery::EVENT_TYPE_HEADER,
        ] {
            assert!(headers.contains(h), "{name}: {h} not documented");
        }
    }
}

/// Every route of the edge's table is documented, with the roles the table gives it
/// (`x-roles`), and the document has no route the table lacks.
#[test]
fn the_documented_roles_are_the_route_table() {
    use touchline::edge::routes::{Access, ROUTES};
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                documented.insert((path.clone(), method.clone(), op["x-roles"].to_string()));
            }
        }
    }
    let table: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| {
            let roles = match r.access {
                Access::Roles(roles) => json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()),
                Access::Public | Access::Signed => Value::Null,
            };
            (
                r.template.to_string(),
                r.method.as_str().to_ascii_lowercase(),
                roles.to_string(),
            )
        })
        .collect();
    assert_eq!(documented, table);
}

/// README's route × scope table, as the route table gives it.
fn route_table() -> String {
    use touchline::edge::routes::{Access, Check, ROUTES};
    let mut out = String::from(
        "| method | route | who may call it | the tenant is found by |\n|---|---|---|---|\n",
    );
    for r in ROUTES {
        let who = match r.access {
            Access::Public => "anyone".to_string(),
            Access::Signed => "the program's signature (no key)".to_string(),
            Access::Roles(roles) => roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let tenant = r
            .checks
            .iter()
            .map(|c| match c {
                Check::ProgramPath => "the program in the path",
                Check::PartnerPath => "the partner in the path",
                Check::LinkPath => "the link in the path",
                Check::KeyPath => "the key in the path",
                Check::DisputePath => "the dispute in the path",
                Check::BodyProgram => "`program_id` in the body",
                Check::QueryProgram => "`program_id` in the query",
                Check::Me => "the partner key, or `?partner_id=`",
                Check::Reader => "`program_id` in the query; a partner key its own rows",
            })
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!(
            "| {} | `{}` | {who} | {} |\n",
            r.method,
            r.template,
            if tenant.is_empty() { "—" } else { &tenant }
        ));
    }
    out
}

#[test]
fn the_readme_route_table_is_the_route_table() {
    let readme = include_str!("../README.md");
    let begin = "<!-- routes: generated from src/edge/routes.rs, checked by tests/openapi.rs -->\n";
    let start = readme
        .find(begin)
        .expect("README has the route table marker")
        + begin.len();
    let end = start + readme[start..].find("\n\n").unwrap_or(readme.len() - start) + 1;
    let expected = route_table();
    assert_eq!(
        &readme[start..end],
        expected,
        "README's route table differs from the route table; it should read:\n{expected}"
    );
}
