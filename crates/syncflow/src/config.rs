//! The TOML configuration file. Any string value may be written as `${VAR}` (or
//! contain it) to take it from the environment, so secrets stay out of the file.
//! Precedence for each setting: command-line flag, then environment variable, then
//! the file, then the built-in default.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[systems]]` blocks, parsed by the engine (common keys) and each
    /// connector (the rest).
    #[serde(default)]
    pub systems: Vec<toml::Table>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    /// Bearer tokens accepted on `/v1/*`.
    #[serde(default)]
    pub api_tokens: Vec<String>,
    pub log_format: Option<String>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("database_url", &self.database_url.as_deref().map(syncflow_store::redact))
            .field("api_tokens", &format!("{} configured", self.api_tokens.len()))
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, |name| std::env::var(name).ok()).with_context(|| format!("in config {}", path.display()))
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let mut value: toml::Value = toml::from_str(text)?;
        expand_env(&mut value, &env)?;
        Ok(value.try_into()?)
    }
}

/// Replaces `${VAR}` in every string value with the variable's value.
fn expand_env(value: &mut toml::Value, env: &impl Fn(&str) -> Option<String>) -> Result<()> {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else { bail!("unterminated ${{ in `{s}`") };
                let name = &rest[start + 2..start + end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        bail!("environment variable {name} is not set (referenced by the config)")
                    }
                }
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => items.iter_mut().try_for_each(|v| expand_env(v, env))?,
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, v)| expand_env(v, env))?,
        _ => {}
    }
    Ok(())
}

/// The commented starter file written by `syncflow init`.
pub const STARTER: &str = r#"# Syncflow configuration.
# Any string may reference the environment as ${VAR}; keep secrets there.
# Command-line flags and SYNCFLOW_* environment variables override this file.

[server]
# Address of the HTTP API. A non-loopback address requires api_tokens
# (or --insecure-no-auth).
listen = "127.0.0.1:8080"

# Embedded SQLite file by default; a postgres:// URL switches to PostgreSQL,
# which several `syncflow serve` nodes can share.
database_url = "sqlite:syncflow.db"
# database_url = "postgres://syncflow:${PGPASSWORD}@127.0.0.1:5432/syncflow"

# Bearer tokens accepted on /v1/*. Also settable as SYNCFLOW_API_TOKENS=a,b.
# api_tokens = ["${SYNCFLOW_TOKEN}"]

# "text" (human) or "json" (one object per line, for log shippers).
log_format = "text"

# External systems. Each block names a connector `kind`; changes to the listed
# entities are delivered to it (never back to the system they came from).
#
# [[systems]]
# name = "crm"                    # also the `origin` of changes it sends us
# kind = "http"                   # POST each change as signed JSON
# entities = ["customer", "invoice"]
# url = "https://crm.example.com/syncflow"
# secret = "${CRM_WEBHOOK_SECRET}" # HMAC key for the Syncflow-Signature header
# timeout = "10s"
# rate_limit = 20                 # requests per second (token bucket); omit = unlimited
# burst = 20
# concurrency = 8                 # pushes in flight at once
# max_attempts = 10               # then the delivery is `dead` (replayable)
# backoff_initial = "1s"          # doubles per attempt, with jitter ...
# backoff_max = "5m"              # ... up to this
# lease = "60s"                   # a crashed worker's delivery is retried after this
# callback_url = "https://crm.example.com/syncflow-status"  # outcomes of changes from crm
# callback_secret = "${CRM_CALLBACK_SECRET}"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_parses() {
        let c = Config::parse(STARTER, |_| None).unwrap();
        assert_eq!(c.server.listen.as_deref(), Some("127.0.0.1:8080"));
    }

    #[test]
    fn env_references_are_expanded_and_required() {
        let text = "[server]\napi_tokens = [\"${T1}\", \"x-${T2}-y\"]\n";
        let env = |k: &str| match k {
            "T1" => Some("one".to_string()),
            "T2" => Some("two".to_string()),
            _ => None,
        };
        let c = Config::parse(text, env).unwrap();
        assert_eq!(c.server.api_tokens, vec!["one", "x-two-y"]);
        let err = Config::parse(text, |_| None).unwrap_err();
        assert!(err.to_string().contains("T1"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::parse("[server]\nlisten_addr = \"x\"\n", |_| None).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::parse(
            "[server]\napi_tokens = [\"tok-secret\"]\ndatabase_url = \"postgres://u:pw-secret@h/db\"\n",
            |_| None,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("tok-secret") && !shown.contains("pw-secret"), "{shown}");
    }
}
