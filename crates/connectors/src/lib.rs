//! Connectors: one module per kind of external system, behind one trait.
//!
//! A system's `[[systems]]` block is split by the engine into common settings and
//! the connector's own table; `build` hands that table to the connector's config,
//! which builds the connector (the config-builds-component shape). Whether a failure
//! is worth retrying is decided in one place, `retry`. A kind that also receives
//! changes (webhooks, polling) exposes an `Inward` side; the engine and server
//! call it without knowing the kind.

pub mod http;
pub mod retry;
pub mod signature;
pub mod stripe;

use std::sync::Arc;
use std::time::Duration;

use syncflow_core::Change;
use syncflow_store::{InboxOutcome, Link, LinkUpdate, Store, StoreError};

/// One push of a change to a system.
#[derive(Debug, Clone, Copy)]
pub struct PushRequest<'a> {
    pub delivery_id: i64,
    pub attempt: i64,
    pub change: &'a Change,
    /// The record's link to this system, if it has one (its external id).
    pub link: Option<&'a Link>,
}

/// What a push achieved. `Retry` and `Reject` carry a human-readable reason that
/// ends up in the transaction table's `remarks`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered { http_status: Option<u16>, external_id: Option<String>, link: Option<LinkUpdate> },
    Retry { http_status: Option<u16>, reason: String, retry_after: Option<Duration> },
    Reject { http_status: Option<u16>, reason: String },
}

#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Applies `req.change` to the external system. Must be idempotent for the
    /// same delivery: a push may be repeated after a crash.
    async fn push(&self, req: PushRequest<'_>) -> Outcome;

    /// The inward side (signed webhooks, polling), for kinds that have one.
    fn inward(&self) -> Option<&dyn Inward> {
        None
    }

    /// Requests per second the system documents, used when its `[[systems]]`
    /// block sets no `rate_limit`. `None`: unlimited.
    fn default_rate_limit(&self) -> Option<f64> {
        None
    }
}

/// Changes arriving from a system: webhooks it sends and events we poll.
///
/// Invariants an implementation keeps: a webhook with a missing, malformed, wrong or
/// expired signature stores nothing; an event is durable (inbox) before `webhook`
/// returns `Ok`; an event seen twice (webhook retry, webhook and poller) is applied
/// once; a poll cursor moves only past events that are settled.
#[async_trait::async_trait]
pub trait Inward: Send + Sync {
    /// Verifies, records and applies one webhook delivery.
    async fn webhook(
        &self,
        store: &Store,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookReceipt, WebhookError>;

    /// One round of polling: settles inbox rows a crash left unsettled, then (when
    /// polling is on) fetches events past the stored cursor, applies them and
    /// advances the cursor.
    async fn poll(&self, store: &Store) -> Result<PollReport, InwardError>;

    /// How often `poll` should run; `None` when this system is not polled.
    fn poll_interval(&self) -> Option<Duration>;
}

/// What a webhook request achieved (the 2xx body).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookReceipt {
    pub event_id: String,
    pub outcome: InboxOutcome,
    /// The event was already in the inbox (a retry, or seen by the poller first).
    pub duplicate: bool,
}

/// Events fetched and applied by one `poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub fetched: usize,
    pub applied: usize,
    /// Inbox rows that were left unsettled by an earlier run and settled now.
    pub recovered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Missing, malformed, wrong or expired signature: 400, nothing stored.
    #[error("bad signature: {0}")]
    Signature(#[from] signature::SignatureError),
    /// Signed correctly but not an event we can read: 400, nothing stored.
    #[error("bad payload: {0}")]
    Payload(String),
    /// This system has no webhook secret configured.
    #[error("webhooks are not configured for this system")]
    NotConfigured,
    /// Recording failed; the sender should retry.
    #[error(transparent)]
    Inward(#[from] InwardError),
}

#[derive(Debug, thiserror::Error)]
pub enum InwardError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The external system could not be asked (network, 5xx, 429).
    #[error("{0}")]
    Remote(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("system `{system}`: unknown kind `{kind}` (known: {known})")]
    UnknownKind { system: String, kind: String, known: String },
    #[error("system `{system}`: {message}")]
    Invalid { system: String, message: String },
}

/// Kinds `build` knows.
pub const KINDS: &[&str] = &["http", "stripe"];

/// Builds the connector of `kind` from its settings table.
pub fn build(system: &str, kind: &str, settings: toml::Table) -> Result<Arc<dyn Connector>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { system: system.to_string(), message };
    match kind {
        "http" => {
            let config: http::HttpConfig = settings.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
            Ok(Arc::new(config.build(system).map_err(invalid)?))
        }
        "stripe" => {
            let config: stripe::StripeConfig =
                settings.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
            Ok(Arc::new(config.build(system).map_err(invalid)?))
        }
        other => Err(ConfigError::UnknownKind {
            system: system.to_string(),
            kind: other.to_string(),
            known: KINDS.join(", "),
        }),
    }
}

/// Parses `"250ms"`, `"2s"`, `"5m"`, `"1h"` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.find(|c: char| c.is_ascii_alphabetic()).map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num.trim().parse().map_err(|_| format!("`{text}` is not a duration like 500ms, 2s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn unknown_kind_is_a_clear_error() {
        let err = build("crm", "fax", toml::Table::new()).err().unwrap();
        assert_eq!(err.to_string(), "system `crm`: unknown kind `fax` (known: http, stripe)");
    }
}
