//! Headless Chromium over WebDriver (chromedriver): the browser tests' harness. Plain
//! WebDriver HTTP through the tests' own client, no browser-automation crate.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::send;
use super::processes::{child_log, free_port, wait_port, Proc};

/// WebDriver's key of an element reference in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session of headless Chromium, with the flags this machine needs.
pub struct Browser {
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
    pub async fn start() -> Browser {
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

    pub async fn call(&self, method: Method, path: &str, body: Value) -> Value {
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

    pub async fn go(&self, url: &str) {
        self.call(Method::POST, "/url", json!({"url": url})).await;
    }

    pub async fn url(&self) -> String {
        self.call(Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn run(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    pub async fn stop(self) {
        let _ = send(Method::DELETE, &self.base, &[], String::new()).await;
        drop(self.driver);
    }

    /// The reference of the element `css` selects.
    pub async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    /// Types `text` into the field `css` selects, as a person would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Runs `script` until it returns something other than `null` (or `false`), for at
    /// most `secs` seconds; its last answer.
    pub async fn wait_for(&self, script: &str, secs: u64) -> Value {
        let mut last = Value::Null;
        for _ in 0..secs * 10 {
            last = self.run(script).await;
            if !last.is_null() && last != json!(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// The window as a PNG, at `width`×`height`.
    pub async fn screenshot(&self, width: u32, height: u32) -> Vec<u8> {
        use base64::Engine as _;
        self.call(
            Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
        let png = self.call(Method::GET, "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }
}
