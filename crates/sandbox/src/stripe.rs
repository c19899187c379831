//! A Stripe stand-in for the parts Syncflow uses, following Stripe's documented
//! behaviour where localstripe does not: form-encoded customer CRUD, idempotency
//! keys (a replay returns the first response; the same key with other parameters is
//! a 400), `/v1/events` newest-first with `starting_after`/`ending_before`, signed
//! webhooks that are retried until acknowledged, and 429 with `Retry-After` past a
//! configured rate limit. Knobs: latency, error rate, rate limit, outages.
//!
//! Control endpoints (not Stripe's): `POST /_config/webhooks/{id}` (`url`, `secret`),
//! `DELETE /_config/data`, `POST /_sandbox/outage` (`seconds`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Map, Value};

/// Behaviour knobs.
#[derive(Debug, Clone)]
pub struct StripeOptions {
    /// Added to every API request.
    pub latency: Duration,
    /// Fraction (0..1) of API requests answered with a 500.
    pub error_rate: f64,
    /// Requests per second before 429s; `None` = unlimited.
    pub rate_limit: Option<f64>,
    /// Delays between webhook delivery attempts (its length + 1 = attempts).
    pub webhook_retries: Vec<Duration>,
    /// Seconds added to this Stripe's clock (event and object times): a negative
    /// value plays a hub whose clock runs ahead of Stripe's.
    pub clock_offset: i64,
}

impl Default for StripeOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit: None,
            webhook_retries: vec![Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(5)],
            clock_offset: 0,
        }
    }
}

struct Idempotent {
    fingerprint: String,
    status: u16,
    body: Value,
}

#[derive(Default)]
struct Data {
    customers: HashMap<String, Value>,
    /// Oldest first; listed newest first.
    events: Vec<Value>,
    idempotency: HashMap<String, Idempotent>,
    webhooks: HashMap<String, (String, String)>,
    counter: u64,
    /// Start of the current one-second rate-limit window and requests in it.
    window: Option<(Instant, f64)>,
    outage_until: Option<Instant>,
    requests: u64,
    throttled: u64,
    webhook_attempts: u64,
}

#[derive(Clone)]
pub struct StripeSandbox {
    data: Arc<Mutex<Data>>,
    options: Arc<StripeOptions>,
    client: reqwest::Client,
    pub addr: SocketAddr,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeStats {
    pub requests: u64,
    pub throttled: u64,
    pub customers: usize,
    pub webhook_attempts: u64,
}

fn stripe_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"type": kind, "message": message}}))).into_response()
}

