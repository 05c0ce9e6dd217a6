//! The HTTP side of a delivery: one signed POST per attempt, with a client whose
//! resolver refuses the operator's network for endpoints that keys registered.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{DeliveryError, EVENT_ID_HEADER, EVENT_TYPE_HEADER};
use crate::access::ssrf::{self, GuardedResolver};
use crate::config::WebhooksConfig;
use crate::registry::Webhook;
use crate::webhooks::queue::Parked;

/// Most bytes of a receiver's answer kept in a failure's `error`.
pub(super) const ERROR_TEXT: usize = 256;

type HttpsClient<R = GaiResolver> =
    Client<hyper_rustls::HttpsConnector<HttpConnector<R>>, Full<Bytes>>;

/// The HTTP clients of deliveries: one for the operator's endpoints, one whose
/// resolver refuses the operator's network, for endpoints that keys registered.
pub(super) struct Clients {
    open: HttpsClient,
    guarded: HttpsClient<GuardedResolver>,
    timeout: Duration,
    allowed_private_hosts: Vec<String>,
}

/// How one attempt ended.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    /// Empty when acknowledged.
    pub error: String,
    /// For the failure metric: status, timeout, connect, io, request.
    pub reason: &'static str,
}

impl Answer {
    fn failed(reason: &'static str, error: String) -> Self {
        Answer {
            status: 0,
            error,
            reason,
        }
    }
}

impl Clients {
    pub(super) fn new(cfg: &WebhooksConfig) -> Result<Self, DeliveryError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let guarded = GuardedResolver::new(cfg.allowed_private_hosts.clone());
        Ok(Clients {
            open: http_client(timeout, HttpConnector::new())?,
            guarded: http_client(timeout, HttpConnector::new_with_resolver(guarded))?,
            timeout,
            allowed_private_hosts: cfg.allowed_private_hosts.clone(),
        })
    }

    /// POSTs the event; an empty `error` means acknowledged (2xx in time).
    pub(super) async fn send(&self, hook: &Webhook, event: &Parked) -> Answer {
        let request = match request(hook, event) {
            Ok(r) => r,
            Err(e) => return Answer::failed("request", format!("cannot build the request: {e}")),
        };
        if hook.restricted {
            if let Some(error) = refused_literal(hook, &self.allowed_private_hosts) {
                return Answer::failed("connect", error);
            }
        }
        let ms = self.timeout.as_millis();
        match tokio::time::timeout(self.timeout, self.exchange(hook, request)).await {
            Err(_) => Answer::failed("timeout", format!("no answer within {ms} ms")),
            Ok(Err((reason, error))) => Answer::failed(reason, error),
            Ok(Ok((status, _))) if status.is_success() => Answer {
                status: status.as_u16(),
                error: String::new(),
                reason: "",
            },
            Ok(Ok((status, text))) => Answer {
                status: status.as_u16(),
                error: format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&text)
                ),
                reason: "status",
            },
        }
    }

    /// Sends the request and reads a little of the answer: what a failure says, and
    /// the connection can be reused when the answer is short.
    async fn exchange(
        &self,
        hook: &Webhook,
        request: Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Vec<u8>), (&'static str, String)> {
        let sent = if hook.restricted {
            self.guarded.request(request).await
        } else {
            self.open.request(request).await
        };
        let response = sent.map_err(|e| {
            let reason = if e.is_connect() { "connect" } else { "io" };
            (reason, error_chain(&e))
        })?;
        let status = response.status();
        let mut body = response.into_body();
        let mut text = Vec::new();
        while text.len() < ERROR_TEXT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        text.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        Ok((status, text))
    }
}

/// The signed POST of an event: signed like §3.2 with the endpoint's secret.
fn request(hook: &Webhook, event: &Parked) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let signed = crate::signature::sign(&hook.secret, Utc::now().timestamp(), &event.body);
    Request::post(hook.url.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("touchline-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header(crate::signature::HEADER, signed)
        .header(EVENT_ID_HEADER, event.event_id.to_string())
        .header(EVENT_TYPE_HEADER, event.event_type.as_str())
        .body(Full::new(Bytes::from(event.body.clone())))
}

/// Why a restricted endpoint's URL may not be requested as it is: a literal address of
/// the operator's network never reaches the resolver.
fn refused_literal(hook: &Webhook, exceptions: &[String]) -> Option<String> {
    let host = ssrf::host_of(&hook.url)?;
    if ssrf::allowed(&host, exceptions) {
        return None;
    }
    ssrf::literal(&host).map(|why| format!("refused: {host} is {why} of the operator's network"))
}

/// An HTTP client of deliveries: http and https (the system's roots), HTTP/1.1,
/// connections kept for reuse, redirects never followed.
fn http_client<R>(
    timeout: Duration,
    mut http: HttpConnector<R>,
) -> Result<HttpsClient<R>, DeliveryError>
where
    R: tower_service::Service<hyper_util::client::legacy::connect::dns::Name>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Future: Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        // A machine without CA certificates (a minimal image) still delivers to http
        // endpoints, and the embedded demo still starts; https attempts fail, recorded.
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: https webhook endpoints will fail until ca-certificates is installed");
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| DeliveryError::Client(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(https))
}

/// Bounded, single-line text of an error or an answer.
pub(super) fn bounded(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_TEXT)
        .collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_bounded_and_one_line() {
        let long = "x\n".repeat(1_000);
        let t = bounded(&long);
        assert_eq!(t.chars().count(), ERROR_TEXT);
        assert!(!t.contains('\n'));
    }
}
