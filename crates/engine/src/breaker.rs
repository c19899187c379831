//! The mass-delete breaker: when one system deletes more linked records within a
//! window than a count *and* a share of its links allow (defaults: more than 50 and
//! more than 10 % in 5 minutes), its further deletions are held, not applied: each
//! becomes a `holds` row (its inbox row settled `ignored` with the reason), the
//! system is flagged, and an operator releases (applies) or discards (the hub keeps
//! the record) them. While any hold of the system is open, every new deletion from
//! it is held too. Below the threshold deletions flow as usual.
//!
//! The window is counted per node (in memory); the holds are shared rows.
//!
//! The same settings guard the other direction: hub-side deletions (API, client
//! sync, plain SQL) on their way to the system are held by the dispatcher
//! (`syncflow_store`'s `outward_holds.rs`; `BreakerSettings::guard`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use syncflow_store::{InboxEvent, Store, StoreError};

use crate::reconcile::take_duration;

/// `[[systems]]` keys: `mass_delete_breaker` (true), `mass_delete_count` (50),
/// `mass_delete_share` (0.1), `mass_delete_window` ("5m").
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    pub enabled: bool,
    pub count: u64,
    pub share: f64,
    pub window: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { enabled: true, count: 50, share: 0.1, window: Duration::from_secs(300) }
    }
}

impl BreakerSettings {
    /// The dispatcher's form of these settings for `system` (`None` when off).
    pub fn guard(&self, system: &str) -> Option<syncflow_store::DeleteGuard> {
        self.enabled.then(|| syncflow_store::DeleteGuard {
            system: system.to_string(),
            count: self.count,
            share: self.share,
            window_ms: self.window.as_millis() as i64,
        })
    }

    pub(crate) fn take(t: &mut toml::Table) -> Result<BreakerSettings, String> {
        let mut s = BreakerSettings::default();
        match t.remove("mass_delete_breaker") {
            None => {}
            Some(toml::Value::Boolean(b)) => s.enabled = b,
            Some(_) => return Err("`mass_delete_breaker` must be true or false".into()),
        }
        match t.remove("mass_delete_count") {
            None => {}
            Some(toml::Value::Integer(n)) if n >= 0 => s.count = n as u64,
            Some(_) => return Err("`mass_delete_count` must be an integer ≥ 0".into()),
        }
        match t.remove("mass_delete_share") {
            None => {}
            Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                Some(x) if (0.0..=1.0).contains(&x) => s.share = x,
                _ => return Err("`mass_delete_share` must be a number from 0 to 1".into()),
            },
        }
        if let Some(w) = take_duration(t, "mass_delete_window")? {
            s.window = w;
        }
        Ok(s)
    }
}

/// Deletions a pipeline applied recently (this node).
#[derive(Debug, Default)]
pub struct DeleteWindow {
    applied: Mutex<VecDeque<Instant>>,
}

impl DeleteWindow {
    fn recent(&self, window: Duration) -> u64 {
        let mut q = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        q.len() as u64
    }

    fn push(&self) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).push_back(Instant::now());
    }
}

/// Decides one inward deletion of a linked record: `Ok(None)` lets it apply (and
/// counts it), `Ok(Some(reason))` means it was held (its inbox row is settled).
pub(crate) async fn check(
    store: &Store,
    settings: &BreakerSettings,
    window: &DeleteWindow,
    row: &InboxEvent,
    entity: &str,
    record_id: &str,
    external_id: &str,
) -> Result<Option<String>, StoreError> {
    if !settings.enabled {
        return Ok(None);
    }
    if let Some(hold) = store.hold_of_inbox(row.id).await? {
        if hold.status == "released" {
            window.push();
            return Ok(None);
        }
    }
    let open = store.held_counts_on(Some("inward")).await?.get(&row.system).copied().unwrap_or(0);
    let reason = if open > 0 {
        Some(format!("{open} deletion(s) from {} are already held; release or discard them first", row.system))
    } else {
        let n = window.recent(settings.window) + 1;
        let linked = store.link_count(&row.system, entity).await?.max(1);
        let share = n as f64 / linked as f64;
        (n > settings.count && share > settings.share).then(|| {
            format!(
                "{n} deletions of linked records within {:?} ({:.0} % of {linked}) exceed the breaker (> {} and > {:.0} %)",
                settings.window,
                share * 100.0,
                settings.count,
                settings.share * 100.0
            )
        })
    };
    match reason {
        Some(why) => {
            store.hold_delete(&row.system, entity, record_id, external_id, row.id, &why).await?;
            tracing::warn!(system = %row.system, record = record_id, "mass-delete breaker held a deletion: {why}");
            Ok(Some(why))
        }
        None => {
            window.push();
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_protective_defaults_and_parse() {
        let mut t: toml::Table =
            toml::from_str("mass_delete_count = 5\nmass_delete_window = \"1m\"\nurl = \"x\"").unwrap();
        let s = BreakerSettings::take(&mut t).unwrap();
        assert_eq!((s.enabled, s.count, s.share, s.window), (true, 5, 0.1, Duration::from_secs(60)));
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["url"], "the connector's keys are left");
        let mut bad: toml::Table = toml::from_str("mass_delete_share = 2").unwrap();
        assert!(BreakerSettings::take(&mut bad).is_err());
        let mut r: toml::Table = toml::from_str("reconcile_interval = \"10m\"\nauto_repair = true").unwrap();
        let rs = crate::reconcile::ReconcileSettings::take(&mut r).unwrap();
        assert_eq!((rs.interval, rs.auto_repair), (Some(Duration::from_secs(600)), true));
        assert_eq!(crate::reconcile::ReconcileSettings::default().interval, None, "off by default");
    }
}
