//! `kind = "stripe"` settings: where the API is, the secrets (normally `${VAR}`
//! references), webhook tolerance, polling. Secrets never reach `Debug` output.

use std::time::Duration;

use serde::Deserialize;

use super::client::StripeClient;
use super::StripeConnector;

/// Stripe's documented default limits: 25 requests/s in test mode, 100/s live.
pub const TEST_MODE_RATE: f64 = 25.0;
pub const LIVE_MODE_RATE: f64 = 100.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Default `https://api.stripe.com`; a local stand-in in tests.
    pub api_base: Option<String>,
    /// `sk_test_…` / `sk_live_…` (or a restricted `rk_…` key).
    pub secret_key: String,
    /// Signing secret of the webhook endpoint (`whsec_…`). Without it the
    /// webhook route answers 404 and only polling brings changes in.
    pub webhook_secret: Option<String>,
    /// The previous signing secret, accepted too while a rotation is under way.
    pub webhook_secret_previous: Option<String>,
    /// Allowed age of a webhook signature, e.g. "300s" (Stripe's default).
    pub webhook_tolerance: Option<String>,
    /// Poll `GET /v1/events` this often, e.g. "30s"; absent or "0s": no polling.
    pub poll_interval: Option<String>,
    /// Requests per second this connector allows itself for every Stripe call
    /// (pushes, polls, re-fetches, backfill): Stripe's limit is per account.
    /// Default: 25 for test keys, 100 for live keys.
    pub api_rate_limit: Option<f64>,
    /// Per-request timeout, e.g. "20s".
    pub timeout: Option<String>,
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &redact_key(&self.secret_key))
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "***"))
            .field("webhook_secret_previous", &self.webhook_secret_previous.as_ref().map(|_| "***"))
            .field("webhook_tolerance", &self.webhook_tolerance)
            .field("poll_interval", &self.poll_interval)
            .field("api_rate_limit", &self.api_rate_limit)
            .finish()
    }
}

/// `sk_test_***`: the mode is useful in logs, the key is not.
fn redact_key(key: &str) -> String {
    let mode = ["sk_test_", "sk_live_", "rk_test_", "rk_live_"].into_iter().find(|p| key.starts_with(p));
    format!("{}***", mode.unwrap_or(""))
}

/// Per-request timeout when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

impl StripeConfig {
    pub fn build(self, system: &str) -> Result<StripeConnector, String> {
        if self.secret_key.trim().is_empty() {
            return Err("`secret_key` must not be empty (use secret_key = \"${STRIPE_SECRET_KEY}\")".into());
        }
        let api_base = self.api_base.as_deref().unwrap_or("https://api.stripe.com");
        let base = reqwest::Url::parse(api_base).map_err(|e| format!("api_base `{api_base}`: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("api_base `{api_base}` must be http or https"));
        }
        let live = self.secret_key.contains("_live_");
        let rate = self.api_rate_limit.unwrap_or(if live { LIVE_MODE_RATE } else { TEST_MODE_RATE });
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("`api_rate_limit` must be a positive number".into());
        }
        let tolerance = match &self.webhook_tolerance {
            Some(t) => crate::parse_duration(t).map_err(|e| format!("webhook_tolerance: {e}"))?,
            None => Duration::from_secs(300),
        };
        let poll_interval = match &self.poll_interval {
            Some(t) => {
                Some(crate::parse_duration(t).map_err(|e| format!("poll_interval: {e}"))?).filter(|d| !d.is_zero())
            }
            None => None,
        };
        let timeout = match &self.timeout {
            Some(t) => crate::parse_duration(t).map_err(|e| format!("timeout: {e}"))?,
            None => DEFAULT_TIMEOUT,
        };
        let client = StripeClient::new(system, base, self.secret_key, rate, timeout)?;
        let webhook_secrets = self.webhook_secret.into_iter().chain(self.webhook_secret_previous).collect();
        Ok(StripeConnector::new(system, client, webhook_secrets, tolerance, poll_interval, rate, timeout))
    }
}
