//! `tl.js` in Debian's headless Chromium (SPEC §11.2), driven over WebDriver
//! (chromedriver): follow `/r/{code}` to a local merchant page, navigate to a second
//! page, read `touchline.clickId()`, post the conversion with it, find it attributed.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A merchant's two pages on `localhost` (another host than the edge's 127.0.0.1), each
/// with the edge's `tl.js`.
async fn start_shop(edge: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let edge = edge.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let next = if path.starts_with("/landing") {
                    r#"<a id="next" href="/checkout">to checkout</a>"#
                } else {
                    r#"<p id="done">checkout</p>"#
                };
                let page = format!(
                    "<!doctype html><html><head><script src=\"{edge}/tl.js\" data-lookback-days=\"30\"></script></head><body>{next}</body></html>"
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// A WebDriver session of headless Chromium, with the flags this machine needs.
struct Browser {
    driver: Proc,
    base: String,
    _profile: Profile,
}

/// A fresh Chromium profile directory, removed at the end.
struct Profile(std::path::PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Proc(
            std::process::Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(child_log("chromedriver"))
                .spawn()
                .expect("chromedriver is required (scripts/test.sh installs chromium-driver)"),
        );
        wait_port(port, true).await;
        let profile = std::env::temp_dir().join(format!("tl-chromium-{}", uuid::Uuid::new_v4()));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        // The edge rightly takes "HeadlessChrome" for a bot, whose click credits nobody:
        // the test plays a person's browser.
        args.push("--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36".into());
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": args}}}});
        let r = send(
            Method::POST,
            &format!("http://127.0.0.1:{port}/session"),
            &[("content-type", "application/json")],
            caps.to_string(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let id = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            _profile: Profile(profile),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = send(
            method,
            &format!("{}{path}", self.base),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(Method::POST, "/url", json!({"url": url})).await;
    }

    async fn url(&self) -> String {
        self.call(Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn run(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn stop(self) {
        let _ = send(Method::DELETE, &self.base, &[], String::new()).await;
        drop(self.driver);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tl_js_carries_the_click_from_landing_to_checkout() {
    let (config, edge, pipeline, url) = live().await;
    let shop = start_shop(url.clone()).await;
    let landing = format!("http://localhost:{shop}/landing");
    seed_program(
        &url,
        "acme",
        program_json(),
        ("alice", "alice-shop", &landing),
    )
    .await;

    let browser = Browser::start().await;
    browser.go(&format!("{url}/r/alice-shop")).await;
    let landed = browser.url().await;
    let click = landed
        .split("tl_click=")
        .nth(1)
        .and_then(|q| q.split('&').next())
        .unwrap_or_else(|| panic!("landed on {landed}"))
        .to_string();
    assert!(
        landed.starts_with(&format!("http://localhost:{shop}/landing")),
        "{landed}"
    );
    browser
        .run("document.getElementById('next').click(); return true;")
        .await;
    let mut at = String::new();
    for _ in 0..100 {
        at = browser.url().await;
        if at.ends_with("/checkout")
            && browser.run("return !!window.touchline;").await == json!(true)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(at.ends_with("/checkout"), "{at}");
    let read = browser.run("return touchline.clickId();").await;
    assert_eq!(
        read,
        json!(click),
        "the second page reads the click id back"
    );
    let cookie = browser.run("return document.cookie;").await;
    assert!(
        cookie
            .as_str()
            .unwrap()
            .contains(&format!("tl_click={click}")),
        "{cookie}"
    );
    browser.stop().await;

    let sale = json!({"program_id": "acme", "order_id": "B-1", "kind": "sale", "amount": "40.00",
                      "currency": "USD", "click_id": click});
    let r = post_conversions(&url, &sale.to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let sql = format!("SELECT count() FROM attributions FINAL WHERE click_id = '{click}' AND partner_id = 'alice'");
    assert_eq!(
        wait_count(&config, &sql, 1, Duration::from_secs(60)).await,
        1
    );
    pipeline.stop().await;
    edge.stop().await;
}