impl StripeSandbox {
    /// Serves on `addr` (use port 0 for any); loopback addresses only.
    pub async fn start(addr: SocketAddr, options: StripeOptions) -> std::io::Result<StripeSandbox> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other("the sandbox binds loopback addresses only"));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let sandbox = StripeSandbox {
            data: Arc::default(),
            options: Arc::new(options),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
            addr: listener.local_addr()?,
        };
        let app = Router::new()
            .route("/v1/customers", post(create_customer).get(list_customers))
            .route("/v1/customers/{id}", get(get_customer).post(update_customer).delete(delete_customer))
            .route("/v1/events", get(list_events))
            .route("/_config/webhooks/{id}", post(add_webhook))
            .route("/_config/data", delete(wipe))
            .route("/_sandbox/outage", post(outage))
            .with_state(sandbox.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(sandbox)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> StripeStats {
        let d = self.lock();
        StripeStats {
            requests: d.requests,
            throttled: d.throttled,
            customers: d.customers.values().filter(|c| c["deleted"] != true).count(),
            webhook_attempts: d.webhook_attempts,
        }
    }

    /// Registers a webhook endpoint (also reachable as `POST /_config/webhooks/{id}`).
    pub fn add_webhook(&self, id: &str, url: &str, secret: &str) {
        self.lock().webhooks.insert(id.to_string(), (url.to_string(), secret.to_string()));
    }

    /// Answers every API request with 503 for `d`.
    pub fn outage(&self, d: Duration) {
        self.lock().outage_until = Some(Instant::now() + d);
    }

    fn next_id(d: &mut Data, prefix: &str) -> String {
        d.counter += 1;
        // A counter first, so ids sort by creation like Stripe's lists.
        format!("{prefix}_{:010}{:06x}", d.counter, rand::random::<u32>() & 0xff_ffff)
    }

    /// This Stripe's clock (seconds), `clock_offset` applied.
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.options.clock_offset
    }

    /// Records an event of any type at a chosen time (tests: events this subset
    /// has no API for, such as invoices, or events from the past) and sends it.
    pub fn inject_event(&self, kind: &str, object: Value, created: i64) -> String {
        let mut d = self.lock();
        self.emit_at(&mut d, kind, object, None, created)
    }

    /// Records an event and sends it to every webhook endpoint.
    fn emit(&self, d: &mut Data, kind: &str, object: Value, previous: Option<Value>) {
        let now = self.now();
        self.emit_at(d, kind, object, previous, now);
    }

    fn emit_at(&self, d: &mut Data, kind: &str, object: Value, previous: Option<Value>, created: i64) -> String {
        let id = Self::next_id(d, "evt");
        let mut data = json!({"object": object});
        if let Some(p) = previous {
            data["previous_attributes"] = p;
        }
        let event = json!({
            "id": id, "object": "event", "type": kind, "created": created,
            "livemode": false, "pending_webhooks": d.webhooks.len(), "data": data,
        });
        d.events.push(event.clone());
        for (url, secret) in d.webhooks.values().cloned() {
            let sandbox = self.clone();
            let event = event.clone();
            tokio::spawn(async move { sandbox.send_webhook(url, secret, event).await });
        }
        id
    }

    async fn send_webhook(self, url: String, secret: String, event: Value) {
        let body = serde_json::to_vec(&event).expect("JSON");
        let mut delays = self.options.webhook_retries.iter();
        loop {
            self.lock().webhook_attempts += 1;
            let header = syncflow_connectors::signature::sign(&secret, chrono::Utc::now().timestamp(), &body);
            let sent = self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", header)
                .body(body.clone())
                .send()
                .await;
            if matches!(&sent, Ok(r) if r.status().is_success()) {
                return;
            }
            match delays.next() {
                Some(d) => tokio::time::sleep(*d).await,
                None => return,
            }
        }
    }

    /// Latency, outages, random errors, auth and the rate limit, in that order.
    async fn gate(&self, headers: &HeaderMap) -> Result<(), Response> {
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        let mut d = self.lock();
        d.requests += 1;
        if d.outage_until.is_some_and(|t| Instant::now() < t) {
            return Err(stripe_error(StatusCode::SERVICE_UNAVAILABLE, "api_error", "sandbox outage"));
        }
        // Stripe takes the key as a bearer token or as the basic-auth user (`curl -u sk_…:`).
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let key = match (auth.strip_prefix("Bearer "), auth.strip_prefix("Basic ")) {
            (Some(k), _) => Some(k.to_string()),
            (_, Some(b64)) => base64_decode(b64.trim())
                .and_then(|raw| String::from_utf8(raw).ok().map(|s| s.split(':').next().unwrap_or("").to_string())),
            _ => None,
        };
        if !key.is_some_and(|k| k.starts_with("sk_")) {
            return Err(stripe_error(StatusCode::UNAUTHORIZED, "invalid_request_error", "Invalid API Key provided"));
        }
        if let Some(limit) = self.options.rate_limit {
            let now = Instant::now();
            let (start, count) = d.window.get_or_insert((now, 0.0));
            if now.duration_since(*start) >= Duration::from_secs(1) {
                *start = now;
                *count = 0.0;
            }
            if *count + 1.0 > limit {
                let retry = 1.0 - now.duration_since(*start).as_secs_f64();
                d.throttled += 1;
                let mut resp = stripe_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "Too many requests hit the API too quickly.",
                );
                resp.headers_mut().insert("retry-after", (retry.ceil().max(1.0) as u64).into());
                return Err(resp);
            }
            *count += 1.0;
        }
        if self.options.error_rate > 0.0 && rand_fraction() < self.options.error_rate {
            return Err(stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "sandbox injected error"));
        }
        Ok(())
    }

    /// Runs a mutating request under Stripe's idempotency rules.
    fn idempotent(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        params: &[(String, String)],
        run: impl FnOnce(&mut Data) -> (u16, Value),
    ) -> Response {
        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut d = self.lock();
        let mut sorted = params.to_vec();
        sorted.sort();
        let fingerprint = format!("{method} {path} {sorted:?}");
        if let Some(k) = &key {
            if let Some(prev) = d.idempotency.get(k) {
                if prev.fingerprint != fingerprint {
                    return stripe_error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        &format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."),
                    );
                }
                let mut resp = (StatusCode::from_u16(prev.status).unwrap_or(StatusCode::OK), Json(prev.body.clone()))
                    .into_response();
                resp.headers_mut().insert("idempotent-replayed", "true".parse().expect("header"));
                return resp;
            }
        }
        let (status, body) = run(&mut d);
        if let Some(k) = key {
            // Stripe saves results of requests that executed (not 5xx or 429).
            d.idempotency.insert(k, Idempotent { fingerprint, status, body: body.clone() });
        }
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response()
    }
}

