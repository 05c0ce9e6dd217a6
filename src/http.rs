//! HTTP plumbing shared by the edge and the pipeline's admin port: the API error type
//! (mapped to status codes in one place), response helpers and the serve loop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Largest request body accepted (SPEC §3.2).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a request body may take to arrive in full (SPEC §7): a client that
/// announces a body and sends none must not hold a connection and its buffers.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An API error: the status and the `{"error":{code,message,field}}` body (SPEC §3.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_secs: Option<u32>,
    /// The methods the route takes, for a 405's `Allow`.
    pub allow: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            allow: None,
        }
    }

    /// 400 about one field of the request.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_field", message);
        e.field = Some(field.into());
        e
    }

    /// 400 for a body that is not the JSON expected.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the caller is known, the route is outside its scope.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 with `Retry-After`: the key's request budget is spent.
    pub fn too_many(retry_after_secs: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the key's request budget is spent; retry later",
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 with `Allow: {allow}` (RFC 9110 §15.5.6).
    pub fn method_not_allowed(allow: &str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed on this route (allowed: {allow})"),
        );
        e.allow = Some(allow.to_string());
        e
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 408: the body did not arrive in time; the connection is closed.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Prefixes the field path, e.g. `amount` → `[3].amount`.
    pub fn in_item(mut self, index: usize) -> Self {
        self.field = Some(match self.field {
            Some(f) => format!("[{index}].{f}"),
            None => format!("[{index}]"),
        });
        self
    }

    /// The JSON response.
    pub fn into_response(self) -> HttpResponse {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut resp = json(self.status, &body);
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        resp
    }
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text response.
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        linger(req.into_body());
        return Err(ApiError::too_large(format!("body over {limit} bytes")));
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, collect).await else {
        return Err(ApiError::request_timeout());
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(format!("body over {limit} bytes")))
        }
        Err(e) => Err(ApiError::malformed(format!("cannot read body: {e}"))),
    }
}

/// Most bytes of a refused body read and dropped, and for how long, so that the client
/// gets to read the answer.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and drops a refused body in the background, a bounded amount for a bounded
/// time (a lingering close, as nginx does): a client still writing it when the answer
/// came would otherwise meet a closed connection (a broken pipe, or a reset that loses
/// the answer) instead of the `413`.
fn linger(body: Incoming) {
    tokio::spawn(async move {
        let drain = Limited::new(body, LINGER_BYTES).collect();
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// Something that answers HTTP requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = HttpResponse> + Send;
}

/// Serves `handler` on `listener` until `shutdown`, then lets open requests finish for
/// up to `drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: Shutdown,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let service = hyper::service::service_fn(move |req| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline");
    }
}

/// An HTTP/1 client for tools and tests (demo, loadgen).
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http()
}

/// Refuses JSON that a lenient parser would quietly make sense of (SPEC §7): a key twice
/// in one object (serde_json keeps the last), at any depth, and bytes after the value (a
/// deserializer stops at the first complete one). The error names the key.
// Long on purpose: a single-pass scanner whose states read best as one loop.
pub fn strict_json(body: &[u8]) -> Result<(), ApiError> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

    /// Walks a value; carries the path of where it is, for the error.
    struct Walk(String);

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(Walk(format!("{}[{i}]", self.0)))?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.0.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.0)
                };
                if !seen.insert(key) {
                    return Err(A::Error::custom(format!("duplicate key `{path}`")));
                }
                map.next_value_seed(Walk(path))?;
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = Walk(String::new()).deserialize(&mut de);
    if let Err(e) = walked {
        let msg = e.to_string();
        return Err(
            match msg
                .strip_prefix("duplicate key `")
                .and_then(|r| r.split_once('`'))
            {
                Some((path, _)) => ApiError::invalid(path, "appears twice"),
                None => ApiError::malformed(msg),
            },
        );
    }
    de.end()
        .map_err(|_| ApiError::malformed("trailing characters after the JSON value"))
}

/// The first key of `given` (a request body) that `understood` (what was made of it,
/// serialized back) does not have, at any depth: an unknown key the types ignored.
pub fn unknown_key(given: &serde_json::Value, understood: &serde_json::Value) -> Option<String> {
    fn walk(
        path: &str,
        given: &serde_json::Value,
        understood: &serde_json::Value,
    ) -> Option<String> {
        use serde_json::Value;
        match (given, understood) {
            (Value::Object(g), Value::Object(u)) => g.iter().find_map(|(k, v)| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match u.get(k) {
                    None => Some(here),
                    Some(w) => walk(&here, v, w),
                }
            }),
            (Value::Array(g), Value::Array(u)) => g
                .iter()
                .zip(u)
                .enumerate()
                .find_map(|(i, (v, w))| walk(&format!("{path}[{i}]"), v, w)),
            _ => None,
        }
    }
    walk("", given, understood)
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn duplicates_at_any_depth_and_trailing_bytes_are_refused() {
        assert!(strict_json(br#"{"a": 1, "b": [{"c": 2}]}"#).is_ok());
        assert_eq!(
            strict_json(br#"{"amount": "1", "amount": "2"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("amount")
        );
        assert_eq!(
            strict_json(br#"[{"x": 1}, {"y": {"z": 1, "z": 2}}]"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("[1].y.z")
        );
        let e = strict_json(br#"{"a": 1}}}}garbage"#).unwrap_err();
        assert_eq!(e.code, "malformed_json");
        assert!(strict_json(b"{\"a\": 1}  \n").is_ok());
    }

    #[test]
    fn unknown_keys_are_found_at_any_depth() {
        let given = serde_json::json!({"a": 1, "m": {"model": "x", "bogus": 2}, "l": [{"k": 1}]});
        let understood =
            serde_json::json!({"a": 1, "extra": 0, "m": {"model": "x"}, "l": [{"k": 1}]});
        assert_eq!(unknown_key(&given, &understood).as_deref(), Some("m.bogus"));
        assert_eq!(unknown_key(&understood, &understood), None);
    }
}
