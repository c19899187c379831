//! `kind = "stripe"`: customers both ways, invoices Stripe → hub.
//!
//! * `config` — settings and their defaults (Stripe's rate limits, 300 s webhook
//!   tolerance), secrets kept out of `Debug`.
//! * `client` — form-encoded calls, idempotency keys, pacing, error bodies.
//! * `outward` — hub changes pushed to Stripe (invariants 2, 3, 5).
//! * `inward` — webhooks and event polling through the inbox (invariants 3, 4, 5, 7).
//! * `state` — the per-link sync snapshot that echo, staleness and merge compare.
//! * `backfill` — linking or importing what already exists on either side.
//!
//! See `docs/stripe.md` for the rules in prose.

pub mod backfill;
pub mod client;
pub mod config;
pub mod inward;
mod outward;
pub mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

use syncflow_store::{InboxOutcome, InwardWrite, LinkUpdate, Store};

pub use config::StripeConfig;
pub use inward::StripeEvent;

use crate::{Connector, Inward, InwardError, Outcome, PollReport, PushRequest, WebhookError, WebhookReceipt};

/// Without `poll_interval`, `poll` still runs this often to settle inbox rows a
/// crash left between acknowledgement and apply.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(60);

pub struct StripeConnector {
    system: String,
    client: client::StripeClient,
    webhook_secrets: Vec<String>,
    tolerance: Duration,
    poll_interval: Option<Duration>,
    rate: f64,
    /// Striped by object id: applies of one object take turns.
    apply_locks: Vec<tokio::sync::Mutex<()>>,
}

/// Stripes of `apply_locks`: enough that unrelated objects rarely wait.
const APPLY_STRIPES: usize = 64;

impl StripeConnector {
    fn new(
        system: &str,
        client: client::StripeClient,
        webhook_secrets: Vec<String>,
        tolerance: Duration,
        poll_interval: Option<Duration>,
        rate: f64,
    ) -> Self {
        Self {
            system: system.to_string(),
            client,
            webhook_secrets,
            tolerance,
            poll_interval,
            rate,
            apply_locks: (0..APPLY_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    pub fn client(&self) -> &client::StripeClient {
        &self.client
    }

    /// Waits for this object's turn to apply an event.
    async fn apply_turn(&self, object_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(object_id) as usize % APPLY_STRIPES;
        self.apply_locks[stripe].lock().await
    }

    /// A catalog write that links `external_id` (at the version it writes) with this
    /// fingerprint and snapshot, and settles `inbox` when it comes from an event.
    fn linking_write(
        &self,
        inbox: Option<(i64, InboxOutcome, Option<String>)>,
        external_id: &str,
        fingerprint: String,
        snapshot: String,
    ) -> InwardWrite {
        InwardWrite {
            system: self.system.clone(),
            inbox,
            link: Some(LinkUpdate {
                external_id: external_id.to_string(),
                synced_version: 0, // replaced by the written version
                fingerprint: Some(fingerprint),
                snapshot: Some(snapshot),
            }),
        }
    }

    /// Polls events once even when no `poll_interval` is configured (tests, the
    /// CLI).
    pub async fn poll_events(&self, store: &Store) -> Result<PollReport, InwardError> {
        self.poll_once(store, true).await
    }
}

#[async_trait::async_trait]
impl Connector for StripeConnector {
    async fn push(&self, req: PushRequest<'_>) -> Outcome {
        match req.change.entity.as_str() {
            "customer" => self.push_customer(req).await,
            other => Outcome::Reject {
                http_status: None,
                reason: format!(
                    "{} receives customers only ({other}s flow from Stripe to the hub); \
                     remove `{other}` from this system's entities",
                    self.system
                ),
            },
        }
    }

    fn inward(&self) -> Option<&dyn Inward> {
        Some(self)
    }

    fn default_rate_limit(&self) -> Option<f64> {
        Some(self.rate)
    }
}

#[async_trait::async_trait]
impl Inward for StripeConnector {
    async fn webhook(
        &self,
        store: &Store,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookReceipt, WebhookError> {
        self.handle_webhook(store, headers, body).await
    }

    async fn poll(&self, store: &Store) -> Result<PollReport, InwardError> {
        self.poll_once(store, self.poll_interval.is_some()).await
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.poll_interval.unwrap_or(RECOVERY_INTERVAL))
    }
}
