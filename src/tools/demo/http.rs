//! The demo's HTTP client: what a browser, a merchant's server and the operator send
//! to the edge.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

use super::SECRET;

pub(super) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub(super) struct Http {
    pub client: Client,
    pub base: String,
    pub admin_token: String,
    pub done: AtomicU64,
}

pub(super) struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    /// `name=value` of the Set-Cookie header, as a browser would send it back.
    pub cookie: Option<String>,
    pub body: Bytes,
}

impl Http {
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await
            .context("edge request")?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let cookie = header("set-cookie").and_then(|c| c.split(';').next().map(str::to_string));
        let body = resp.into_body().collect().await?.to_bytes();
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(Reply {
            status,
            location,
            cookie,
            body,
        })
    }

    pub(super) async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<()> {
        let auth = format!("Bearer {}", self.admin_token);
        let r = self
            .send(
                method,
                path,
                &[
                    ("authorization", auth),
                    ("content-type", "application/json".into()),
                ],
                body.to_string().into_bytes(),
            )
            .await?;
        if !r.status.is_success() {
            bail!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }

    /// A call with `token` as bearer: the status and the JSON answer (null if none).
    pub(super) async fn keyed(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
        ];
        let r = self.send(method, path, &headers, body).await?;
        Ok((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ))
    }

    pub(super) async fn convert(&self, body: Value) -> anyhow::Result<()> {
        let raw = body.to_string();
        let sig =
            touchline::signature::sign(SECRET, chrono::Utc::now().timestamp(), raw.as_bytes());
        let r = self
            .send(
                Method::POST,
                "/api/v1/conversions",
                &[
                    ("x-touchline-signature", sig),
                    ("content-type", "application/json".into()),
                ],
                raw.into_bytes(),
            )
            .await?;
        if r.status != StatusCode::ACCEPTED {
            bail!(
                "conversion refused: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(())
    }
}
