//! The retention loop: every `interval`, one pass of `Store::prune` over what is
//! older than the configured age (`retention = "7d"`; `"off"` or `"0"` disables).
//!
//! Invariant kept here: a finished delivery is pruned only after every status
//! publisher this engine runs (`status.rs`) has published past it — the pass is
//! given their cursors. Several nodes may prune at once; each statement re-checks
//! its conditions, so overlapping passes only repeat work.

use std::time::Duration;

use syncflow_connectors::parse_duration;
use syncflow_store::{Pruned, Retention, Store};
use tokio::sync::watch;

use crate::policy::backoff;

/// When and how much to prune.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Prune what is older than this; `None`: keep everything.
    pub age: Option<Duration>,
    /// Time between passes (the first comes one interval after start).
    pub interval: Duration,
    /// Rows one transaction looks at.
    pub batch: usize,
    /// Pause between transactions, so writers queued behind a batch get the
    /// database (SQLite has one writer connection).
    pub pause: Duration,
}

/// The default age: a week of history for operators, then pruned.
pub const DEFAULT_AGE: Duration = Duration::from_secs(7 * 86_400);

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            age: Some(DEFAULT_AGE),
            interval: Duration::from_secs(600),
            batch: syncflow_store::retention::DEFAULT_BATCH,
            pause: Duration::from_millis(10),
        }
    }
}

/// Parses the `retention` setting: a duration (`"7d"`, `"36h"`), or `"off"` / `"0"`
/// for no retention.
pub fn parse_age(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let age = parse_duration(text).map_err(|e| format!("retention: {e}; or \"off\""))?;
    Ok(Some(age).filter(|a| !a.is_zero()))
}

/// One pass now: everything older than `age`, keeping what the status publishers
/// of `status_systems` have not published yet.
pub async fn prune_once(
    store: &Store,
    age: Duration,
    status_systems: &[String],
    batch: usize,
    pause: Duration,
) -> Result<Pruned, syncflow_store::StoreError> {
    let mut r = Retention::older_than(age);
    r.batch = batch;
    r.pause = pause;
    r.status_cursors = status_systems.iter().map(|s| crate::status::cursor_name(s)).collect();
    store.prune(&r).await
}

/// Prunes every `interval` until shutdown; one log line per pass that removed something.
pub(crate) async fn run(
    store: Store,
    settings: RetentionSettings,
    status_systems: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(age) = settings.age else { return };
    let mut failures = 0;
    let mut wait = settings.interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let started = std::time::Instant::now();
        match prune_once(&store, age, &status_systems, settings.batch, settings.pause).await {
            Ok(p) => {
                failures = 0;
                wait = settings.interval;
                if p.total() > 0 {
                    tracing::info!(
                        target: "retention",
                        inbox = p.inbox,
                        inbox_payloads = p.inbox_payloads,
                        deliveries = p.deliveries,
                        delivery_attempts = p.delivery_attempts,
                        changes = p.changes,
                        transactions = p.transactions,
                        longest_write_ms = p.longest_write_ms,
                        ms = started.elapsed().as_millis() as u64,
                        "pruned rows older than {}",
                        humantime(age)
                    );
                }
            }
            Err(e) => {
                failures += 1;
                wait = backoff(failures, Duration::from_secs(1), settings.interval);
                tracing::warn!(target: "retention", error = %e, "retention pass failed; will retry");
            }
        }
    }
}

/// `7d`, `36h`, `90m`, `45s`: the age as configured, for log lines.
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{:.3}s", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_and_off_disables() {
        assert_eq!(parse_age("7d").unwrap(), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("36h").unwrap(), Some(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_age("off").unwrap(), None);
        assert_eq!(parse_age("0").unwrap(), None);
        assert!(parse_age("a week").is_err());
        assert_eq!(humantime(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(humantime(Duration::from_millis(1500)), "1.500s");
    }
}
