//! The TOML configuration file. Any string value may be written as `${VAR}` (or
//! contain it) to take it from the environment, so secrets stay out of the file.
//! Precedence for each setting: command-line flag, then environment variable, then
//! the file, then the built-in default.
//!
//! Invariant kept here: no error shows a value that came from the environment or
//! sits under a secret-looking key. Every such value is remembered (`remember`) and
//! blanked out of error text (`scrub`) before anything is printed.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How long settled inbox events, finished deliveries and passed changes are
    /// kept (`"7d"`; `"off"` keeps everything). Default: 7 days.
    pub retention: Option<String>,
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[systems]]` blocks, parsed by the engine (common keys) and each
    /// connector (the rest).
    #[serde(default)]
    pub systems: Vec<toml::Table>,
    /// Sync clients (`[[clients]]`): each with its own token and entity grants.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

/// One `[[clients]]` block: a sync client app (a device, a shop's till).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Names the client in change origins (`client:<id>`); 1–64 of `A-Za-z0-9._-`.
    pub id: String,
    /// Its bearer token; the client id comes from it.
    pub token: Option<String>,
    /// Entities it may sync and stream; all when absent.
    pub entities: Option<Vec<String>>,
    /// `last_writer_wins` (default) or `reject_stale`, when a request names none.
    pub conflict_policy: Option<String>,
    /// Requests with no token act as this client (for clients that cannot send one).
    #[serde(default)]
    pub anonymous: bool,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("entities", &self.entities)
            .field("conflict_policy", &self.conflict_policy)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl ClientConfig {
    pub fn to_spec(&self) -> syncflow_server::ClientSpec {
        syncflow_server::ClientSpec {
            id: self.id.clone(),
            token: self.token.clone(),
            entities: self.entities.clone(),
            conflict_policy: self.conflict_policy.clone(),
            anonymous: self.anonymous,
        }
    }
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
    /// The `retention` age; `None` when it is "off" (the default is 7 days).
    pub fn retention_age(&self) -> Result<Option<std::time::Duration>> {
        match &self.retention {
            Some(text) => syncflow_engine::retention::parse_age(text).map_err(|e| anyhow!(e)),
            None => Ok(Some(syncflow_engine::retention::DEFAULT_AGE)),
        }
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, |name| std::env::var(name).ok()).with_context(|| format!("in config {}", path.display()))
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        // toml's own message quotes the offending line, which may hold a secret:
        // say where, and what is wrong, without the line.
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| {
                let before = &text[..span.start.min(text.len())];
                (before.matches('\n').count() + 1, before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1)
            });
            anyhow!("TOML syntax error at line {line}, column {column}: {}", e.message().replace('\n', "; "))
        })?;
        remember_secret_keys(&value, false);
        expand_env(&mut value, &env)?;
        value.try_into().map_err(|e: toml::de::Error| anyhow!(scrub(&e.to_string())))
    }
}

/// Values never to be shown: expanded `${VAR}`s and secret-looking settings.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Values this short are not secrets and would blank out ordinary words.
const MIN_SECRET: usize = 4;

/// Remembers a value that must never appear in an error or log line.
pub fn remember(value: &str) {
    let value = value.trim();
    if value.chars().count() < MIN_SECRET {
        return;
    }
    let mut list = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|s| s == value) {
        list.push(value.to_string());
    }
    drop(list);
    remember_password(value);
}

/// Remembers only the password of a URL such as `postgres://user:pw@host/db`
/// (the rest of a database URL helps in errors and is not secret).
pub fn remember_password(url: &str) {
    if let (Some(scheme_end), Some(at)) = (url.find("://"), url.rfind('@')) {
        if let Some((_, password)) = url.get(scheme_end + 3..at).and_then(|u| u.split_once(':')) {
            let mut list = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
            if password.chars().count() >= MIN_SECRET && !list.iter().any(|s| s == password) {
                list.push(password.to_string());
            }
        }
    }
}