/// Standard base64 (for basic auth), `None` when malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Stripe's 404 for an unknown (or deleted) customer.
fn missing_customer(id: &str) -> (u16, Value) {
    (
        404,
        json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": format!("No such customer: '{id}'")}}),
    )
}

fn rand_fraction() -> f64 {
    rand::random::<f64>()
}

/// Applies Stripe form parameters to a customer: `name`, `email`, `description`,
/// `phone`, `metadata[key]` (an empty value removes the key). Unknown parameters are
/// a 400, as in Stripe.
fn apply_params(customer: &mut Value, params: &[(String, String)]) -> Result<Option<Value>, String> {
    let mut previous = Map::new();
    for (k, v) in params {
        if let Some(meta_key) = k.strip_prefix("metadata[").and_then(|r| r.strip_suffix(']')) {
            let meta = customer["metadata"].as_object_mut().expect("metadata is an object");
            previous.entry("metadata").or_insert_with(|| Value::Object(meta.clone()));
            if v.is_empty() {
                meta.remove(meta_key);
            } else {
                meta.insert(meta_key.to_string(), Value::String(v.clone()));
            }
        } else if ["name", "email", "description", "phone"].contains(&k.as_str()) {
            let new = if v.is_empty() { Value::Null } else { Value::String(v.clone()) };
            if customer[k] != new {
                previous.insert(k.clone(), customer[k].clone());
                customer[k] = new;
            }
        } else {
            return Err(format!("Received unknown parameter: {k}"));
        }
    }
    Ok((!previous.is_empty()).then_some(Value::Object(previous)))
}

async fn create_customer(
    State(s): State<StripeSandbox>,
    method: Method,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    let sandbox = s.clone();
    s.idempotent(&headers, &method, "/v1/customers", &params, |d| {
        let id = StripeSandbox::next_id(d, "cus");
        let mut customer = json!({
            "id": id, "object": "customer", "created": sandbox.now(), "livemode": false,
            "name": null, "email": null, "description": null, "phone": null, "metadata": {},
        });
        if let Err(e) = apply_params(&mut customer, &params) {
            return (400, json!({"error": {"type": "invalid_request_error", "message": e}}));
        }
        d.customers.insert(id, customer.clone());
        sandbox.emit(d, "customer.created", customer.clone(), None);
        (200, customer)
    })
}

