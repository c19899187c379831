//! The Salesforce HTTP client: OAuth (client credentials or JWT bearer), the access
//! token cached and renewed on `401 INVALID_SESSION_ID`, `Sforce-Call-Options` on every
//! call, the error array turned into a readable failure, and the daily API budget:
//! `Sforce-Limit-Info: api-usage=N/M` is read from every response, and once our share
//! of the org's allowance is used (or Salesforce answers `REQUEST_LIMIT_EXCEEDED`) the
//! client holds off and says so (`hold`), so no delivery spends an attempt meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{retry, Outcome};

/// How long to hold off after the budget share is reached before trying again
/// (the allowance is a rolling 24 h window: usage falls as old calls age out).
const BUDGET_RECHECK: Duration = Duration::from_secs(60);
/// How long to hold off after Salesforce refused a call for the org's limit.
const LIMIT_PAUSE: Duration = Duration::from_secs(300);

pub enum Auth {
    ClientCredentials { client_id: String, secret: String },
    Jwt { client_id: String, username: String, key: Box<rsa::RsaPrivateKey>, audience: String },
}

impl Auth {
    pub fn client_credentials(client_id: String, secret: String) -> Auth {
        Auth::ClientCredentials { client_id, secret }
    }

    /// JWT bearer with an RS256 key in PEM (PKCS#8 or PKCS#1).
    pub fn jwt(client_id: String, username: String, pem: &str, audience: String) -> Result<Auth, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| "jwt key: not an RSA private key in PEM (PKCS#8 or PKCS#1)".to_string())?;
        Ok(Auth::Jwt { client_id, username, key: Box::new(key), audience })
    }

    fn form(&self, now: i64) -> Vec<(String, String)> {
        match self {
            Auth::ClientCredentials { client_id, secret } => vec![
                ("grant_type".into(), "client_credentials".into()),
                ("client_id".into(), client_id.clone()),
                ("client_secret".into(), secret.clone()),
            ],
            Auth::Jwt { client_id, username, key, audience } => vec![
                ("grant_type".into(), "urn:ietf:params:oauth:grant-type:jwt-bearer".into()),
                ("assertion".into(), jwt_assertion(client_id, username, audience, key, now)),
            ],
        }
    }
}

/// An RS256-signed assertion, valid for 3 minutes (Salesforce's bound).
pub fn jwt_assertion(client_id: &str, username: &str, audience: &str, key: &rsa::RsaPrivateKey, now: i64) -> String {
    use rsa::signature::{SignatureEncoding, Signer};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
    let claims = b64.encode(json!({"iss": client_id, "sub": username, "aud": audience, "exp": now + 180}).to_string());
    let input = format!("{header}.{claims}");
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let signature = signer.sign(input.as_bytes());
    format!("{input}.{}", b64.encode(signature.to_bytes()))
}

/// A call that did not succeed.
#[derive(Debug, Clone)]
pub struct SfError {
    /// `None`: no answer (network), or refused here (budget).
    pub status: Option<u16>,
    /// Salesforce's `errorCode` (`statusCode` in collections), or ours.
    pub code: String,
    pub message: String,
    /// Set when the system must be left alone for a while.
    pub hold: Option<Duration>,
}

impl std::fmt::Display for SfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s} {}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl SfError {
    /// Transient: lock contention, 5xx, network, session or limits (which also hold
    /// the system). Anything else the request's own fault.
    pub fn is_transient(&self) -> bool {
        matches!(self.code.as_str(), "UNABLE_TO_LOCK_ROW" | "REQUEST_LIMIT_EXCEEDED" | "INVALID_SESSION_ID" | "BUDGET")
            || self.status.is_none_or(|s| s >= 500 || s == 408 || s == 429)
    }

    pub fn outcome(&self, system: &str) -> Outcome {
        let reason = format!("{system}: {self}");
        if self.is_transient() {
            Outcome::Retry { http_status: self.status, reason, retry_after: self.hold }
        } else {
            Outcome::Reject { http_status: self.status, reason: format!("{reason} — not retried") }
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.code.as_str(), "NOT_FOUND" | "ENTITY_IS_DELETED") || self.status == Some(404)
    }
}

/// The org's API usage as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub max: u64,
}

struct Token {
    access: String,
    instance: reqwest::Url,
}

pub struct SfClient {
    system: String,
    login: reqwest::Url,
    version: String,
    auth: Auth,
    http: reqwest::Client,
    client_name: String,
    share: f64,
    token: tokio::sync::Mutex<Option<Token>>,
    usage: Mutex<Usage>,
    hold_until: Mutex<Option<Instant>>,
}

