//! The two-way inward pipeline, written once for every system that sends changes
//! (webhooks, polling, topics). Connectors parse and map; this module decides.
//!
//! ```text
//! event → inbox (unique per system + event id, durable before the 2xx) → claim
//!   → resolve (link → hub id carried in the object → create)
//!   → echo   (fingerprint == the link's, or a push still in flight)
//!   → stale  (older than an applied event; per-field times on the system's clock;
//!             re-fetch when the order is uncertain)
//!   → merge  (3-way against the last-synced snapshot; same-field conflicts are rows,
//!             decided by the system's policy)
//!   → apply  (record + change(origin = system) + link + conflicts + inbox outcome,
//!             one transaction) → fan-out by the dispatcher
//! ```
//!
//! Invariants kept here: an event is applied once (inbox + lease) (2); our own write
//! coming back is an echo (3); nothing older overwrites newer (4); only fields the
//! system changed are applied (5); a poll cursor moves only past settled events (7).
//! An event that cannot apply yet is retried with backoff and ends `dead` after
//! `max_attempts` (never parked silently); one failing event never blocks the others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use syncflow_connectors::{Connector, Inward, InwardEvent, Mapped, RemoteError};
use syncflow_core::sync::{
    changed_fields, fingerprint, hub_patch, Fields, InboxOutcome, Link, LinkUpdate, MergePolicy, NewConflict,
    SyncSnapshot, DELETED,
};
use syncflow_core::{Entity, Record};
use syncflow_store::{now_ms, InboxEvent, InboxRef, InwardOp, InwardWrite, NewInboxEvent, Store, StoreError};

use crate::config::SystemConfig;
use crate::policy::backoff;

/// How long one applier owns an inbox row before another may take it over.
const APPLY_LEASE_MS: i64 = 60_000;
/// Attempts when a concurrent hub write moves the record under us.
const RACE_ATTEMPTS: usize = 5;
/// Stripes of the per-object apply turn.
const APPLY_STRIPES: usize = 64;
/// Unsettled inbox rows looked at per recovery round.
const RECOVERY_BATCH: usize = 100;

/// What a webhook request achieved (the 2xx body).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookReceipt {
    pub event_id: String,
    /// `received` means recorded and not applied yet (it will be retried).
    pub outcome: InboxOutcome,
    /// The event was already in the inbox (a retry, or seen by the poller first).
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

/// Events fetched and applied by one `poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub fetched: usize,
    pub applied: usize,
    /// Inbox rows that an earlier run left unsettled, settled now.
    pub recovered: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum InwardError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The external system could not be asked (network, 5xx, 429).
    #[error("{0}")]
    Remote(#[from] RemoteError),
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Refused by the connector (signature, payload, not configured): nothing stored.
    #[error(transparent)]
    Refused(#[from] syncflow_connectors::WebhookError),
    /// Recording failed; the sender should retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Why one apply did not settle.
enum ApplyError {
    /// The record moved under us (a concurrent write): try again at once.
    Race,
    /// Can never apply (invalid for the catalog): settle `rejected`.
    Invalid(String),
    /// May apply later (the system unreachable, a referenced record not linked yet,
    /// the database busy): retry with backoff, `dead` after the budget.
    Transient(String),
    /// The event is in the inbox already (recorded by another applier): nothing
    /// was written; `receive` takes the recorded row's path.
    Duplicate,
    /// The event had to be recorded before deciding (the mass-delete breaker holds
    /// recorded rows): decide again with this row.
    Recorded(Box<InboxEvent>),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionMismatch { .. } => ApplyError::Race,
            StoreError::Invalid(fields) => {
                let list: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
                ApplyError::Invalid(format!("not valid for the hub: {}", list.join("; ")))
            }
            StoreError::NotFound => ApplyError::Race,
            StoreError::DuplicateEvent => ApplyError::Duplicate,
            other => ApplyError::Transient(format!("database: {other}")),
        }
    }
}

impl From<RemoteError> for ApplyError {
    fn from(e: RemoteError) -> Self {
        ApplyError::Transient(e.0)
    }
}

