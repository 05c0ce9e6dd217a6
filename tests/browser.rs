//! `tl.js` in Debian's headless Chromium (SPEC §11.2), driven over WebDriver
//! (chromedriver): follow `/r/{code}` to a local merchant page, navigate to a second
//! page, read `touchline.clickId()`, post the conversion with it, find it attributed.

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;
use serde_json::json;
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
