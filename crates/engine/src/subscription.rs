//! Drives a system's subscription (`Inward::subscribe`: a topic's consumer group)
//! through the inward pipeline, one message at a time.
//!
//! Invariant: a message's position is handed back (`done`, which lets the
//! subscription commit it) only after `Pipeline::receive` returned — the event is
//! in the inbox, applied or waiting for the pipeline's own retry. A message that
//! cannot be read is recorded `rejected` and passed, never blocking the ones after it.

use std::sync::Arc;
use std::time::Duration;

use syncflow_connectors::{SubscribedMessage, Subscription};
use syncflow_core::sync::InboxOutcome;
use syncflow_store::{NewInboxEvent, StoreError};
use tokio::sync::watch;

use crate::inward::Pipeline;
use crate::policy::backoff;

/// Inbox source of events read from a subscription.
pub const SOURCE: &str = "topic";

impl Pipeline {
    /// Records a message that cannot be read as `rejected` (kept for operators).
    /// Returns false when its id was in the inbox already.
    pub async fn reject_unreadable(&self, event_id: &str, payload: String, why: &str) -> Result<bool, StoreError> {
        let new = NewInboxEvent {
            system: self.system().to_string(),
            event_id: event_id.to_string(),
            event_type: "unreadable".into(),
            entity: None,
            external_id: None,
            event_created: 0,
            source: SOURCE.into(),
            payload,
        };
        let why = format!("unreadable message: {why}");
        let inserted = self.store().inbox_record(&new, InboxOutcome::Rejected, None, Some(&why), None).await?.is_some();
        if inserted {
            tracing::warn!(system = %self.system(), event = %event_id, remarks = %why, "inward event not applied");
        }
        Ok(inserted)
    }

    /// Records and applies one message; `Ok` once it is durable in the inbox.
    pub async fn receive_message(&self, sub: &dyn Subscription, msg: &SubscribedMessage) -> Result<(), StoreError> {
        let (outcome, remarks) = match &msg.event {
            Ok(event) => {
                let (row, duplicate) = self.receive(event, msg.payload.clone(), SOURCE).await?;
                if duplicate {
                    return Ok(());
                }
                (row.outcome, row.remarks)
            }
            Err(why) => {
                if !self.reject_unreadable(&msg.position, msg.payload.clone(), why).await? {
                    return Ok(());
                }
                (InboxOutcome::Rejected, Some(why.clone()))
            }
        };
        if matches!(outcome, InboxOutcome::Rejected | InboxOutcome::Dead) {
            if let Err(e) = sub.reject(msg, remarks.as_deref().unwrap_or("rejected")).await {
                tracing::warn!(system = %self.system(), message = %msg.position, error = %e, "could not dead-letter");
            }
        }
        Ok(())
    }
}

/// Reads the pipeline's subscription until shutdown (nothing when it has none).
pub(crate) async fn run(pipeline: Arc<Pipeline>, mut shutdown: watch::Receiver<bool>) {
    let system = pipeline.system().to_string();
    let mut failures = 0;
    let wait = |n| backoff(n, Duration::from_millis(200), Duration::from_secs(30));
    while !*shutdown.borrow() {
        let sub = match pipeline.external().subscribe().await {
            Ok(Some(sub)) => sub,
            Ok(None) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(system = %system, error = %e, "cannot subscribe; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait(failures)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = shutdown.changed() => break,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(system = %system, error = %e, "subscription read failed; will retry");
                    tokio::time::sleep(wait(failures)).await;
                    continue;
                }
            };
            // Not done until durable: a failing store holds this position (and the
            // partition) until it is back, so nothing after it is committed first.
            let recorded = loop {
                match pipeline.receive_message(sub.as_ref(), &msg).await {
                    Ok(()) => break true,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(system = %system, message = %msg.position, error = %e, "could not record; will retry");
                        tokio::select! {
                            _ = tokio::time::sleep(wait(failures)) => {}
                            _ = shutdown.changed() => {}
                        }
                        if *shutdown.borrow() {
                            break false;
                        }
                    }
                }
            };
            if recorded {
                failures = 0;
                if let Err(e) = sub.done(&msg) {
                    // A rebalance took the partition: its new reader re-reads, the inbox dedupes.
                    tracing::warn!(system = %system, error = %e, "could not store the offset");
                }
            }
            if !recorded || *shutdown.borrow() {
                break;
            }
        }
        // Closing commits the stored positions; it may block briefly.
        let _ = tokio::task::spawn_blocking(move || drop(sub)).await;
    }
}
