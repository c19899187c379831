//! `[[systems]]` blocks: the settings every system has (subscriptions, limits,
//! retry policy, callbacks) are read here; every other key belongs to the
//! connector and is handed to it untouched.

use std::time::Duration;

use std::collections::BTreeMap;

use syncflow_connectors::{parse_duration, ConfigError};
use syncflow_core::sync::MergePolicy;
use syncflow_core::Entity;

#[derive(Clone)]
pub struct SystemConfig {
    pub name: String,
    pub kind: String,
    /// Entity names this system receives changes of.
    pub entities: Vec<String>,
    /// Requests per second; `None` = unlimited.
    pub rate_limit: Option<f64>,
    pub burst: u32,
    pub concurrency: usize,
    pub max_attempts: i64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a claimed delivery belongs to a worker before another may retry it.
    pub lease: Duration,
    pub callback_url: Option<String>,
    pub callback_secret: Option<String>,
    /// Who wins a same-field conflict with this system (`conflict_policy`), and
    /// per-field exceptions (`[systems.field_policies]`, e.g. `email = "manual"`).
    pub conflict_policy: MergePolicy,
    pub field_policies: BTreeMap<String, MergePolicy>,
    /// `reconcile_interval`, `reconcile_grace`, `auto_repair`.
    pub reconcile: crate::reconcile::ReconcileSettings,
    /// `mass_delete_*`: when inward deletions are held.
    pub breaker: crate::breaker::BreakerSettings,
    /// The connector's own settings.
    pub settings: toml::Table,
}

impl SystemConfig {
    /// The policy deciding a conflict on `field`.
    pub fn policy_for(&self, field: &str) -> MergePolicy {
        self.field_policies.get(field).copied().unwrap_or(self.conflict_policy)
    }
}

impl std::fmt::Debug for SystemConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("entities", &self.entities)
            .field("rate_limit", &self.rate_limit)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("callback_url", &self.callback_url)
            .finish_non_exhaustive()
    }
}

fn take<T>(
    t: &mut toml::Table,
    system: &str,
    key: &str,
    get: impl Fn(&toml::Value) -> Option<T>,
    expect: &str,
) -> Result<Option<T>, ConfigError> {
    match t.remove(key) {
        None => Ok(None),
        Some(v) => get(&v).map(Some).ok_or_else(|| ConfigError::Invalid {
            system: system.to_string(),
            message: format!("`{key}` must be {expect}"),
        }),
    }
}

impl SystemConfig {
    pub fn from_table(mut t: toml::Table) -> Result<SystemConfig, ConfigError> {
        let name = match t.remove("name") {
            Some(toml::Value::String(n)) => n,
            _ => {
                return Err(ConfigError::Invalid {
                    system: "?".into(),
                    message: "every [[systems]] needs a `name`".into(),
                })
            }
        };
        let invalid = |message: String| ConfigError::Invalid { system: name.clone(), message };
        if name.is_empty()
            || name.starts_with("client:")
            || ["api", "sql"].contains(&name.as_str())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("`name` must be letters, digits, - or _ (and not `api` or `sql`)".into()));
        }
        let n = name.as_str();
        let kind = take(&mut t, n, "kind", |v| v.as_str().map(str::to_string), "a string")?
            .ok_or_else(|| invalid("`kind` is required".into()))?;
        let entities: Vec<String> = take(
            &mut t,
            n,
            "entities",
            |v| v.as_array()?.iter().map(|e| e.as_str().map(str::to_string)).collect(),
            "a list of entity names",
        )?
        .unwrap_or_else(|| vec!["customer".into()]);
        for e in &entities {
            if Entity::by_name(e).is_none() {
                return Err(invalid(format!("unknown entity `{e}` in `entities`")));
            }
        }
        let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        let rate_limit = take(&mut t, n, "rate_limit", number, "a number (requests per second)")?.filter(|r| *r > 0.0);
        let burst = take(&mut t, n, "burst", |v| v.as_integer().filter(|b| *b >= 1), "an integer ≥ 1")?
            .map_or_else(|| rate_limit.map_or(1, |r| r.ceil().max(1.0) as u32), |b| b as u32);
        let concurrency =
            take(&mut t, n, "concurrency", |v| v.as_integer().filter(|c| (1..=1024).contains(c)), "1 to 1024")?
                .unwrap_or(8) as usize;
        let max_attempts =
            take(&mut t, n, "max_attempts", |v| v.as_integer().filter(|a| *a >= 1), "an integer ≥ 1")?.unwrap_or(10);
        let duration = |key: &str, default: &str, t: &mut toml::Table| -> Result<Duration, ConfigError> {
            let text = take(t, n, key, |v| v.as_str().map(str::to_string), "a duration like \"2s\"")?
                .unwrap_or_else(|| default.to_string());
            parse_duration(&text)
                .map_err(|e| ConfigError::Invalid { system: n.to_string(), message: format!("`{key}`: {e}") })
        };
        let backoff_initial = duration("backoff_initial", "1s", &mut t)?;
        let backoff_max = duration("backoff_max", "5m", &mut t)?;
        let lease = duration("lease", "60s", &mut t)?;
        check_lease(n, &kind, lease, &t)?;
        let callback_url = take(&mut t, n, "callback_url", |v| v.as_str().map(str::to_string), "a URL")?;
        let callback_secret = take(&mut t, n, "callback_secret", |v| v.as_str().map(str::to_string), "a string")?;
        const POLICIES: &str = "external_wins, hub_wins, newest_wins or manual";
        let policy = |v: &toml::Value| v.as_str().and_then(MergePolicy::parse);
        let conflict_policy = take(&mut t, n, "conflict_policy", policy, POLICIES)?.unwrap_or_default();
        let field_policies = take(
            &mut t,
            n,
            "field_policies",
            |v| v.as_table()?.iter().map(|(k, v)| policy(v).map(|p| (k.clone(), p))).collect(),
            &format!("a table of field = policy ({POLICIES})"),
        )?
        .unwrap_or_default();
        let reconcile = crate::reconcile::ReconcileSettings::take(&mut t).map_err(invalid)?;
        let breaker = crate::breaker::BreakerSettings::take(&mut t).map_err(invalid)?;
        Ok(SystemConfig {
            name,
            kind,
            entities,
            rate_limit,
            burst,
            concurrency,
            max_attempts,
            backoff_initial,
            backoff_max,
            lease,
            callback_url,
            callback_secret,
            conflict_policy,
            field_policies,
            reconcile,
            breaker,
            settings: t,
        })
    }
}