/// `text` with every remembered value (as written or as escaped in quotes)
/// replaced by `***`, longest first so one secret inside another is covered.
pub fn scrub(text: &str) -> String {
    let mut list = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in &list {
        let escaped = format!("{secret:?}");
        let escaped = &escaped[1..escaped.len() - 1];
        out = out.replace(secret.as_str(), "***");
        if escaped != secret {
            out = out.replace(escaped, "***");
        }
    }
    out
}

/// Keys whose values are credentials, wherever they appear.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "secret", "password", "key", "headers"].iter().any(|k| key.contains(k))
}

/// Remembers every string under a secret-looking key (`under_secret`: the value
/// sits inside one already, such as an item of `api_tokens`).
fn remember_secret_keys(value: &toml::Value, under_secret: bool) {
    match value {
        toml::Value::String(s) if under_secret => remember(s),
        toml::Value::String(s) => remember_password(s),
        toml::Value::Array(items) => items.iter().for_each(|v| remember_secret_keys(v, under_secret)),
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| remember_secret_keys(v, under_secret || is_secret_key(k))),
        _ => {}
    }
}

/// Replaces `${VAR}` in every string value with the variable's value, and
/// remembers each value taken from the environment (see `scrub`).
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
                    Some(v) => {
                        remember(&v);
                        out.push_str(&v);
                    }
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

