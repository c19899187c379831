//! `kind = "salesforce"` settings: the org (My Domain login URL, API version), the
//! OAuth flow (client credentials, or JWT bearer with an RS256 key), the sObject and
//! field mapping, the daily API budget share and polling. Secrets never reach
//! `Debug` output.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::client::{Auth, SfClient};
use super::mapping::Mapping;
use super::SalesforceConnector;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// The org's My Domain URL, e.g. `https://acme.my.salesforce.com` (token endpoint
    /// `{login_url}/services/oauth2/token`).
    pub login_url: String,
    /// REST API version, e.g. "62.0".
    pub api_version: Option<String>,
    /// Connected (external client) app's consumer key.
    pub client_id: String,
    /// Client-credentials flow: the consumer secret.
    pub client_secret: Option<String>,
    /// JWT bearer flow: the integration user's username…
    pub jwt_username: Option<String>,
    /// …and the RS256 private key (PEM), inline (`${VAR}`) or from a file.
    pub jwt_key: Option<String>,
    pub jwt_key_file: Option<String>,
    /// `aud` of the JWT; default `https://login.salesforce.com`.
    pub jwt_audience: Option<String>,
    /// `Contact` (default) or `Account`.
    pub sobject: Option<String>,
    /// The external-id field holding the hub id; default `Syncflow_Id__c`.
    pub external_id_field: Option<String>,
    /// Hub metadata key → custom field, e.g. `tier = "Tier__c"`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Sent as `Sforce-Call-Options: client=<id>` on every call; default `syncflow`.
    pub client_name: Option<String>,
    /// Share (0–1] of the org's rolling 24 h API allowance this system may use.
    pub daily_budget_share: Option<f64>,
    /// Poll for changes this often; default "5s"; "0s": no polling.
    pub poll_interval: Option<String>,
    /// How far back each poll re-reads (records commit late; SOQL ignores milliseconds).
    pub poll_overlap: Option<String>,
    /// Records per `upsert` collection call, 1–200; default 200.
    pub batch_size: Option<usize>,
    /// Requests per second this connector allows itself; default 20.
    pub api_rate_limit: Option<f64>,
    /// Per request; default "30s".
    pub timeout: Option<String>,
}

impl std::fmt::Debug for SalesforceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceConfig")
            .field("login_url", &self.login_url)
            .field("api_version", &self.api_version)
            .field("client_id", &"***")
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("jwt_username", &self.jwt_username)
            .field("jwt_key", &self.jwt_key.as_ref().map(|_| "***"))
            .field("jwt_key_file", &self.jwt_key_file)
            .field("sobject", &self.sobject)
            .field("fields", &self.fields)
            .field("daily_budget_share", &self.daily_budget_share)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl SalesforceConfig {
    pub fn build(self, system: &str) -> Result<SalesforceConnector, String> {
        let login = reqwest::Url::parse(&self.login_url).map_err(|e| format!("login_url: {e}"))?;
        if !matches!(login.scheme(), "http" | "https") {
            return Err("login_url must be http or https".into());
        }
        let version = self.api_version.unwrap_or_else(|| "62.0".into());
        if !version.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
            return Err("api_version must look like 62.0".into());
        }
        if self.client_id.trim().is_empty() {
            return Err("`client_id` must not be empty (use client_id = \"${SF_CLIENT_ID}\")".into());
        }
        let key = match (self.jwt_key, self.jwt_key_file) {
            (Some(k), None) => Some(k),
            (None, Some(path)) => {
                Some(std::fs::read_to_string(&path).map_err(|e| format!("jwt_key_file `{path}`: {e}"))?)
            }
            (None, None) => None,
            (Some(_), Some(_)) => return Err("set `jwt_key` or `jwt_key_file`, not both".into()),
        };
        let auth = match (self.client_secret, self.jwt_username, key) {
            (Some(secret), None, None) => Auth::client_credentials(self.client_id, secret),
            (None, Some(username), Some(pem)) => Auth::jwt(
                self.client_id,
                username,
                &pem,
                self.jwt_audience.unwrap_or_else(|| "https://login.salesforce.com".into()),
            )?,
            _ => {
                return Err("set either `client_secret` (client credentials) or `jwt_username` with \
                            `jwt_key`/`jwt_key_file` (JWT bearer)"
                    .into())
            }
        };
        let sobject = self.sobject.unwrap_or_else(|| "Contact".into());
        let external_id_field = self.external_id_field.unwrap_or_else(|| "Syncflow_Id__c".into());
        for (key, field) in &self.fields {
            if !field.ends_with("__c") {
                return Err(format!("fields.{key} = `{field}`: metadata maps to custom fields (ending in __c)"));
            }
        }
        let mapping = Mapping::new(&sobject, &external_id_field, self.fields)?;
        let share = self.daily_budget_share.unwrap_or(1.0);
        if !(share > 0.0 && share <= 1.0) {
            return Err("`daily_budget_share` must be in (0, 1]".into());
        }
        let duration = |key: &str, v: Option<String>, default: &str| {
            crate::parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("{key}: {e}"))
        };
        let poll_interval = Some(duration("poll_interval", self.poll_interval, "5s")?).filter(|d| !d.is_zero());
        let overlap = duration("poll_overlap", self.poll_overlap, "2s")?;
        let timeout = duration("timeout", self.timeout, "30s")?;
        let batch = self.batch_size.unwrap_or(200);
        if !(1..=200).contains(&batch) {
            return Err("`batch_size` must be 1 to 200 (Salesforce's collection limit)".into());
        }
        let rate = self.api_rate_limit.unwrap_or(20.0);
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("`api_rate_limit` must be a positive number".into());
        }
        let client_name = self.client_name.unwrap_or_else(|| "syncflow".into());
        let client = SfClient::new(system, login, version, auth, client_name, share, timeout)?;
        Ok(SalesforceConnector {
            system: system.to_string(),
            client,
            mapping,
            poll_interval,
            overlap: overlap.max(Duration::from_secs(1)),
            batch,
            rate,
            timeout,
        })
    }
}
