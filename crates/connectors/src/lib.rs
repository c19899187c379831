//! Connectors: one module per kind of external system, behind a narrow trait set.
//! Connectors translate; the engine decides.
//!
//! A system's `[[systems]]` block is split by the engine into common settings and
//! the connector's own table; `build` hands that table to the connector's config,
//! which builds the connector (the config-builds-component shape). Whether a failure
//! is worth retrying is decided in one place, `retry`. A kind that also receives
//! changes (webhooks, polling) exposes an `Inward` side: verify and parse, list
//! events after a cursor, fetch one object, map external objects to hub fields.
//! Everything that keeps the two-way invariants (inbox, echo, staleness, merge,
//! conflicts, cursors) is the engine's (`syncflow_engine::inward`), written once.

pub mod http;
pub mod kafka;
pub mod pacer;
pub mod retry;
pub mod salesforce;
pub mod signature;
pub mod stripe;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use syncflow_core::sync::{Fields, Link, LinkUpdate};
use syncflow_core::{Change, Entity};

/// One push of a change to a system.
#[derive(Debug, Clone, Copy)]
pub struct PushRequest<'a> {
    /// 0 for a push that is not a queued delivery (backfill export).
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
    /// same delivery: a push may be repeated after a crash. It runs in the
    /// delivery's lane (`pacer::Lane::current()`): a client pacing its own calls
    /// serves live pushes before retries and bulk work (`pacer::Pacer`).
    async fn push(&self, req: PushRequest<'_>) -> Outcome;

    /// Most deliveries `push_batch` takes in one call (1: no batching).
    fn max_batch(&self) -> usize {
        1
    }

    /// Pushes several deliveries (of distinct records) and returns one outcome per
    /// request, in order. Kinds with a bulk API override it.
    async fn push_batch(&self, reqs: &[PushRequest<'_>]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.push(*req).await);
        }
        out
    }

    /// The inward side (signed webhooks, polling), for kinds that have one.
    fn inward(&self) -> Option<&dyn Inward> {
        None
    }

    /// Requests per second the system documents, used when its `[[systems]]`
    /// block sets no `rate_limit`. `None`: unlimited.
    fn default_rate_limit(&self) -> Option<f64> {
        None
    }

    /// The longest one push may take (the request timeout); a delivery lease must
    /// be longer.
    fn push_timeout(&self) -> Option<Duration> {
        None
    }

    /// How long the system asks to be left alone (its API budget is spent): the
    /// engine claims nothing for it meanwhile, so no delivery spends an attempt.
    fn hold(&self) -> Option<Duration> {
        None
    }

    /// The system's API allowance as last reported, for kinds that have one.
    fn api_usage(&self) -> Option<ApiUsage> {
        None
    }

    /// Whether `push` reads `PushRequest::link`; kinds that never do (a topic) spare
    /// the engine one link read per delivery.
    fn uses_links(&self) -> bool {
        true
    }

    /// Kinds that publish the final outcome of every delivery (Kafka's status
    /// topic) return where to; the engine feeds it from the store, after a cursor.
    fn status_sink(&self) -> Option<Arc<dyn StatusSink>> {
        None
    }

    /// This node's part of the system's rate limit, set by the engine whenever the
    /// number of live nodes changes. Kinds whose client paces its own calls (polls
    /// and backfill as well as pushes) pace at `share.rate(their limit)`.
    fn set_rate_share(&self, _share: RateShare) {}
}

/// How many live nodes share a system's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateShare {
    pub nodes: usize,
}

impl RateShare {
    /// This node's rate under a cluster-wide `limit` per second. Alone it is the
    /// whole limit. With several nodes each gets a whole number of requests per
    /// second, `floor(limit / nodes)`: a pacer spacing requests at `r` per second
    /// puts up to `ceil(r)` of them into one one-second window, so whole shares
    /// are what keeps the sum over nodes within the limit in every window, not only
    /// on average. (Below one request per second per node the fraction is kept.)
    pub fn rate(self, limit: f64) -> f64 {
        let nodes = self.nodes.max(1) as f64;
        let share = limit / nodes;
        if self.nodes <= 1 || share < 1.0 {
            share
        } else {
            share.floor()
        }
    }

    /// This node's part of a burst allowance (at least one).
    pub fn burst(self, burst: u32) -> u32 {
        (burst / self.nodes.max(1) as u32).max(1)
    }
}

/// A system's API allowance: calls used and allowed in its window, and the part of
/// it this hub may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ApiUsage {
    pub used: u64,
    pub max: u64,
    pub budget: Option<u64>,
}

