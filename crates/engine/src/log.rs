//! Delivery log lines a person can read: one line per delivery that fails, is
//! retried, goes dead or gets through after retries, and a periodic one-line
//! summary per system while it has a backlog. A first-try success and an idle hub
//! log nothing. Fields are structured (system, record, attempt, remarks), so
//! `--log-format json` gives the same as one object per line. Nothing secret goes
//! here: remarks are the connectors' own summaries (status, reason), never
//! request bodies or credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use syncflow_store::deliveries::Kind;
use syncflow_store::{now_ms, Delivery, DeliveryStatus, Finish, Store};

/// Target of every line here (`RUST_LOG=delivery=debug` also shows first-try successes).
pub(crate) const TARGET: &str = "delivery";
/// How often a system with a backlog is summarised.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(15);

fn record(d: &Delivery) -> String {
    format!("{}/{}", d.entity, d.record_id)
}

fn what(d: &Delivery) -> &'static str {
    match d.kind {
        Kind::Change => "change",
        Kind::Callback => "callback",
    }
}

fn seconds(ms: i64) -> String {
    let s = ms.max(0) as f64 / 1000.0;
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        format!("{}s", s.round() as i64)
    }
}

/// One line per recorded outcome worth a person's attention. `recorded[i]` says
/// whether item i was written (a lost lease is logged where it is detected).
pub(crate) fn outcomes(items: &[(&Delivery, &Finish)], recorded: &[bool]) {
    for ((d, f), ok) in items.iter().zip(recorded) {
        if !ok {
            continue;
        }
        let remarks = f.remarks.as_deref();
        match f.status {
            DeliveryStatus::Retrying => {
                let retry_in = seconds(f.next_attempt_at.unwrap_or_else(now_ms) - now_ms());
                tracing::warn!(
                    target: TARGET,
                    system = %d.system, record = %record(d), delivery = d.id, change = d.change_seq,
                    kind = %what(d), attempt = d.attempts, retry_in = %retry_in, remarks,
                    "delivery failed; will retry"
                );
            }
            DeliveryStatus::Dead => {
                tracing::warn!(
                    target: TARGET,
                    system = %d.system, record = %record(d), delivery = d.id, change = d.change_seq,
                    kind = %what(d), attempt = d.attempts, remarks,
                    "delivery is dead (replay with POST /v1/deliveries/{}/retry)", d.id
                );
            }
            DeliveryStatus::Delivered if d.attempts > 1 => {
                tracing::info!(
                    target: TARGET,
                    system = %d.system, record = %record(d), delivery = d.id, change = d.change_seq,
                    kind = %what(d), attempt = d.attempts, remarks,
                    "delivered after {} attempts", d.attempts
                );
            }
            status => {
                tracing::debug!(
                    target: TARGET,
                    system = %d.system, record = %record(d), delivery = d.id, change = d.change_seq,
                    kind = %what(d), attempt = d.attempts, status = status.as_str(), remarks,
                    "delivery recorded"
                );
            }
        }
    }
}

/// Summarises each system's queue every `SUMMARY_EVERY` while it is not empty, and
/// says once when it has drained. Stops when dropped.
pub(crate) struct BacklogReporter(tokio::task::JoinHandle<()>);

impl Drop for BacklogReporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl BacklogReporter {
    pub(crate) fn spawn(store: Store, systems: Vec<String>) -> BacklogReporter {
        BacklogReporter(tokio::spawn(async move {
            let mut backlog: BTreeMap<String, bool> = BTreeMap::new();
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            tick.tick().await; // the first tick is immediate; start after one period
            loop {
                tick.tick().await;
                let Ok(stats) = store.queue_stats().await else { continue };
                let now = now_ms();
                for name in &systems {
                    let q = stats.get(name).cloned().unwrap_or_default();
                    let had = backlog.insert(name.clone(), q.depth() > 0).unwrap_or(false);
                    if q.depth() > 0 {
                        let oldest = q.oldest_unfinished_at.map_or_else(String::new, |t| seconds(now - t));
                        tracing::info!(
                            target: TARGET,
                            system = %name, pending = q.pending, retrying = q.retrying, in_flight = q.in_flight,
                            dead = q.dead, oldest_age = %oldest,
                            "backlog: {} waiting, oldest {oldest}", q.depth()
                        );
                    } else if had {
                        tracing::info!(target: TARGET, system = %name, dead = q.dead, "backlog cleared");
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn ages_read_well() {
        assert_eq!(seconds(1500), "1.5s");
        assert_eq!(seconds(-5), "0.0s");
        assert_eq!(seconds(61_400), "61s");
    }
}
