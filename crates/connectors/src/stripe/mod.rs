//! `kind = "stripe"`: customers both ways, invoices Stripe → hub.
//!
//! * `config` — settings and their defaults (Stripe's rate limits, 300 s webhook
//!   tolerance), secrets kept out of `Debug`.
//! * `client` — form-encoded calls, idempotency keys, pacing, error bodies.
//! * `outward` — hub changes pushed to Stripe (invariants 2, 3, 5).
//! * `inward` — webhooks and events parsed, objects fetched and listed (the engine
//!   decides what they do: `syncflow_engine::inward`).
//! * `state` — Stripe objects in hub terms (the synced fields, mapping).
//!
//! See `docs/stripe.md` for the rules in prose.

pub mod client;
pub mod config;
pub mod inward;
mod outward;
pub mod state;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use config::StripeConfig;

use crate::{Connector, Inward, Outcome, PushRequest, RateShare};

pub struct StripeConnector {
    system: String,
    client: client::StripeClient,
    webhook_secrets: Vec<String>,
    tolerance: Duration,
    poll_interval: Option<Duration>,
    rate: f64,
    timeout: Duration,
}

impl StripeConnector {
    fn new(
        system: &str,
        client: client::StripeClient,
        webhook_secrets: Vec<String>,
        tolerance: Duration,
        poll_interval: Option<Duration>,
        rate: f64,
        timeout: Duration,
    ) -> Self {
        Self { system: system.to_string(), client, webhook_secrets, tolerance, poll_interval, rate, timeout }
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    pub fn client(&self) -> &client::StripeClient {
        &self.client
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

    fn push_timeout(&self) -> Option<Duration> {
        // A push may wait for its turn under the pacer, then take up to the timeout.
        Some(self.timeout)
    }

    fn set_rate_share(&self, share: RateShare) {
        // One pacer covers pushes, polls and backfill: all of it runs at the share.
        self.client.set_rate(share.rate(self.rate));
    }
}