# How long settled inbox events, finished deliveries (dead ones too) and change-log
# rows every reader has passed are kept before they are pruned ("off" keeps
# everything). `syncflow prune --older-than 7d` runs one pass now.
retention = "7d"

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
#
# [[systems]]
# name = "stripe"                 # webhooks arrive at /webhooks/stripe (the name)
# kind = "stripe"                 # two-way: customers out, customer and invoice events in
# entities = ["customer"]
# secret_key = "${STRIPE_SECRET_KEY}"          # sk_test_… or sk_live_…
# webhook_secret = "${STRIPE_WEBHOOK_SECRET}"  # whsec_… of the endpoint; none = polling only
# poll_interval = "30s"           # also poll /v1/events (catches missed webhooks)
# Link what both sides already hold, once: syncflow --config syncflow.toml backfill --system stripe
# (see docs/stripe.md)
#
# [[systems]]
# name = "salesforce"
# kind = "salesforce"             # two-way: customers ↔ Contacts (polled; no webhooks)
# entities = ["customer"]
# login_url = "https://acme.my.salesforce.com"  # your My Domain
# client_id = "${SF_CLIENT_ID}"
# client_secret = "${SF_CLIENT_SECRET}"         # or jwt_username + jwt_key_file (RS256)
# sobject = "Contact"             # or "Account"
# daily_budget_share = 0.5        # at most half the org's daily API allowance
# poll_interval = "5s"
# conflict_policy = "external_wins"  # or hub_wins, newest_wins, manual
# Link what both sides already hold, once: syncflow --config syncflow.toml backfill --system salesforce
# (see docs/salesforce.md; metadata keys map to custom fields under [systems.fields])
#
# A Kafka cluster: changes out (key <entity>/<id>), delivery outcomes out, events
# in (see docs/kafka.md; `syncflow sandbox kafka` runs a local stand-in).
# [[systems]]
# name = "bus"
# kind = "kafka"
# brokers = "127.0.0.1:9092"
# topic = "syncflow.changes"          # may contain {entity}
# status_topic = "syncflow.delivery-status"
# inbound_topic = "crm.events"
# dead_letter_topic = "crm.events.dead"
# [systems.librdkafka]                # any librdkafka property
# "sasl.password" = "${KAFKA_PASSWORD}"
#
# Sync clients (POST /v1/sync, GET /v1/stream): one block per app or device, each
# with its own token; the client id comes from the token. `entities` limits what
# it may sync and stream (all when absent); `conflict_policy` is the default for
# its requests: "last_writer_wins" (by the client's updated_at) or "reject_stale"
# (by base_version). See docs/client-sync.md.
# [[clients]]
# id = "shop-till-1"
# token = "${SHOP_TILL_1_TOKEN}"
# entities = ["stock_reading"]
# conflict_policy = "last_writer_wins"
#
# Clients that cannot send a token (such as the 001 seed's) may be let in as one
# named client, limited to its entities:
# [[clients]]
# id = "seed-shop"
# anonymous = true
# entities = ["stock_reading"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_parses() {
        let c = Config::parse(STARTER, |_| None).unwrap();
        assert_eq!(c.server.listen.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(c.retention_age().unwrap(), Some(std::time::Duration::from_secs(7 * 86_400)));
        let off = Config::parse("retention = \"off\"\n", |_| None).unwrap();
        assert_eq!(off.retention_age().unwrap(), None);
        assert!(Config::parse("retention = \"soon\"\n", |_| None).unwrap().retention_age().is_err());
    }

    /// Every connector kind has a commented example block, and uncommented it is
    /// a valid config for that kind.
    #[test]
    fn starter_shows_every_connector_kind() {
        for kind in syncflow_connectors::KINDS {
            let marker = format!("# kind = \"{kind}\"");
            let start = STARTER.find(&marker).unwrap_or_else(|| panic!("no example for kind {kind}"));
            let block_start = STARTER[..start].rfind("# [[systems]]").expect("block header");
            let block: String = STARTER[block_start..]
                .lines()
                .take_while(|l| l.starts_with("# ") && !l.starts_with("# Link") && l.trim() != "#")
                .map(|l| l.trim_start_matches("# ").to_string() + "\n")
                .collect();
            let c = Config::parse(&block, |_| Some("x".into())).unwrap();
            let table = c.systems[0].clone();
            let sc = syncflow_engine::SystemConfig::from_table(table).unwrap();
            assert_eq!(sc.kind, *kind);
            syncflow_connectors::build(&sc.name, &sc.kind, sc.settings.clone())
                .unwrap_or_else(|e| panic!("the {kind} example does not build: {e}"));
        }
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
    fn clients_parse_and_hide_tokens() {
        let text = "[[clients]]\nid = \"till-1\"\ntoken = \"${TILL}\"\nentities = [\"stock_reading\"]\n\
                    conflict_policy = \"reject_stale\"\n\n[[clients]]\nid = \"seed\"\nanonymous = true\n";
        let c = Config::parse(text, |k| (k == "TILL").then(|| "till-secret".to_string())).unwrap();
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.clients[0].token.as_deref(), Some("till-secret"));
        assert_eq!(c.clients[0].entities.as_deref(), Some(&["stock_reading".to_string()][..]));
        assert!(c.clients[1].anonymous && c.clients[1].token.is_none());
        assert!(!format!("{c:?}").contains("till-secret"));
        assert!(Config::parse("[[clients]]\nid = \"x\"\ntoken = \"t\"\nscopes = []\n", |_| None).is_err());
    }

    #[test]
    fn errors_never_show_values_from_the_environment_or_secret_keys() {
        let env = |k: &str| (k == "TOK").then(|| "tok-from-env-7c1e".to_string());
        let err = Config::parse("[server]\napi_tokens = \"${TOK}\"\n", env).unwrap_err().to_string();
        assert!(!err.contains("tok-from-env-7c1e") && err.contains("***"), "{err}");
        let err = Config::parse("[server]\napi_tokens = \"literal-tok-93a\"\n", |_| None).unwrap_err().to_string();
        assert!(!err.contains("literal-tok-93a"), "{err}");
        let err = Config::parse("[server]\napi_tokens = [\"literal-tok-5e1\"\n", |_| None).unwrap_err().to_string();
        assert!(!err.contains("literal-tok-5e1") && err.contains("at line 3"), "{err}");
        remember("postgres://u:pw-77bd@h/db");
        assert_eq!(scrub("password pw-77bd rejected"), "password *** rejected");
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
