//! A plain JSON HTTP receiver — the far end of an `http` system. It records every
//! request, verifies `Syncflow-Signature` when given a secret, applies each effect
//! once per `Idempotency-Key` (as a well-behaved receiver should), and answers from
//! a script of replies, so tests can stage outages, 429s and rejections.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// A staged answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: Value,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, retry_after: None, body: json!({}) }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self { status, retry_after: None, body: json!({"error": {"message": message}}) }
    }

    pub fn too_many(retry_after_secs: u32) -> Self {
        Self { status: 429, retry_after: Some(retry_after_secs), body: json!({"error": {"message": "slow down"}}) }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub signature_ok: Option<bool>,
    pub body: Value,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    /// Used when the script is empty.
    fallback: Option<Reply>,
    received: Vec<Received>,
    /// Effects applied, keyed by idempotency key: the first answer, replayed.
    effects: HashMap<String, Value>,
    /// Ordered list of applied effects' bodies.
    applied: Vec<Value>,
    in_flight: HashMap<String, usize>,
    max_in_flight_per_record: usize,
    /// Fraction of requests answered 500 (after the script).
    error_rate: f64,
    /// Requests per second before answering 429 with `Retry-After`; `None` = unlimited.
    rate_limit: Option<f64>,
    window: Option<(Instant, f64)>,
    /// Until when every request is answered 503.
    outage_until: Option<Instant>,
    /// Benchmarks turn this off to keep memory flat; counts are kept either way.
    drop_bodies: bool,
    applied_count: usize,
    /// Wall-clock receive time and body of each applied effect (when bodies are kept).
    log: Vec<(chrono::DateTime<chrono::Utc>, Value)>,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    secret: Option<String>,
    latency: Duration,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 with a random port. It runs until the runtime
    /// stops.
    pub async fn start(secret: Option<&str>, latency: Duration) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().expect("address"), secret, latency).await.expect("bind loopback")
    }

    /// Starts a receiver on `addr` (loopback only).
    pub async fn start_on(
        addr: std::net::SocketAddr,
        secret: Option<&str>,
        latency: Duration,
    ) -> std::io::Result<Receiver> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other("the sandbox binds loopback addresses only"));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver { inner: Arc::default(), secret: secret.map(str::to_string), latency, addr };
        let app = Router::new()
            .route("/_received", axum::routing::get(recent))
            .route("/{*path}", post(handle))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(receiver)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues replies to give, in order, before falling back to the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// Sets the reply used when the script is empty (`None` = 200 OK).
    pub fn set_fallback(&self, reply: Option<Reply>) {
        self.lock().fallback = reply;
    }

    /// Answers 429 (with `Retry-After`) past `per_second` requests in a second.
    pub fn set_rate_limit(&self, per_second: Option<f64>) {
        self.lock().rate_limit = per_second;
    }

    /// Answers every request with 503 for `d` (an outage window).
    pub fn outage(&self, d: Duration) {
        self.lock().outage_until = Some(Instant::now() + d);
    }

    /// Whether to keep request bodies (`received`, `applied`); counts are kept anyway.
    pub fn keep_bodies(&self, keep: bool) {
        self.lock().drop_bodies = !keep;
    }

    /// Number of effects applied (2xx, first time for their key).
    pub fn applied_count(&self) -> usize {
        self.lock().applied_count
    }

    /// Wall-clock receive time and body of each applied effect.
    pub fn received_log(&self) -> Vec<(chrono::DateTime<chrono::Utc>, Value)> {
        self.lock().log.clone()
    }

    /// Answers this fraction of requests (0..1) with a 500, at random.
    pub fn set_error_rate(&self, rate: f64) {
        self.lock().error_rate = rate;
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Bodies of requests applied (2xx and first time for their key), in order.
    pub fn applied(&self) -> Vec<Value> {
        self.lock().applied.clone()
    }

    /// The most requests for one record that were being handled at the same time.
    pub fn max_concurrent_per_record(&self) -> usize {
        self.lock().max_in_flight_per_record
    }
}

/// `GET /_received`: the last 50 effects applied, newest first (for people).
async fn recent(State(r): State<Receiver>) -> axum::Json<Value> {
    let inner = r.lock();
    let list: Vec<Value> = inner.applied.iter().rev().take(50).cloned().collect();
    axum::Json(json!({"applied": inner.applied_count, "recent": list}))
}

async fn handle(State(r): State<Receiver>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let wall = chrono::Utc::now();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let signature_ok = r.secret.as_deref().map(|secret| {
        // Our own scheme, or Stripe's (the same format) when it stands in for a webhook endpoint.
        let header =
            headers.get("syncflow-signature").or_else(|| headers.get("stripe-signature")).and_then(|v| v.to_str().ok());
        syncflow_connectors::signature::verify(header, &body, &[secret], chrono::Utc::now().timestamp(), 300).is_ok()
    });
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record = json["change"]["record_id"].as_str().unwrap_or("").to_string();
    {
        let mut inner = r.lock();
        let n = inner.in_flight.entry(record.clone()).or_default();
        *n += 1;
        let n = *n;
        inner.max_in_flight_per_record = inner.max_in_flight_per_record.max(n);
    }
    if !r.latency.is_zero() {
        tokio::time::sleep(r.latency).await;
    }
    let mut inner = r.lock();
    if let Some(n) = inner.in_flight.get_mut(&record) {
        *n -= 1;
    }
    let throttled = inner.rate_limit.is_some_and(|limit| {
        let (start, count) = inner.window.get_or_insert((at, 0.0));
        if at.duration_since(*start) >= Duration::from_secs(1) {
            *start = at;
            *count = 0.0;
        }
        *count += 1.0;
        *count > limit
    });
    let reply = if signature_ok == Some(false) {
        Reply::error(400, "bad signature")
    } else if inner.outage_until.is_some_and(|t| at < t) {
        Reply::error(503, "sandbox outage")
    } else if throttled {
        Reply::too_many(1)
    } else {
        match inner.script.pop_front() {
            Some(r) => r,
            None if inner.error_rate > 0.0 && rand::random::<f64>() < inner.error_rate => {
                Reply::error(500, "sandbox injected error")
            }
            None => inner.fallback.clone().unwrap_or(Reply::status(200)),
        }
    };
    let mut out_body = reply.body.clone();
    if (200..300).contains(&reply.status) {
        match key.as_ref().and_then(|k| inner.effects.get(k)) {
            Some(first) => out_body = first.clone(), // replay: the effect happened already
            None => {
                if !record.is_empty() {
                    out_body = json!({"id": format!("ext_{record}")});
                }
                if let Some(k) = &key {
                    inner.effects.insert(k.clone(), out_body.clone());
                }
                inner.applied_count += 1;
                if !inner.drop_bodies {
                    inner.applied.push(json.clone());
                    inner.log.push((wall, json.clone()));
                }
            }
        }
    }
    if inner.drop_bodies {
        drop(inner);
        return finish(reply, out_body);
    }
    inner.received.push(Received {
        at,
        path: uri.path().to_string(),
        idempotency_key: key,
        signature_ok,
        body: json,
        status: reply.status,
    });
    drop(inner);
    finish(reply, out_body)
}

fn finish(reply: Reply, body: Value) -> Response {
    let mut resp = (StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK), axum::Json(body)).into_response();
    if let Some(s) = reply.retry_after {
        resp.headers_mut().insert("retry-after", s.into());
    }
    resp
}
