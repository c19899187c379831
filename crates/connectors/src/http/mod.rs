//! `kind = "http"`: POSTs each change as JSON to a URL — a generic signed outbound
//! webhook. Receivers verify `Syncflow-Signature` (see `signature`) and dedupe by
//! `Idempotency-Key`, which is stable across retries of the same delivery.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use syncflow_core::sync::LinkUpdate;

use crate::{retry, signature, Connector, Outcome, PushRequest};

/// Per-request timeout when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where changes are POSTed.
    pub url: String,
    /// HMAC secret for `Syncflow-Signature`; unsigned when absent.
    pub secret: Option<String>,
    /// Per-request timeout, e.g. "10s".
    pub timeout: Option<String>,
    /// Extra headers (e.g. an API key), values may use `${VAR}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpConfig {
    pub fn build(self, system: &str) -> Result<HttpConnector, String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url `{}`: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url `{}` must be http or https", self.url));
        }
        let timeout = match &self.timeout {
            Some(t) => crate::parse_duration(t)?,
            None => DEFAULT_TIMEOUT,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &self.headers {
            let name =
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name `{k}`"))?;
            let value = reqwest::header::HeaderValue::from_str(v).map_err(|_| format!("bad value for header `{k}`"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .user_agent(concat!("syncflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpConnector { system: system.to_string(), url, secret: self.secret, client, timeout })
    }
}

pub struct HttpConnector {
    system: String,
    url: reqwest::Url,
    secret: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
}

/// The JSON body of a push. Deterministic for a given delivery (no attempt number
/// or clock in it), so its hash can be part of the idempotency key.
pub fn push_body(req: &PushRequest<'_>) -> Vec<u8> {
    let c = req.change;
    let body = serde_json::json!({
        "delivery_id": req.delivery_id,
        "change": {
            "seq": c.seq, "entity": c.entity, "record_id": c.record_id, "op": c.op,
            "version": c.version, "origin": c.origin, "created_at": c.created_at,
        },
        "data": c.snapshot,
    });
    serde_json::to_vec(&body).expect("JSON values serialise")
}

/// `sf-<delivery>-<first 16 hex of sha256(body)>`: the same delivery with the same
/// payload always gets the same key; a different payload never reuses one.
pub fn idempotency_key(delivery_id: i64, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("sf-{delivery_id}-{}", &hex::encode(digest)[..16])
}

/// POSTs a signed JSON body and classifies the answer. Shared by the http
/// connector and status callbacks.
pub async fn post_signed(
    client: &reqwest::Client,
    system: &str,
    url: reqwest::Url,
    secret: Option<&str>,
    key: &str,
    body: Vec<u8>,
) -> (Outcome, Option<serde_json::Value>) {
    let mut request =
        client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").header("Idempotency-Key", key);
    if let Some(secret) = secret {
        request = request.header("Syncflow-Signature", signature::sign(secret, chrono::Utc::now().timestamp(), &body));
    }
    match request.body(body).send().await {
        Err(e) => (retry::classify_transport(system, &e), None),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let after = retry::retry_after(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                let json = serde_json::from_str(&text).ok();
                (Outcome::Delivered { http_status: Some(status), external_id: None, link: None }, json)
            } else {
                (retry::classify_status(system, status, after, &retry::body_message(&text)), None)
            }
        }
    }
}

#[async_trait::async_trait]
impl Connector for HttpConnector {
    async fn push(&self, req: PushRequest<'_>) -> Outcome {
        let body = push_body(&req);
        let key = idempotency_key(req.delivery_id, &body);
        let (outcome, json) =
            post_signed(&self.client, &self.system, self.url.clone(), self.secret.as_deref(), &key, body).await;
        match outcome {
            Outcome::Delivered { http_status, .. } => {
                // A receiver may answer with its own id for the record: keep it as the link.
                let external_id = json.as_ref().and_then(|j| j["id"].as_str()).map(str::to_string);
                let link = external_id.clone().map(|id| LinkUpdate {
                    external_id: id,
                    synced_version: req.change.version,
                    fingerprint: None,
                    snapshot: None,
                });
                Outcome::Delivered { http_status, external_id, link }
            }
            other => other,
        }
    }

    fn push_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
}

/// Status callbacks: the final outcome of a delivery, POSTed (signed) to the
/// `callback_url` of the system the change came from.
pub struct CallbackSender {
    system: String,
    url: reqwest::Url,
    secret: Option<String>,
    client: reqwest::Client,
}

impl CallbackSender {
    pub fn new(system: &str, url: &str, secret: Option<String>) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("callback_url `{url}`: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("syncflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { system: system.to_string(), url, secret, client })
    }

    pub async fn send(&self, callback_delivery_id: i64, payload: &serde_json::Value) -> Outcome {
        let body = serde_json::to_vec(payload).expect("JSON values serialise");
        let key = idempotency_key(callback_delivery_id, &body);
        let label = format!("{} (callback)", self.system);
        post_signed(&self.client, &label, self.url.clone(), self.secret.as_deref(), &key, body).await.0
    }
}