/// The state an apply works from: the event's object, or a fresh copy when the
/// event's order against what we know is uncertain.
struct Seen {
    object: Value,
    deleted: bool,
    /// The system's time the state is known to be current at (its clock).
    at: i64,
    /// Re-fetched: current, so no field of it can be stale.
    fresh: bool,
}

/// One system's inward pipeline.
pub struct Pipeline {
    store: Store,
    config: SystemConfig,
    connector: Arc<dyn Connector>,
    /// Striped by external object id: applies of one object take turns in this
    /// process (other nodes are fenced by the inbox lease and version checks).
    turns: Vec<tokio::sync::Mutex<()>>,
    /// Deletions applied recently, for the mass-delete breaker.
    deletes: crate::breaker::DeleteWindow,
}

impl Pipeline {
    /// `None` when the connector has no inward side.
    pub fn new(store: Store, config: SystemConfig, connector: Arc<dyn Connector>) -> Option<Pipeline> {
        connector.inward()?;
        let turns = (0..APPLY_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Some(Pipeline { store, config, connector, turns, deletes: Default::default() })
    }

    pub fn system(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &SystemConfig {
        &self.config
    }

    fn inward(&self) -> &dyn Inward {
        self.connector.inward().expect("pipelines are built for inward kinds only")
    }

    /// Name of this system's poll cursor in the store's `cursors` table.
    pub fn poll_cursor_name(&self) -> String {
        format!("poll:{}", self.config.name)
    }

    /// How often `poll` runs: the connector's poll interval, else a recovery round
    /// a minute (inbox rows a crash or a transient failure left unsettled).
    pub fn interval(&self) -> Duration {
        self.inward().poll_interval().unwrap_or(Duration::from_secs(60))
    }

    async fn turn(&self, object_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let i = BuildHasherDefault::<DefaultHasher>::default().hash_one(object_id) as usize % APPLY_STRIPES;
        self.turns[i].lock().await
    }

    /// Verifies, records and applies one webhook delivery. Nothing is stored when
    /// the connector refuses it; once this returns `Ok` the event is durable.
    pub async fn webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookReceipt, WebhookError> {
        let event = self.inward().parse_webhook(headers, body, chrono::Utc::now().timestamp())?;
        let payload = String::from_utf8_lossy(body).into_owned();
        let (row, duplicate) = self.receive(&event, payload, "webhook").await?;
        Ok(WebhookReceipt { event_id: event.event_id, outcome: row.outcome, duplicate, remarks: row.remarks })
    }

    /// Records the event (durable from here on) and applies it unless it is
    /// settled already or another applier holds it. Returns the row as it ended and
    /// whether the event had been seen before.
    ///
    /// A new event is decided first and recorded by the write that settles it (one
    /// transaction for inbox row, record, change, link and outcome); only when that
    /// write finds the event recorded already does it take the recorded row's path.
    /// The returned row's `id` is 0 when the event was recorded that way.
    pub async fn receive(
        &self,
        event: &InwardEvent,
        payload: String,
        source: &str,
    ) -> Result<(InboxEvent, bool), StoreError> {
        let mut row = InboxEvent {
            id: 0,
            system: self.config.name.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            entity: event.entity.map(|e| e.name.to_string()),
            external_id: event.external_id.clone(),
            event_created: event.occurred_at,
            source: source.to_string(),
            payload,
            outcome: InboxOutcome::Received,
            record_id: None,
            remarks: None,
            received_at: now_ms(),
            settled_at: None,
            attempts: 0,
        };
        // Polls list overlapping windows, so most of what they see again is known:
        // a cheap read skips deciding it twice.
        let known = source != "webhook" && self.store.inbox_event(&row.system, &row.event_id).await?.is_some();
        let first = if known { Err(StoreError::DuplicateEvent) } else { self.settle(&row, event).await };
        let inserted = match first {
            Ok((outcome, remarks)) => {
                row.outcome = outcome;
                row.remarks = remarks;
                true
            }
            Err(StoreError::DuplicateEvent) => {
                let (recorded, inserted) = self.store.inbox_receive(&new_event(&row), APPLY_LEASE_MS).await?;
                row = recorded;
                if row.outcome == InboxOutcome::Received
                    && (inserted || self.store.inbox_claim(row.id, APPLY_LEASE_MS).await?)
                {
                    let (outcome, remarks) = self.settle(&row, event).await?;
                    row.outcome = outcome;
                    row.remarks = remarks;
                }
                inserted
            }
            Err(e) => return Err(e),
        };
        let counted = if inserted { row.outcome.as_str() } else { "duplicate" };
        self.store.metrics().inc(
            "syncflow_inbox_events_total",
            &[("system", &self.config.name), ("source", source), ("outcome", counted)],
            1.0,
        );
        Ok((row, !inserted))
    }

    /// Applies a claimed inbox row and records its outcome (or its retry).
    async fn settle(
        &self,
        row: &InboxEvent,
        event: &InwardEvent,
    ) -> Result<(InboxOutcome, Option<String>), StoreError> {
        let _turn = self.turn(event.external_id.as_deref().unwrap_or_default()).await;
        let mut row = std::borrow::Cow::Borrowed(row);
        let mut result = Err(ApplyError::Race);
        let mut races = 0;
        while races < RACE_ATTEMPTS {
            result = self.apply(&row, event).await;
            match result {
                Err(ApplyError::Race) => races += 1,
                Err(ApplyError::Recorded(recorded)) => {
                    row = std::borrow::Cow::Owned(*recorded);
                    result = Err(ApplyError::Race);
                }
                _ => break,
            }
        }
        let (outcome, remarks) = match result {
            Ok(settled) => settled,
            Err(ApplyError::Invalid(why)) => {
                self.record(&row, InboxOutcome::Rejected, None, &why, None).await?;
                (InboxOutcome::Rejected, Some(why))
            }
            Err(ApplyError::Race) => {
                self.retry_later(&row, "the hub record kept changing under concurrent writes".into()).await?
            }
            Err(ApplyError::Transient(why)) => self.retry_later(&row, why).await?,
            Err(ApplyError::Duplicate | ApplyError::Recorded(_)) => return Err(StoreError::DuplicateEvent),
        };
        self.log(event, outcome, remarks.as_deref());
        Ok((outcome, remarks))
    }

    fn log(&self, event: &InwardEvent, outcome: InboxOutcome, remarks: Option<&str>) {
        let (system, id, kind) = (&self.config.name, &event.event_id, &event.event_type);
        let object = event.external_id.as_deref().unwrap_or("-");
        let remarks = remarks.unwrap_or("");
        match outcome {
            InboxOutcome::Applied | InboxOutcome::Echo | InboxOutcome::Stale | InboxOutcome::Ignored => {
                tracing::info!(system = %system, event = %id, r#type = %kind, object, outcome = outcome.as_str(), remarks, "inward event")
            }
            _ => {
                tracing::warn!(system = %system, event = %id, r#type = %kind, object, outcome = outcome.as_str(), remarks, "inward event not applied")
            }
        }
    }

    /// A transient failure: the row waits for a retry with backoff, or ends `dead`
    /// once the system's `max_attempts` are spent.
    async fn retry_later(&self, row: &InboxEvent, why: String) -> Result<(InboxOutcome, Option<String>), StoreError> {
        let attempt = row.attempts + 1;
        if attempt >= self.config.max_attempts {
            let remarks = format!("{why} — gave up after {attempt} attempts");
            self.record(row, InboxOutcome::Dead, None, &remarks, None).await?;
            return Ok((InboxOutcome::Dead, Some(remarks)));
        }
        let wait = backoff(attempt, self.config.backoff_initial, self.config.backoff_max);
        let remarks = format!("{why} — attempt {attempt} of {}, retrying in {wait:.1?}", self.config.max_attempts);
        let at = now_ms() + wait.as_millis() as i64;
        if row.id == 0 {
            self.record(row, InboxOutcome::Received, None, &remarks, Some(at)).await?;
        } else {
            self.store.inbox_retry(row.id, at, &remarks).await?;
        }
        Ok((InboxOutcome::Received, Some(remarks)))
    }

    /// Settles a row without a catalog write; an event not recorded yet is recorded
    /// settled, in one statement (`DuplicateEvent` when it is there already).
    async fn record(
        &self,
        row: &InboxEvent,
        outcome: InboxOutcome,
        record_id: Option<&str>,
        remarks: &str,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        if row.id != 0 {
            return self.store.inbox_settle(row.id, outcome, record_id, Some(remarks)).await;
        }
        match self.store.inbox_record(&new_event(row), outcome, record_id, Some(remarks), retry_at).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::DuplicateEvent),
        }
    }

    async fn settle_as(
        &self,
        row: &InboxEvent,
        outcome: InboxOutcome,
        remarks: &str,
        record_id: Option<&str>,
    ) -> Result<(InboxOutcome, Option<String>), ApplyError> {
        self.record(row, outcome, record_id, remarks, None).await?;
        Ok((outcome, Some(remarks.to_string())))
    }

    /// Decides and applies one event.
    async fn apply(&self, row: &InboxEvent, event: &InwardEvent) -> Result<(InboxOutcome, Option<String>), ApplyError> {
        let Some(entity) = event.entity else {
            let why = format!("{} events are not applied", event.event_type);
            return self.settle_as(row, InboxOutcome::Ignored, &why, None).await;
        };
        let Some(external_id) = event.external_id.as_deref() else {
            return self.settle_as(row, InboxOutcome::Ignored, "event object has no id", None).await;
        };
        let inward = self.inward();
        let system = self.config.name.as_str();

        // Resolve: link → the hub id the object carries → (later) create.
        let (link, record, by_hub_id, last) = self.resolve(entity, external_id, &event.object, row.id).await?;
        let snap = SyncSnapshot::parse(link.as_ref().and_then(|l| l.snapshot.as_deref()));

        // Stale: older than an event already applied for this object.
        if let Some(last) = last.filter(|l| event.occurred_at < *l) {
            let why = format!("older than an event already applied for {external_id} ({} < {last})", event.occurred_at);
            return self.settle_as(row, InboxOutcome::Stale, &why, record.as_ref().map(|r| r.id.as_str())).await;
        }
        let event_mapped = inward.to_hub(entity, &event.object);
        if let Some(why) = self.echo(entity, &link, record.as_ref(), &event_mapped, event.deleted).await? {
            return self.settle_as(row, InboxOutcome::Echo, &why, record.as_ref().map(|r| r.id.as_str())).await;
        }
        // Order uncertain: the same second as an applied event, or the event touches
        // a field our push wrote (its time there is the system's, unknown to us).
        let touches_pushed = snap.external.as_ref().is_some_and(|s| {
            changed_fields(s, &event_mapped.fields, event_mapped.fields.keys())
                .iter()
                .any(|f| snap.pushed.contains(f) || snap.at.get(f) == Some(&event.occurred_at))
        });
        // A log partitioned by object (Kafka) delivers its events in order: never uncertain.
        let uncertain = !inward.ordered() && (last == Some(event.occurred_at) || (touches_pushed && !event.deleted));
        let seen = if uncertain {
            match inward.fetch(entity, external_id).await? {
                Some(object) => Seen { deleted: false, object, at: event.occurred_at, fresh: true },
                None => Seen { object: event.object.clone(), deleted: true, at: event.occurred_at, fresh: true },
            }
        } else {
            Seen { object: event.object.clone(), deleted: event.deleted, at: event.occurred_at, fresh: false }
        };
        let mut remarks: Vec<String> = Vec::new();
        let mapped = if seen.fresh {
            remarks.push(format!("order uncertain: applied the object as re-fetched from {system}"));
            let mapped = inward.to_hub(entity, &seen.object);
            if let Some(why) = self.echo(entity, &link, record.as_ref(), &mapped, seen.deleted).await? {
                let why = format!("{why} (re-fetched)");
                return self.settle_as(row, InboxOutcome::Echo, &why, record.as_ref().map(|r| r.id.as_str())).await;
            }
            mapped
        } else {
            event_mapped
        };
        let state = self.resolve_refs(&mapped).await?;

        let Some(record) = record else {
            if seen.deleted {
                let why = format!("deleted in {system}; not in the hub");
                return self.settle_as(row, InboxOutcome::Ignored, &why, None).await;
            }
            // New in the system: create it in the hub and link it.
            let (body, remark) = inward.create_body(entity, &state, external_id);
            remarks.extend(remark);
            let fields = entity.validate_create(&body).map_err(StoreError::Invalid)?;
            let snapshot = SyncSnapshot {
                external: Some(mapped.fields.clone()),
                hub: Some(inward.hub_view(entity, &fields)),
                at: SyncSnapshot::synced_at(&mapped.fields, seen.at),
                pushed: BTreeSet::new(),
            };
            let write = self.write(row, InboxOutcome::Applied, &remarks, external_id, &snapshot, &mapped, Vec::new());
            let created = self.store.apply_inward(entity, InwardOp::Create(&body), &write).await?;
            if !by_hub_id {
                // Best effort, off the event's path (a remote call must not hold the
                // webhook's answer): a later event then resolves by the id even
                // without the link.
                let (connector, system, external_id) =
                    (self.connector.clone(), system.to_string(), external_id.to_string());
                tokio::spawn(async move {
                    let Some(inward) = connector.inward() else { return };
                    if let Err(e) = inward.write_back_id(entity, &external_id, &created.id).await {
                        tracing::warn!(system, record = %created.id, error = %e, "could not write the hub id back");
                    }
                });
            }
            return Ok((InboxOutcome::Applied, join(&remarks)));
        };

        if record.deleted_at.is_some() {
            let (outcome, why) = if seen.deleted {
                (InboxOutcome::Echo, "already deleted in the hub".to_string())
            } else {
                (InboxOutcome::Ignored, format!("deleted in the hub; a {system} edit does not revive a tombstone"))
            };
            return self.settle_as(row, outcome, &why, Some(&record.id)).await;
        }
        let hub_now = inward.hub_view(entity, &record.fields);
        if seen.deleted {
            let breaker = &self.config.breaker;
            if breaker.enabled && row.id == 0 {
                // A held deletion is a row an operator releases later: record it first.
                let (recorded, inserted) = self.store.inbox_receive(&new_event(row), APPLY_LEASE_MS).await?;
                return Err(if inserted { ApplyError::Recorded(Box::new(recorded)) } else { ApplyError::Duplicate });
            }
            if let Some(why) =
                crate::breaker::check(&self.store, breaker, &self.deletes, row, entity.name, &record.id, external_id)
                    .await?
            {
                return Ok((InboxOutcome::Ignored, Some(format!("held by the mass-delete breaker: {why}"))));
            }
            let snapshot =
                SyncSnapshot { external: None, hub: Some(hub_now), at: snap.at.clone(), pushed: BTreeSet::new() };
            let write = self.write(row, InboxOutcome::Applied, &remarks, external_id, &snapshot, &mapped, Vec::new());
            let op = InwardOp::Delete { id: &record.id, expected_version: Some(record.version) };
            self.store.apply_inward(entity, op, &write).await?;
            return Ok((InboxOutcome::Applied, join(&remarks)));
        }

        // Merge: what the system changed since our last sync (never synced: all
        // that differs); the system's own records (`owned`) replace the hub's.
        let base =
            if mapped.owned { hub_now.clone() } else { snap.external.clone().unwrap_or_else(|| hub_now.clone()) };
        let hub_at_sync = snap.hub.clone().unwrap_or_else(|| hub_now.clone());
        let held = if self.any_manual() {
            self.store.open_conflict_fields(system, entity.name, &record.id).await?
        } else {
            Vec::new()
        };
        let mut apply = Vec::new();
        let mut stale = Vec::new();
        let mut conflicts = Vec::new();
        let mut resync = false;
        let mut external_after = snap.external.clone().unwrap_or_else(|| state.clone());
        let mut at = snap.at.clone();
        let mut pushed = snap.pushed.clone();
        for f in changed_fields(&base, &state, state.keys()) {
            let synced_after = snap.at.get(&f).is_some_and(|t| *t > seen.at) && !snap.pushed.contains(&f);
            if synced_after && !seen.fresh && !mapped.owned {
                stale.push(f);
                continue;
            }
            external_after.insert(f.clone(), state.get(&f).cloned().unwrap_or(Value::Null));
            at.insert(f.clone(), seen.at);
            pushed.remove(&f);
            let required = entity.fields.iter().any(|d| d.name == f && d.required);
            if required && state.get(&f).is_none_or(Value::is_null) {
                remarks.push(format!("{f} cleared in {system}; the hub requires it, kept the hub's"));
                resync = true;
                continue;
            }
            let hub_changed = hub_now.get(&f) != hub_at_sync.get(&f);
            if mapped.owned || !hub_changed || hub_now.get(&f) == state.get(&f) {
                if held.contains(&f) {
                    // A field held by an open manual conflict stays at the hub's value.
                    conflicts.push(self.conflict(&f, &hub_now, &state, MergePolicy::Manual, None));
                    continue;
                }
                apply.push(f);
                continue;
            }
            // Same-field conflict: both sides changed it since the last sync.
            let policy = self.config.policy_for(&f);
            let external_wins = match policy {
                MergePolicy::ExternalWins => Some(true),
                MergePolicy::HubWins => Some(false),
                MergePolicy::NewestWins => Some(hub_time(&record).is_none_or(|t| seen.at >= t)),
                MergePolicy::Manual => None,
            };
            let winner = external_wins.map(|w| if w { "external" } else { "hub" });
            conflicts.push(self.conflict(&f, &hub_now, &state, policy, winner));
            remarks.push(format!(
                "conflict on {f}: hub {} vs {system} {} ({}: {})",
                hub_now.get(&f).unwrap_or(&Value::Null),
                state.get(&f).unwrap_or(&Value::Null),
                policy.as_str(),
                winner.map_or("held at the hub's value until resolved".to_string(), |w| format!("{w} wins"))
            ));
            match external_wins {
                Some(true) => apply.push(f),
                Some(false) => resync = true,
                None => {}
            }
        }
        if !stale.is_empty() {
            remarks.push(format!("not applied, synced after this event: {}", stale.join(", ")));
            if apply.is_empty() && conflicts.is_empty() {
                return self.settle_as(row, InboxOutcome::Stale, &remarks.join("; "), Some(&record.id)).await;
            }
        }
        let patch = hub_patch(&hub_now, &state, &apply);
        let hub_after = entity.apply_patch(&record.fields, &patch).map_err(StoreError::Invalid)?;
        let no_change = hub_after == record.fields;
        let outcome = if no_change && link.is_none() && by_hub_id {
            remarks.insert(0, "our own write (found by the hub id it carries, before its link)".into());
            InboxOutcome::Echo
        } else {
            if no_change && conflicts.is_empty() {
                remarks.push("no field differs from the hub".into());
            }
            InboxOutcome::Applied
        };
        let snapshot =
            SyncSnapshot { external: Some(external_after), hub: Some(inward.hub_view(entity, &hub_after)), at, pushed };
        let mut write = self.write(row, outcome, &remarks, external_id, &snapshot, &mapped, conflicts);
        write.resync = resync;
        let op = InwardOp::Update { id: &record.id, patch: &patch, expected_version: Some(record.version) };
        self.store.apply_inward(entity, op, &write).await?;
        Ok((outcome, join(&remarks)))
    }

    fn any_manual(&self) -> bool {
        self.config.conflict_policy == MergePolicy::Manual
            || self.config.field_policies.values().any(|p| *p == MergePolicy::Manual)
    }

    fn conflict(
        &self,
        f: &str,
        hub: &Fields,
        external: &Fields,
        policy: MergePolicy,
        winner: Option<&'static str>,
    ) -> NewConflict {
        NewConflict {
            field: f.to_string(),
            hub_value: hub.get(f).cloned().unwrap_or(Value::Null),
            external_value: external.get(f).cloned().unwrap_or(Value::Null),
            policy,
            winner,
        }
    }

    /// `Some(reason)` when the object's state is what we last synced with the
    /// system, or what a push of ours still in flight (or unrecorded) sends — so the
    /// echo of a push that lands before the push's outcome is recorded is an echo too.
    async fn echo(
        &self,
        entity: &'static Entity,
        link: &Option<Link>,
        record: Option<&Record>,
        mapped: &Mapped,
        deleted: bool,
    ) -> Result<Option<String>, ApplyError> {
        let fp = if deleted { DELETED.to_string() } else { fingerprint(&raw_state(mapped)) };
        if link.as_ref().and_then(|l| l.fingerprint.as_deref()) == Some(fp.as_str()) {
            return Ok(Some(format!("state equals what was last synced with {}", self.config.name)));
        }
        let Some(record) = record else { return Ok(None) };
        if mapped.owned {
            return Ok(None); // the hub never pushes records the system owns
        }
        if link.as_ref().and_then(|l| l.synced_version).is_some_and(|v| v >= record.version) {
            // Every version of the record is synced with the system: nothing of ours
            // is on its way there but, at most, a re-push of this same state.
            return Ok(None);
        }
        for change in self.store.unfinished_changes(&self.config.name, entity.name, &record.id).await? {
            let pushing = match change.op {
                syncflow_core::Op::Delete => DELETED.to_string(),
                syncflow_core::Op::Upsert => {
                    fingerprint(&self.inward().hub_view(entity, change.snapshot.as_object().unwrap_or(&Map::new())))
                }
            };
            if pushing == fp {
                return Ok(Some(format!("state equals change {} being pushed to {}", change.seq, self.config.name)));
            }
        }
        Ok(None)
    }

    /// The hub record for an external object: by link, else by the hub id the object
    /// carries (the webhook of our own create can beat the link's commit); and the
    /// newest event time applied for the object (rows other than `except`). A failed
    /// read is an error (retried), never "no link". An object neither linked nor
    /// naming a hub record has no applied events to be stale against.
    async fn resolve(
        &self,
        entity: &'static Entity,
        external_id: &str,
        object: &Value,
        except: i64,
    ) -> Result<(Option<Link>, Option<Record>, bool, Option<i64>), ApplyError> {
        let system = &self.config.name;
        if let Some((link, record, last)) = self.store.linked_record(entity, system, external_id, except).await? {
            return Ok((Some(link), record, false, last));
        }
        if let Some(hub_id) = self.inward().hub_id(object) {
            if let Some(record) = self.store.get(entity, &hub_id).await? {
                // Only if that record is not linked to another object of the system.
                let other = self.store.link(entity.name, &hub_id, system).await?;
                if other.is_none_or(|l| l.external_id == external_id) {
                    let last = self.store.inbox_last_applied(system, external_id, except).await?;
                    return Ok((None, Some(record), true, last));
                }
            }
        }
        Ok((None, None, false, None))
    }

    /// Mapped fields with references resolved to hub ids through their links; a
    /// reference not linked yet is transient (it may arrive, or be backfilled).
    async fn resolve_refs(&self, mapped: &Mapped) -> Result<Fields, ApplyError> {
        let mut fields = mapped.fields.clone();
        for r in &mapped.refs {
            match self.store.link_by_external_id(&self.config.name, r.entity.name, &r.external_id).await? {
                Some(link) => {
                    fields.insert(r.field.clone(), Value::String(link.record_id));
                }
                None => {
                    return Err(ApplyError::Transient(format!(
                        "{} {} is not linked to a hub {} yet (it may still arrive; or run backfill)",
                        r.entity.name, r.external_id, r.entity.name
                    )))
                }
            }
        }
        Ok(fields)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        row: &InboxEvent,
        outcome: InboxOutcome,
        remarks: &[String],
        external_id: &str,
        snapshot: &SyncSnapshot,
        mapped: &Mapped,
        conflicts: Vec<NewConflict>,
    ) -> InwardWrite {
        // Owned records fingerprint their raw state (references as external ids).
        let fingerprint = match (&snapshot.external, mapped.owned) {
            (Some(_), true) => fingerprint(&raw_state(mapped)),
            _ => snapshot.fingerprint(),
        };
        InwardWrite {
            system: self.config.name.clone(),
            inbox: Some((inbox_ref(row), outcome, join(remarks))),
            link: Some(LinkUpdate {
                external_id: external_id.to_string(),
                synced_version: 0, // the written version
                fingerprint: Some(fingerprint),
                snapshot: Some(snapshot.to_text()),
            }),
            conflicts,
            resync: false,
        }
    }

    /// Settles inbox rows that a crash or a transient failure left `received`, whose
    /// retry time has come. A row that fails again waits for its next retry; it
    /// never stops the others.
    async fn recover(&self) -> Result<usize, StoreError> {
        let mut recovered = 0;
        for row in self.store.inbox_unsettled(&self.config.name, RECOVERY_BATCH).await? {
            if !self.store.inbox_claim(row.id, APPLY_LEASE_MS).await? {
                continue;
            }
            let parsed = if row.source == "reconcile" {
                crate::reconcile::stored_event(&row) // the object, not a connector event
            } else {
                self.inward().parse_stored(&row.payload)
            };
            match parsed {
                Ok(event) => match self.settle(&row, &event).await {
                    Ok((outcome, _)) if outcome != InboxOutcome::Received => recovered += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(system = %self.config.name, event = %row.event_id, error = %e, "recovery failed")
                    }
                },
                Err(why) => {
                    let why = format!("stored event is unreadable: {why}");
                    self.store.inbox_settle(row.id, InboxOutcome::Rejected, None, Some(&why)).await?;
                    recovered += 1;
                }
            }
        }
        Ok(recovered)
    }

    /// One round: recovery, then (when `with_events`, or polling is configured)
    /// events past the stored cursor, applied oldest first. The cursor moves only
    /// past events that are settled: it stops before the first one that is not
    /// (waiting for a retry), so that one is listed again.
    pub async fn poll(&self, with_events: bool) -> Result<PollReport, InwardError> {
        let mut report = PollReport { recovered: self.recover().await?, ..PollReport::default() };
        if !with_events && self.inward().poll_interval().is_none() {
            return Ok(report);
        }
        let name = self.poll_cursor_name();
        let Some(position) = self.store.cursor(&name).await? else {
            // First poll: start from now; existing history is backfill's job.
            self.store.set_cursor(&name, &self.inward().start_position()).await?;
            return Ok(report);
        };
        let events = self.inward().events_since(&position).await?;
        report.fetched = events.len();
        let mut settled_to = position.clone();
        let mut blocked = false;
        for polled in events {
            let (row, duplicate) = match self.receive(&polled.event, polled.raw, "poll").await {
                Ok(r) => r,
                Err(e) => {
                    self.save_cursor(&name, &position, &settled_to).await?;
                    return Err(e.into());
                }
            };
            if row.outcome == InboxOutcome::Received {
                blocked = true;
            } else if !duplicate && row.outcome == InboxOutcome::Applied {
                report.applied += 1;
            }
            if !blocked {
                settled_to = polled.position;
            }
        }
        self.save_cursor(&name, &position, &settled_to).await?;
        Ok(report)
    }

    async fn save_cursor(&self, name: &str, was: &str, now: &str) -> Result<(), StoreError> {
        if was != now {
            self.store.set_cursor(name, now).await?;
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    pub(crate) fn external(&self) -> &dyn Inward {
        self.inward()
    }
}

/// The event of a row, for recording it (`row.id` 0: not recorded yet).
fn new_event(row: &InboxEvent) -> NewInboxEvent {
    NewInboxEvent {
        system: row.system.clone(),
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        entity: row.entity.clone(),
        external_id: row.external_id.clone(),
        event_created: row.event_created,
        source: row.source.clone(),
        payload: row.payload.clone(),
    }
}

/// The inbox row an apply settles: the recorded one, or the event, recorded by the apply.
fn inbox_ref(row: &InboxEvent) -> InboxRef {
    if row.id == 0 {
        InboxRef::New(Box::new(new_event(row)))
    } else {
        InboxRef::Id(row.id)
    }
}

/// The state as the system holds it, with references as its own ids: what owned
/// records' fingerprints cover.
fn raw_state(mapped: &Mapped) -> Fields {
    let mut f = mapped.fields.clone();
    for r in &mapped.refs {
        f.insert(r.field.clone(), Value::String(format!("{}:{}", r.entity.name, r.external_id)));
    }
    f
}

/// The hub record's last update, in seconds (for `newest_wins`).
fn hub_time(record: &Record) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&record.updated_at).ok().map(|t| t.timestamp())
}

fn join(remarks: &[String]) -> Option<String> {
    (!remarks.is_empty()).then(|| remarks.join("; "))
}
