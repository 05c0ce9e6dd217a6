//! Requests to the edge: admin calls, signed conversions, seeding, click-throughs, metrics pages.

use super::*;

/// A response, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request with the given headers and body.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = touchline::http::client()
        .request(req)
        .await
        .expect("edge answers");
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An admin call with the test token.
pub async fn admin(method: Method, url: &str, body: Value) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    send(
        method,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Creates program `acme`, partner `alice` (gold) and link `alice-spring`.
pub async fn seed(edge_url: &str) {
    let r = admin(
        Method::PUT,
        &format!("{edge_url}/api/v1/programs/acme"),
        program_json(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::PUT,
        &format!("{edge_url}/api/v1/partners/alice"),
        serde_json::json!({"program_id": "acme", "tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{edge_url}/api/v1/links"),
        serde_json::json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring",
            "destination": "https://shop.example/spring?lang=en", "campaign": "spring",
            "utm_source": "alice", "utm_medium": "affiliate"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Signs and posts a conversions body.
pub async fn post_conversions(edge_url: &str, body: &str) -> Resp {
    let sig = touchline::signature::sign(SECRET, chrono::Utc::now().timestamp(), body.as_bytes());
    send(
        Method::POST,
        &format!("{edge_url}/api/v1/conversions"),
        &[
            ("x-touchline-signature", &sig),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Asserts that a metrics page passes `promtool check metrics` (SPEC §3.4;
/// scripts/test.sh installs promtool).
pub fn assert_promtool_clean(text: &str) {
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required (scripts/test.sh installs it)");
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Partner `alice` (gold) and her link `alice-spring` in program `acme`.
pub async fn seed_partner_and_link(url: &str) {
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/alice"),
        serde_json::json!({"program_id": "acme", "tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        serde_json::json!({"program_id": "acme", "partner_id": "alice", "code": "alice-spring",
            "destination": "https://shop.example/"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Follows referral link `code` as a browser with `user_agent`; the click id the
/// redirect carries (`tl_click`).
pub async fn click_through(url: &str, code: &str, user_agent: &str) -> String {
    let r = send(
        Method::GET,
        &format!("{url}/r/{code}"),
        &[("user-agent", user_agent)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let location = r.headers["location"].to_str().unwrap();
    location
        .split("tl_click=")
        .nth(1)
        .and_then(|q| q.split('&').next())
        .expect("the redirect carries the click id")
        .to_string()
}

/// Creates `program` from `body`, its partner `partner` (gold) and link `code` to
/// `destination`; the program as the API answered it.
pub async fn seed_program(
    url: &str,
    program: &str,
    body: Value,
    (partner, code, destination): (&str, &str, &str),
) -> Value {
    let created = admin(
        Method::PUT,
        &format!("{url}/api/v1/programs/{program}"),
        body,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let r = admin(
        Method::PUT,
        &format!("{url}/api/v1/partners/{partner}"),
        serde_json::json!({"program_id": program, "tier": "gold"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = admin(
        Method::POST,
        &format!("{url}/api/v1/links"),
        serde_json::json!({"program_id": program, "partner_id": partner, "code": code,
            "destination": destination}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    created.json()
}

/// A key made by the operator from `body` (`POST /api/v1/keys`); its secret, shown once.
pub async fn make_key(url: &str, body: Value) -> String {
    let r = admin(Method::POST, &format!("{url}/api/v1/keys"), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["key"].as_str().unwrap().to_string()
}
