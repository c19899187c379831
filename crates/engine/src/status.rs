//! Publishes the final outcome of every change delivery (delivered, dead,
//! skipped) to systems that take them (`Connector::status_sink`: Kafka's status
//! topic), at-least-once.
//!
//! Invariant: the cursor `status:<system>` — a position `(finished_at, id)` —
//! moves only after the sink confirmed every outcome up to it. A crash repeats
//! the batch it was publishing, never skips one. The reader stays `SETTLE` behind
//! the clock so an outcome stamped just before a slow commit is not passed over.

use std::sync::Arc;
use std::time::Duration;

use syncflow_connectors::{DeliveryOutcome, StatusSink};
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{now_ms, Delivery, Store};
use tokio::sync::watch;

use crate::policy::backoff;

/// Outcomes read and published per round.
const BATCH: usize = 500;
/// How far behind the clock the reader stays (longest expected commit delay).
const SETTLE_MS: i64 = 1_000;
/// Idle wait between rounds.
const IDLE: Duration = Duration::from_millis(250);

/// The cursor's name in the store's `cursors` table.
pub fn cursor_name(system: &str) -> String {
    format!("status:{system}")
}

fn outcome(d: &Delivery) -> DeliveryOutcome {
    DeliveryOutcome {
        delivery_id: d.id,
        change_seq: d.change_seq,
        system: d.system.clone(),
        entity: d.entity.clone(),
        record_id: d.record_id.clone(),
        op: d.op.clone(),
        status: d.status.as_str().to_string(),
        attempts: d.attempts,
        http_status: d.http_status,
        external_id: d.external_id.clone(),
        remarks: d.remarks.clone(),
        finished_at: ms_to_timestamp(d.finished_at.unwrap_or_default()),
    }
}

fn parse_cursor(text: &str) -> Option<(i64, i64)> {
    let (at, id) = text.split_once(':')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

/// Publishes one batch past the cursor; returns how many it published.
pub async fn publish_once(store: &Store, system: &str, sink: &dyn StatusSink) -> Result<usize, String> {
    let name = cursor_name(system);
    let after = match store.cursor(&name).await.map_err(|e| e.to_string())? {
        Some(text) => parse_cursor(&text).ok_or_else(|| format!("cursor {name} is corrupt: `{text}`"))?,
        None => {
            // First run: from now on (history stays in the deliveries table).
            let start = (now_ms() - SETTLE_MS, 0);
            store.set_cursor(&name, &format!("{}:{}", start.0, start.1)).await.map_err(|e| e.to_string())?;
            start
        }
    };
    let rows = store.finished_after(after, now_ms() - SETTLE_MS, BATCH).await.map_err(|e| e.to_string())?;
    let Some(last) = rows.last() else { return Ok(0) };
    let outcomes: Vec<DeliveryOutcome> = rows.iter().map(outcome).collect();
    sink.publish(&outcomes).await.map_err(|e| e.to_string())?;
    let to = format!("{}:{}", last.finished_at.unwrap_or_default(), last.id);
    store.set_cursor(&name, &to).await.map_err(|e| e.to_string())?;
    Ok(rows.len())
}

/// Runs `publish_once` until shutdown, backing off while the sink or store fails.
pub(crate) async fn run(store: Store, system: String, sink: Arc<dyn StatusSink>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0;
    while !*shutdown.borrow() {
        let wait = match publish_once(&store, &system, sink.as_ref()).await {
            Ok(n) => {
                failures = 0;
                if n == BATCH {
                    continue;
                }
                IDLE
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(system = %system, error = %e, "could not publish delivery outcomes; will retry");
                backoff(failures, Duration::from_millis(500), Duration::from_secs(30))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
