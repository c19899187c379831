//! The Stripe HTTP client: form-encoded requests with the secret key, an
//! `Idempotency-Key` on every write, one pacing limiter for every call (Stripe's
//! limit is per account), and Stripe's error body turned into a readable failure.
//! Retriability is not decided here but in `retry`.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pacer::Pacer;
use crate::{retry, Outcome};

/// A Stripe call that did not succeed.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    /// `None` when no response arrived.
    pub status: Option<u16>,
    /// `error.message (error.code)` from Stripe's body, or the transport error.
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiFailure {
    /// The delivery outcome for this failure, decided by `retry`.
    pub fn outcome(&self, system: &str) -> Outcome {
        match self.status {
            Some(status) => retry::classify_status(system, status, self.retry_after, &self.message),
            None => Outcome::Retry { http_status: None, reason: self.message.clone(), retry_after: None },
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

pub struct StripeClient {
    system: String,
    base: reqwest::Url,
    secret_key: String,
    http: reqwest::Client,
    /// Spaces every call (pushes, polls, backfill) under this node's share of the
    /// limit; waiting calls take turns by lane, so a live push is not queued
    /// behind bulk pushes already waiting (`crate::pacer`).
    pacer: Pacer,
}

/// Requests are spaced for this fraction of the configured rate: spacing at
/// exactly the limit lets network jitter put one request too many into the
/// server's one-second window (a 429, and a pause for `Retry-After`).
const PACING_MARGIN: f64 = 0.97;

/// Form body as ordered pairs, e.g. `("metadata[syncflow_id]", "cust_…")`.
pub type Form = Vec<(String, String)>;

impl StripeClient {
    pub fn new(
        system: &str,
        base: reqwest::Url,
        secret_key: String,
        rate: f64,
        timeout: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("syncflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { system: system.to_string(), base, secret_key, http, pacer: Pacer::new(rate * PACING_MARGIN) })
    }

    /// Paces at `rate` requests per second from the next request on.
    pub fn set_rate(&self, rate: f64) {
        self.pacer.set_rate(rate * PACING_MARGIN);
    }

    fn url(&self, path: &str) -> reqwest::Url {
        self.base.join(path).expect("API paths are relative and valid")
    }

    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, ApiFailure> {
        let mut url = self.url(path);
        if !query.is_empty() {
            url.set_query(Some(&encode_form(query)));
        }
        self.send(self.http.get(url)).await
    }

    /// POST (create/update). `idempotency_key` makes a repeated request return
    /// the first one's result instead of acting twice.
    pub async fn post(&self, path: &str, form: &Form, idempotency_key: Option<&str>) -> Result<Value, ApiFailure> {
        let mut req = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encode_form(form));
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        self.send(req).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ApiFailure> {
        self.send(self.http.delete(self.url(path))).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ApiFailure> {
        // This call's turn under the rate limit, in the caller's lane.
        self.pacer.wait().await;
        let resp = req.bearer_auth(&self.secret_key).send().await.map_err(|e| {
            let reason = match retry::classify_transport(&self.system, &e) {
                Outcome::Retry { reason, .. } => reason,
                other => format!("{other:?}"),
            };
            ApiFailure { status: None, message: reason, retry_after: None }
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry::retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| ApiFailure {
                status: None,
                message: format!("unreadable answer from {}: {e}", self.system),
                retry_after: None,
            });
        }
        Err(ApiFailure { status: Some(status), message: error_message(&text), retry_after })
    }
}

/// Stripe errors read `{"error": {"message": …, "code": …, "type": …}}`; the code
/// (e.g. `resource_missing`) goes after the message.
pub fn error_message(body: &str) -> String {
    let message = retry::body_message(body);
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .filter(|c| !c.is_empty());
    match code {
        Some(code) => format!("{message} ({code})"),
        None => message,
    }
}

/// `application/x-www-form-urlencoded`, in the given order.
pub fn encode_form(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// `sf-<delivery>-<hash>` where the hash covers the method, path and form body:
/// a retried delivery replays the same key with identical parameters (Stripe
/// requires that), while a delivery whose payload differs never reuses a key
/// (Stripe keeps keys 24 h and would answer with the old result).
pub fn idempotency_key(delivery_id: i64, method: &str, path: &str, form: &Form) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(encode_form(form).as_bytes());
    format!("sf-{delivery_id}-{}", &hex::encode(hasher.finalize())[..24])
}
