//! `kind = "salesforce"`: hub customers ↔ Salesforce Contacts (or Accounts), both ways.
//!
//! * `config` — settings (org, OAuth flow, mapping, budget, polling); secrets hidden.
//! * `client` — OAuth with token renewal, `Sforce-Call-Options`, error arrays, the
//!   daily API budget read from `Sforce-Limit-Info`.
//! * `mapping` — customer ↔ Contact/Account fields, metadata ↔ custom fields.
//! * `outward` — upsert by external id, Collections of up to 200, deletes.
//! * `inward` — polling `queryAll` on `SystemModstamp`, fetch, backfill listing.
//!
//! See `docs/salesforce.md`.

pub mod client;
pub mod config;
pub mod inward;
pub mod mapping;
mod outward;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use config::SalesforceConfig;

use crate::{ApiUsage, Connector, Inward, Outcome, PushRequest};

pub struct SalesforceConnector {
    system: String,
    client: client::SfClient,
    mapping: mapping::Mapping,
    poll_interval: Option<Duration>,
    overlap: Duration,
    batch: usize,
    rate: f64,
    timeout: Duration,
}

#[async_trait::async_trait]
impl Connector for SalesforceConnector {
    async fn push(&self, req: PushRequest<'_>) -> Outcome {
        self.push_one(req).await
    }

    fn max_batch(&self) -> usize {
        self.batch
    }

    async fn push_batch(&self, reqs: &[PushRequest<'_>]) -> Vec<Outcome> {
        self.push_many(reqs).await
    }

    fn inward(&self) -> Option<&dyn Inward> {
        Some(self)
    }

    fn default_rate_limit(&self) -> Option<f64> {
        Some(self.rate)
    }

    fn push_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn hold(&self) -> Option<Duration> {
        self.client.hold()
    }

    fn api_usage(&self) -> Option<ApiUsage> {
        let u = self.client.usage();
        (u.max > 0).then(|| ApiUsage { used: u.used, max: u.max, budget: self.client.budget() })
    }
}