/// The final outcome of one delivery of a change to one system.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeliveryOutcome {
    pub delivery_id: i64,
    pub change_seq: i64,
    pub system: String,
    pub entity: String,
    pub record_id: String,
    pub op: String,
    /// `delivered`, `dead` or `skipped` (superseded by a newer change).
    pub status: String,
    pub attempts: i64,
    pub http_status: Option<i64>,
    pub external_id: Option<String>,
    pub remarks: Option<String>,
    /// RFC 3339, UTC.
    pub finished_at: String,
}

/// Where delivery outcomes are published. `publish` returns `Ok` only once every
/// outcome given is durable there (at-least-once: the engine's cursor moves after).
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync {
    async fn publish(&self, outcomes: &[DeliveryOutcome]) -> Result<(), RemoteError>;
}

/// A message read from a subscription (a topic's consumer group).
#[derive(Debug, Clone)]
pub struct SubscribedMessage {
    /// Where it was read; a unique, stable name (the inbox key when the message
    /// names no event id of its own).
    pub position: String,
    /// The message as stored in the inbox (read back by `Inward::parse_stored`).
    pub payload: String,
    /// The event, or why the message cannot be read (recorded `rejected`).
    pub event: Result<InwardEvent, String>,
}

/// Events the system pushes to us over a log, read by the engine one at a time:
/// `next`, record in the inbox, then `done` — a position is committed only after
/// its event is durable.
#[async_trait::async_trait]
pub trait Subscription: Send + Sync {
    async fn next(&self) -> Result<SubscribedMessage, RemoteError>;

    /// The message is durable in the inbox: its position may be committed.
    fn done(&self, message: &SubscribedMessage) -> Result<(), RemoteError>;

    /// The message was settled `rejected` or `dead`: forward it (a dead-letter
    /// topic). Best effort; the inbox row is the record.
    async fn reject(&self, _message: &SubscribedMessage, _why: &str) -> Result<(), RemoteError> {
        Ok(())
    }
}

/// One event of an external system, parsed by its connector.
#[derive(Debug, Clone)]
pub struct InwardEvent {
    /// Unique per system: the inbox key.
    pub event_id: String,
    pub event_type: String,
    /// The hub entity it concerns; `None`: a type the hub does not apply.
    pub entity: Option<&'static Entity>,
    pub external_id: Option<String>,
    /// The system's own time of the event, on the system's clock (seconds).
    pub occurred_at: i64,
    /// The object was deleted.
    pub deleted: bool,
    /// The object as the event carries it, in the system's terms.
    pub object: Value,
}

/// An external object in hub terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapped {
    /// Hub field → value, for the fields this system syncs (normalized).
    pub fields: Fields,
    /// Fields whose value is another object's external id, to be resolved to a hub
    /// id through that object's link (an invoice's customer).
    pub refs: Vec<ExternalRef>,
    /// The system owns these records: its state replaces the hub's (no merge).
    pub owned: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExternalRef {
    pub field: String,
    pub entity: &'static Entity,
    pub external_id: String,
}

/// An event listed by polling, with the cursor position to store once it (and
/// every event before it) is settled.
#[derive(Debug, Clone)]
pub struct PolledEvent {
    pub event: InwardEvent,
    /// The raw event, stored in the inbox.
    pub raw: String,
    pub position: String,
}

/// A page of objects for backfill, in the system's listing order.
#[derive(Debug, Clone, Default)]
pub struct ObjectPage {
    pub objects: Vec<Value>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<String>,
}

/// A call to the external system that did not succeed (network, 5xx, 429, 4xx).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

/// The inward translator of a two-way system. Invariants it keeps: a webhook with
/// a missing, malformed, wrong or expired signature parses to an error (nothing is
/// stored); polling lists every event at or after a cursor position it issued.
#[async_trait::async_trait]
pub trait Inward: Send + Sync {
    /// Verifies a webhook's signature and parses its body.
    fn parse_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<InwardEvent, WebhookError>;

    /// Parses an event as stored in the inbox (recovery, replay).
    fn parse_stored(&self, payload: &str) -> Result<InwardEvent, String>;

    /// How often to poll for events; `None`: webhooks only.
    fn poll_interval(&self) -> Option<Duration>;

    /// The cursor position "now": where polling starts (history is backfill's job).
    fn start_position(&self) -> String;

    /// Events at or after `position`, oldest first.
    async fn events_since(&self, position: &str) -> Result<Vec<PolledEvent>, RemoteError>;