/// The longest one request of a connector may take: its `timeout` setting (left
/// in place for the connector) or the connector's default.
fn request_timeout(system: &str, kind: &str, settings: &toml::Table) -> Result<Duration, ConfigError> {
    match settings.get("timeout") {
        Some(toml::Value::String(text)) => parse_duration(text)
            .map_err(|e| ConfigError::Invalid { system: system.to_string(), message: format!("`timeout`: {e}") }),
        Some(_) => Err(ConfigError::Invalid {
            system: system.to_string(),
            message: "`timeout` must be a duration like \"10s\"".into(),
        }),
        None if kind == "stripe" => Ok(syncflow_connectors::stripe::config::DEFAULT_TIMEOUT),
        None if kind == "kafka" => Ok(syncflow_connectors::kafka::config::push_timeout_of(settings)),
        None => Ok(syncflow_connectors::http::DEFAULT_TIMEOUT),
    }
}

/// A lease must outlast any push: when it can expire while a request is still
/// running, another worker (or node) claims the delivery and pushes it again.
fn check_lease(system: &str, kind: &str, lease: Duration, settings: &toml::Table) -> Result<(), ConfigError> {
    let timeout = request_timeout(system, kind, settings)?;
    if lease <= timeout {
        return Err(ConfigError::Invalid {
            system: system.to_string(),
            message: format!(
                "`lease` ({}) must be longer than the request `timeout` ({}{}), or a delivery still being \
                 pushed could be claimed and pushed again; raise `lease` or lower `timeout`",
                show(lease),
                show(timeout),
                if settings.contains_key("timeout") { "" } else { ", the default" },
            ),
        });
    }
    Ok(())
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn common_keys_are_taken_and_the_rest_left_to_the_connector() {
        let c = SystemConfig::from_table(table(
            "name = \"crm\"\nkind = \"http\"\nentities = [\"customer\", \"invoice\"]\nrate_limit = 20\n\
             max_attempts = 3\nbackoff_initial = \"200ms\"\nurl = \"http://127.0.0.1:1/x\"\n",
        ))
        .unwrap();
        assert_eq!(c.entities, vec!["customer", "invoice"]);
        assert_eq!(c.rate_limit, Some(20.0));
        assert_eq!(c.burst, 20);
        assert_eq!(c.backoff_initial, Duration::from_millis(200));
        assert_eq!(c.settings.keys().collect::<Vec<_>>(), vec!["url"]);
    }

    #[test]
    fn bad_blocks_are_rejected_with_the_system_named() {
        let e =
            SystemConfig::from_table(table("name = \"crm\"\nkind = \"http\"\nentities = [\"planet\"]")).err().unwrap();
        assert_eq!(e.to_string(), "system `crm`: unknown entity `planet` in `entities`");
        assert!(SystemConfig::from_table(table("name = \"api\"\nkind = \"http\"")).is_err());
        assert!(SystemConfig::from_table(table("name = \"x\"\nkind = \"http\"\nconcurrency = 0")).is_err());
        assert!(SystemConfig::from_table(table("kind = \"http\"")).is_err());
    }

    #[test]
    fn a_lease_shorter_than_a_push_is_refused() {
        let err = |text: &str| SystemConfig::from_table(table(text)).err().map(|e| e.to_string());
        let e = err("name = \"crm\"\nkind = \"http\"\nlease = \"2s\"").expect("2s lease < 10s default timeout");
        assert!(e.contains("`lease` (2s)") && e.contains("`timeout` (10s, the default)"), "{e}");
        let e = err("name = \"crm\"\nkind = \"http\"\nlease = \"5s\"\ntimeout = \"5s\"").expect("equal");
        assert!(e.contains("(5s)") && e.contains("system `crm`"), "{e}");
        assert!(err("name = \"s\"\nkind = \"stripe\"\nlease = \"15s\"").is_some(), "stripe's default is 20s");
        assert_eq!(err("name = \"crm\"\nkind = \"http\"\nlease = \"3s\"\ntimeout = \"2500ms\""), None);
        assert_eq!(err("name = \"crm\"\nkind = \"http\""), None, "defaults: 60s lease, 10s timeout");
        // Kafka: librdkafka's message.timeout.ms (default 30 s) plus 5 s.
        assert!(err("name = \"k\"\nkind = \"kafka\"\nlease = \"30s\"").is_some(), "kafka's default push is 35s");
        let short = "name = \"k\"\nkind = \"kafka\"\nlease = \"7s\"\n[librdkafka]\n\"message.timeout.ms\" = 1000";
        assert_eq!(err(short), None);
    }
}