impl SfClient {
    pub fn new(
        system: &str,
        login: reqwest::Url,
        version: String,
        auth: Auth,
        client_name: String,
        share: f64,
        timeout: Duration,
    ) -> Result<SfClient, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("syncflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SfClient {
            system: system.to_string(),
            login,
            version,
            auth,
            http,
            client_name,
            share,
            token: tokio::sync::Mutex::new(None),
            usage: Mutex::new(Usage::default()),
            hold_until: Mutex::new(None),
        })
    }

    /// `/services/data/vNN.N{rest}`.
    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.version)
    }

    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The budget share of the org's allowance, in calls (when the allowance is known).
    pub fn budget(&self) -> Option<u64> {
        let u = self.usage();
        (u.max > 0).then(|| (u.max as f64 * self.share).floor() as u64)
    }

    /// How long to leave Salesforce alone (budget spent, or the org's limit hit).
    pub fn hold(&self) -> Option<Duration> {
        let until = (*self.hold_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    fn hold_for(&self, d: Duration) {
        *self.hold_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    async fn token(&self, renew: bool) -> Result<(String, reqwest::Url), SfError> {
        let mut slot = self.token.lock().await;
        if let (Some(t), false) = (slot.as_ref(), renew) {
            return Ok((t.access.clone(), t.instance.clone()));
        }
        let url = self.login.join("/services/oauth2/token").expect("static path");
        let resp = self
            .http
            .post(url)
            .form(&self.auth.form(chrono::Utc::now().timestamp()))
            .send()
            .await
            .map_err(|e| transport(&self.system, &e))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            let code = body["error"].as_str().unwrap_or("token_error").to_string();
            let message = body["error_description"].as_str().unwrap_or("token request refused").to_string();
            // A refused grant is configuration, not load: permanent until fixed.
            return Err(SfError { status: Some(status), code, message, hold: None });
        }
        let access = body["access_token"].as_str().unwrap_or_default().to_string();
        let instance = body["instance_url"].as_str().and_then(|u| reqwest::Url::parse(u).ok());
        let Some(instance) = instance.filter(|_| !access.is_empty()) else {
            return Err(SfError {
                status: Some(status),
                code: "token_error".into(),
                message: "token answer without access_token or instance_url".into(),
                hold: None,
            });
        };
        *slot = Some(Token { access: access.clone(), instance: instance.clone() });
        Ok((access, instance))
    }

    /// One REST call to `path` (from `/services/…`, or a `nextRecordsUrl`), renewing the
    /// token once on `INVALID_SESSION_ID`. Answers the status and JSON body of a 2xx.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), SfError> {
        if let Some(d) = self.hold() {
            let u = self.usage();
            return Err(SfError {
                status: None,
                code: "BUDGET".into(),
                message: format!(
                    "holding off Salesforce for {:.0?} (API usage {}/{}, this system's share {:.0}%)",
                    d,
                    u.used,
                    u.max,
                    self.share * 100.0
                ),
                hold: Some(d),
            });
        }
        let mut renew = false;
        loop {
            let (access, instance) = self.token(renew).await?;
            let url = instance.join(path).map_err(|e| SfError {
                status: None,
                code: "BAD_PATH".into(),
                message: format!("{path}: {e}"),
                hold: None,
            })?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(&access)
                .header("Sforce-Call-Options", format!("client={}", self.client_name));
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| transport(&self.system, &e))?;
            let status = resp.status().as_u16();
            self.note_usage(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            let json: Value =
                if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
            if (200..300).contains(&status) {
                return Ok((status, json));
            }
            let (code, message) = first_error(&json, &text);
            if status == 401 && !renew {
                renew = true; // the session expired: one new token, one more try
                continue;
            }
            let mut err = SfError { status: Some(status), code, message, hold: None };
            if err.code == "REQUEST_LIMIT_EXCEEDED" {
                self.hold_for(LIMIT_PAUSE);
                err.hold = Some(LIMIT_PAUSE);
            }
            return Err(err);
        }
    }

    /// Reads `Sforce-Limit-Info: api-usage=N/M` and holds off once our share is used.
    fn note_usage(&self, headers: &reqwest::header::HeaderMap) {
        let Some(usage) = headers.get("sforce-limit-info").and_then(|v| v.to_str().ok()).and_then(parse_usage) else {
            return;
        };
        *self.usage.lock().unwrap_or_else(|e| e.into_inner()) = usage;
        if usage.max > 0 && usage.used as f64 >= usage.max as f64 * self.share {
            tracing::warn!(system = %self.system, used = usage.used, max = usage.max, share = self.share,
                "Salesforce API budget share reached; holding off");
            self.hold_for(BUDGET_RECHECK);
        }
    }
}

/// `api-usage=10018/100000` (possibly with `; api-bursts=…` after it).
pub fn parse_usage(header: &str) -> Option<Usage> {
    let part = header.split(';').map(str::trim).find_map(|p| p.strip_prefix("api-usage="))?;
    let (used, max) = part.split_once('/')?;
    Some(Usage { used: used.trim().parse().ok()?, max: max.trim().parse().ok()? })
}

/// The first entry of Salesforce's error array `[{"message","errorCode","fields"}]`.
fn first_error(json: &Value, text: &str) -> (String, String) {
    let e = json.as_array().and_then(|a| a.first()).unwrap_or(json);
    let code = e["errorCode"].as_str().or(e["statusCode"].as_str()).unwrap_or("UNKNOWN").to_string();
    let mut message = e["message"].as_str().map_or_else(|| retry::body_message(text), str::to_string);
    if let Some(fields) = e["fields"].as_array().filter(|f| !f.is_empty()) {
        let names: Vec<&str> = fields.iter().filter_map(Value::as_str).collect();
        message.push_str(&format!(" (fields: {})", names.join(", ")));
    }
    (code, message)
}

fn transport(system: &str, e: &reqwest::Error) -> SfError {
    let message = match retry::classify_transport(system, e) {
        Outcome::Retry { reason, .. } => reason,
        other => format!("{other:?}"),
    };
    SfError { status: None, code: "NETWORK".into(), message, hold: None }
}