    /// The object as the system holds it now; `None` when it is gone.
    async fn fetch(&self, entity: &'static Entity, external_id: &str) -> Result<Option<Value>, RemoteError>;

    /// The hub fields this system syncs for `entity` (both ways).
    fn synced_fields(&self, entity: &'static Entity) -> &'static [&'static str];

    /// A hub record's fields (or a change snapshot) as this system can hold them —
    /// what its state is compared with. Default: the synced fields as they are.
    fn hub_view(&self, entity: &'static Entity, fields: &Map<String, Value>) -> Fields {
        syncflow_core::sync::project(self.synced_fields(entity), fields)
    }

    /// An external object in hub terms.
    fn to_hub(&self, entity: &'static Entity, object: &Value) -> Mapped;

    /// The hub id the object carries (written there by our own create), if any.
    fn hub_id(&self, object: &Value) -> Option<String>;

    /// A hub create body for an object first seen in the system, filling fields the
    /// hub requires and the system may lack; the remark says what was filled.
    fn create_body(
        &self,
        _entity: &'static Entity,
        fields: &Fields,
        _external_id: &str,
    ) -> (Map<String, Value>, Option<String>) {
        (fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), None)
    }

    /// Writes the hub id into an object first seen in the system, once linked (so a
    /// later event resolves by it). Best effort.
    async fn write_back_id(
        &self,
        _entity: &'static Entity,
        _external_id: &str,
        _hub_id: &str,
    ) -> Result<(), RemoteError> {
        Ok(())
    }

    /// Objects of `entity` from `after` on, for backfill.
    async fn list_objects(&self, entity: &'static Entity, after: Option<&str>) -> Result<ObjectPage, RemoteError>;

    /// A subscription the engine reads events from (a topic), for kinds that
    /// push events over a log; `None`: webhooks and polling only.
    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, RemoteError> {
        Ok(None)
    }

    /// Events of one object arrive in order (a log partitioned by object), so an
    /// event in the same second as an applied one needs no re-fetch.
    fn ordered(&self) -> bool {
        false
    }
}

/// Why a webhook request was refused.
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("system `{system}`: unknown kind `{kind}` (known: {known})")]
    UnknownKind { system: String, kind: String, known: String },
    #[error("system `{system}`: {message}")]
    Invalid { system: String, message: String },
}

/// Kinds `build` knows.
pub const KINDS: &[&str] = &["http", "kafka", "salesforce", "stripe"];

/// Builds the connector of `kind` from its settings table.
pub fn build(system: &str, kind: &str, settings: toml::Table) -> Result<Arc<dyn Connector>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { system: system.to_string(), message };
    match kind {
        "http" => {
            let config: http::HttpConfig = settings.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
            Ok(Arc::new(config.build(system).map_err(invalid)?))
        }
        "kafka" => {
            let config: kafka::KafkaConfig =
                settings.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
            Ok(Arc::new(config.build(system).map_err(invalid)?))
        }
        "stripe" => {
            let config: stripe::StripeConfig =
                settings.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
            Ok(Arc::new(config.build(system).map_err(invalid)?))
        }
        "salesforce" => {
            let config: salesforce::SalesforceConfig =
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

/// Parses `"250ms"`, `"2s"`, `"5m"`, `"1h"`, `"7d"` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.find(|c: char| c.is_ascii_alphabetic()).map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num.trim().parse().map_err(|_| format!("`{text}` is not a duration like 500ms, 2s, 5m or 7d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)")),
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
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn rate_shares_fit_the_limit_in_every_window() {
        let one = RateShare { nodes: 1 };
        assert_eq!(one.rate(25.0), 25.0);
        assert_eq!(one.rate(2.5), 2.5);
        // Three nodes under 25/s: 8 each, so at most 3 × 8 = 24 in any second.
        let three = RateShare { nodes: 3 };
        assert_eq!(three.rate(25.0), 8.0);
        assert!(3.0 * three.rate(25.0).ceil() <= 25.0);
        assert_eq!(RateShare { nodes: 2 }.rate(100.0), 50.0);
        assert_eq!(RateShare { nodes: 4 }.rate(2.0), 0.5);
        assert_eq!(three.burst(25), 8);
        assert_eq!(three.burst(1), 1);
    }

    #[test]
    fn unknown_kind_is_a_clear_error() {
        let err = build("crm", "fax", toml::Table::new()).err().unwrap();
        assert_eq!(err.to_string(), "system `crm`: unknown kind `fax` (known: http, kafka, salesforce, stripe)");
    }
}
