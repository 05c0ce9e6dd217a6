//! A webhook receiver on loopback that records what it gets.

use super::*;

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// What the receiver answered (0: it took too long to answer at all).
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }
}

/// How a [`Receiver`] answers.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// 204 at once.
    Ok,
    /// 500 to the first `n` attempts of each event, then 200.
    FailFirst(u32),
    /// The first attempt of each event waits this long (past the sender's timeout),
    /// later ones are answered at once.
    SlowFirst(Duration),
    /// Every request waits this long, then 200.
    Delay(Duration),
}

/// A webhook receiver on loopback that records every request.
pub struct Receiver {
    pub port: u16,
    requests: Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(behavior: Behavior) -> Receiver {
        Self::start_on(free_port(), behavior).await
    }

    pub async fn start_on(port: u16, behavior: Behavior) -> Receiver {
        use hyper_util::rt::TokioIo;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
            String,
            u32,
        >::new()));
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, seen) = (Arc::clone(&log), Arc::clone(&seen));
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (log, seen) = (Arc::clone(&log), Arc::clone(&seen));
                            async move {
                                let header = |name: &str| {
                                    req.headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string()
                                };
                                let (event_id, signature) = (
                                    header("x-touchline-event-id"),
                                    header("x-touchline-signature"),
                                );
                                let body =
                                    req.into_body().collect().await.unwrap().to_bytes().to_vec();
                                let nth = {
                                    let mut seen = seen.lock().unwrap();
                                    let n = seen.entry(event_id.clone()).or_insert(0);
                                    *n += 1;
                                    *n
                                };
                                let (status, wait) = match behavior {
                                    Behavior::Ok => (204, Duration::ZERO),
                                    Behavior::FailFirst(k) if nth <= k => (500, Duration::ZERO),
                                    Behavior::FailFirst(_) => (200, Duration::ZERO),
                                    Behavior::SlowFirst(d) if nth == 1 => (0, d),
                                    Behavior::SlowFirst(_) => (200, Duration::ZERO),
                                    Behavior::Delay(d) => (200, d),
                                };
                                log.lock().unwrap().push(Received {
                                    event_id,
                                    signature,
                                    body,
                                    status,
                                });
                                tokio::time::sleep(wait).await;
                                let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                                    b"received",
                                )));
                                *r.status_mut() = StatusCode::from_u16(status.max(200)).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            port,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` distinct events were answered 2xx; the requests so far.
    pub async fn wait_acknowledged(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            let acked: std::collections::HashSet<&str> = got
                .iter()
                .filter(|r| (200..300).contains(&r.status))
                .map(|r| r.event_id.as_str())
                .collect();
            if acked.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} events acknowledged in time ({} requests)",
                acked.len(),
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that every request carries a valid signature of its body under `secret`.
pub fn assert_signed(requests: &[Received], secret: &str) {
    let now = chrono::Utc::now().timestamp();
    for r in requests {
        touchline::signature::verify(secret, Some(&r.signature), &r.body, now, 600)
            .unwrap_or_else(|e| panic!("signature of {}: {e}", r.event_id));
        let body = r.json();
        assert_eq!(body["id"].as_str(), Some(r.event_id.as_str()));
    }
}