async fn update_customer(
    State(s): State<StripeSandbox>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    let sandbox = s.clone();
    let path = format!("/v1/customers/{id}");
    s.idempotent(&headers, &method, &path, &params, |d| {
        let Some(mut customer) = d.customers.get(&id).filter(|c| c["deleted"] != true).cloned() else {
            return missing_customer(&id);
        };
        match apply_params(&mut customer, &params) {
            Err(e) => (400, json!({"error": {"type": "invalid_request_error", "message": e}})),
            Ok(previous) => {
                d.customers.insert(id.clone(), customer.clone());
                // Stripe fires customer.updated only when something changed.
                if let Some(p) = previous {
                    sandbox.emit(d, "customer.updated", customer.clone(), Some(p));
                }
                (200, customer)
            }
        }
    })
}

async fn delete_customer(
    State(s): State<StripeSandbox>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    let sandbox = s.clone();
    let path = format!("/v1/customers/{id}");
    s.idempotent(&headers, &method, &path, &[], |d| {
        let Some(customer) = d.customers.get(&id).filter(|c| c["deleted"] != true).cloned() else {
            return missing_customer(&id);
        };
        d.customers.insert(id.clone(), json!({"id": id, "object": "customer", "deleted": true}));
        sandbox.emit(d, "customer.deleted", customer, None);
        (200, json!({"id": id, "object": "customer", "deleted": true}))
    })
}

async fn get_customer(State(s): State<StripeSandbox>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    match s.lock().customers.get(&id) {
        Some(c) => Json(c.clone()).into_response(),
        None => {
            let (status, body) = missing_customer(&id);
            (StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND), Json(body)).into_response()
        }
    }
}

/// Newest first, `limit` (1–100, default 10), `starting_after` / `ending_before`.
fn page(items: Vec<Value>, q: &HashMap<String, String>, url: &str) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return stripe_error(StatusCode::BAD_REQUEST, "invalid_request_error", "limit must be between 1 and 100"),
    };
    let pos = |id: &String| items.iter().position(|i| i["id"] == id.as_str());
    let (data, has_more) = if let Some(after) = q.get("starting_after") {
        let Some(p) = pos(after) else {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("No such object: '{after}'"),
            );
        };
        let rest = &items[p + 1..];
        (rest.iter().take(limit).cloned().collect::<Vec<_>>(), rest.len() > limit)
    } else if let Some(before) = q.get("ending_before") {
        let Some(p) = pos(before) else {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("No such object: '{before}'"),
            );
        };
        let newer = &items[..p];
        let start = newer.len().saturating_sub(limit);
        (newer[start..].to_vec(), start > 0)
    } else {
        (items.iter().take(limit).cloned().collect(), items.len() > limit)
    };
    Json(json!({"object": "list", "url": url, "has_more": has_more, "data": data})).into_response()
}

async fn list_events(
    State(s): State<StripeSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    let events: Vec<Value> = {
        let d = s.lock();
        d.events.iter().rev().filter(|e| q.get("type").is_none_or(|t| e["type"] == t.as_str())).cloned().collect()
    };
    page(events, &q, "/v1/events")
}

async fn list_customers(
    State(s): State<StripeSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.gate(&headers).await {
        return r;
    }
    let mut customers: Vec<Value> = s.lock().customers.values().filter(|c| c["deleted"] != true).cloned().collect();
    customers.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
    page(customers, &q, "/v1/customers")
}

async fn add_webhook(
    State(s): State<StripeSandbox>,
    Path(id): Path<String>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    match (params.get("url"), params.get("secret")) {
        (Some(url), Some(secret)) => {
            s.add_webhook(&id, url, secret);
            Json(json!({"id": id, "url": url})).into_response()
        }
        _ => stripe_error(StatusCode::BAD_REQUEST, "invalid_request_error", "url and secret are required"),
    }
}

async fn wipe(State(s): State<StripeSandbox>) -> impl IntoResponse {
    let mut d = s.lock();
    d.customers.clear();
    d.events.clear();
    d.idempotency.clear();
    StatusCode::OK
}

async fn outage(State(s): State<StripeSandbox>, Form(params): Form<HashMap<String, String>>) -> Response {
    let secs: f64 = params.get("seconds").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    s.outage(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
    Json(json!({"outage_seconds": secs})).into_response()
}
