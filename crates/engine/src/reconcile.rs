//! Reconciliation: `syncflow reconcile --system NAME [--repair]` and the scheduled
//! sweep (`reconcile_interval`). A read-only cousin of backfill: it walks the
//! system's objects (`Inward::list_objects`) and the hub's links to it, compares
//! each object's hub-shaped state with the hub record, and classifies what differs:
//!
//! * `missing_remote` — linked, but gone from the system;
//! * `missing_local`  — in the system, but not linked (or its hub record deleted);
//! * `field_drift`    — both exist and synced fields differ (the fields are named);
//! * `orphan_link`    — a link to a hub record that does not exist;
//! * `duplicate`      — a second object carrying the hub id of an already linked record.
//!
//! Records in flight are skipped, never reported: an unfinished delivery to the
//! system, or a link or record written within the grace window (`reconcile_grace`).
//! Every run is a `reconcile_runs` row.
//!
//! Repair (`--repair`, `auto_repair = true`) goes through the ordinary paths only:
//! * field drift where only the system moved since the last sync: its state is
//!   received as an inward event (source `reconcile`: echo, merge and conflict
//!   rules apply); otherwise the hub's state is re-pushed (a `resync:<system>` change);
//! * missing_local: imported like backfill (linked by the hub id it carries, else
//!   by e-mail, else created); a hub tombstone is re-pushed as a delete;
//! * missing_remote: when the hub record is unchanged since the last sync the system's
//!   deletion is what happened, so the hub record is tombstoned (unless more are
//!   missing than the mass-delete breaker allows: then nothing is deleted and the run
//!   says so); when the hub changed since, the link is dropped and the record
//!   re-pushed (a create);
//! * orphan_link: the link is dropped (and the object imported when it exists);
//! * duplicate: reported only — which twin to keep is an operator's decision.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use syncflow_connectors::pacer::Lane;
use syncflow_connectors::{InwardEvent, RemoteError};
use syncflow_core::sync::{changed_fields, fingerprint, LinkUpdate, SyncSnapshot, DELETED};
use syncflow_core::{Entity, Record};
use syncflow_store::{now_ms, InwardOp, InwardWrite, Link, RunEnd, StoreError};
use tokio::sync::watch;

use crate::backfill::object_id;
use crate::inward::Pipeline;

/// Links read per page of the hub-side walk.
const LINK_PAGE: usize = 500;
/// Samples kept per run.
const MAX_SAMPLES: usize = 50;

/// A system's reconcile settings (`[[systems]]` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSettings {
    /// `reconcile_interval`: how often the sweep runs; `None` (default): never.
    pub interval: Option<Duration>,
    /// `auto_repair`: the sweep repairs what it finds (default false: report only).
    pub auto_repair: bool,
    /// `reconcile_grace`: links and records written this recently are in flight.
    pub grace: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self { interval: None, auto_repair: false, grace: Duration::from_secs(30) }
    }
}

/// Takes a duration key out of a `[[systems]]` table.
pub(crate) fn take_duration(t: &mut toml::Table, key: &str) -> Result<Option<Duration>, String> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => {
            syncflow_connectors::parse_duration(&s).map(Some).map_err(|e| format!("`{key}`: {e}"))
        }
        Some(_) => Err(format!("`{key}` must be a duration like \"10m\"")),
    }
}

impl ReconcileSettings {
    pub(crate) fn take(t: &mut toml::Table) -> Result<ReconcileSettings, String> {
        let mut s = ReconcileSettings {
            interval: take_duration(t, "reconcile_interval")?.filter(|d| !d.is_zero()),
            ..ReconcileSettings::default()
        };
        if let Some(g) = take_duration(t, "reconcile_grace")? {
            s.grace = g;
        }
        match t.remove("auto_repair") {
            None => {}
            Some(toml::Value::Boolean(b)) => s.auto_repair = b,
            Some(_) => return Err("`auto_repair` must be true or false".into()),
        }
        Ok(s)
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// External objects and unmatched links looked at.
    pub checked: u64,
    /// Skipped: a delivery under way, or written within the grace window.
    pub in_flight: u64,
    pub missing_remote: u64,
    pub missing_local: u64,
    pub field_drift: u64,
    pub orphan_link: u64,
    pub duplicate: u64,
    /// Repairs started (ordinary deliveries and inward applies).
    pub repaired: u64,
    pub repair_failed: u64,
}

impl Counts {
    /// Everything found drifting.
    pub fn drift(&self) -> u64 {
        self.missing_remote + self.missing_local + self.field_drift + self.orphan_link + self.duplicate
    }
}

/// What a run found (and did).
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub run_id: i64,
    pub counts: Counts,
    pub samples: Vec<Value>,
    pub api_calls: i64,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions {
    pub repair: bool,
    /// `cli`, `schedule` or `api`.
    pub trigger: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Remote(#[from] RemoteError),
}

/// One run's working state.
struct Run<'a> {
    entity: &'static Entity,
    repair: bool,
    now_ms: i64,
    grace_ms: i64,
    counts: Counts,
    samples: Vec<Value>,
    api_calls: i64,
    progress: &'a mut (dyn FnMut(&Counts) + Send + Sync),
}

impl Run<'_> {
    fn sample(&mut self, class: &str, external_id: Option<&str>, record_id: Option<&str>, extra: Value) {
        if self.samples.len() >= MAX_SAMPLES {
            return;
        }
        let mut s = json!({"class": class, "external_id": external_id, "record_id": record_id});
        if let (Some(o), Value::Object(more)) = (s.as_object_mut(), extra) {
            o.extend(more);
        }
        self.samples.push(s);
    }

    fn repaired(&mut self, result: Result<&str, String>) -> Value {
        match result {
            Ok(how) => {
                self.counts.repaired += 1;
                json!(how)
            }
            Err(e) => {
                self.counts.repair_failed += 1;
                json!(format!("repair failed: {e}"))
            }
        }
    }

    /// Written within the grace window (ms since the epoch, or RFC 3339).
    fn recent_ms(&self, at_ms: i64) -> bool {
        at_ms > self.now_ms - self.grace_ms
    }

    fn recent_record(&self, r: &Record) -> bool {
        chrono::DateTime::parse_from_rfc3339(&r.updated_at).is_ok_and(|t| self.recent_ms(t.timestamp_millis()))
    }
}

impl Pipeline {
    /// Reconciles one entity of this system. The run is recorded as a row from
    /// start to end; `progress` is called after every object.
    pub async fn reconcile(
        &self,
        entity: &'static Entity,
        opts: ReconcileOptions,
        progress: &mut (dyn FnMut(&Counts) + Send + Sync),
    ) -> Result<ReconcileReport, ReconcileError> {
        let started = Instant::now();
        let store = self.store();
        let run_id = store.reconcile_start(self.system(), entity.name, opts.trigger, opts.repair).await?;
        let mut run = Run {
            entity,
            repair: opts.repair,
            now_ms: now_ms(),
            grace_ms: self.config().reconcile.grace.as_millis() as i64,
            counts: Counts::default(),
            samples: Vec::new(),
            api_calls: 0,
            progress,
        };
        let result = self.reconcile_walk(&mut run).await;
        let duration_ms = started.elapsed().as_millis() as i64;
        let end = RunEnd {
            status: if result.is_ok() { "completed" } else { "failed" },
            counts: serde_json::to_value(&run.counts).unwrap_or_default(),
            samples: Value::Array(run.samples.clone()),
            api_calls: Some(run.api_calls),
            error: result.as_ref().err().map(|e| e.to_string()),
            duration_ms,
        };
        store.reconcile_finish(run_id, &end).await?;
        let metrics = store.metrics();
        for (class, n) in [
            ("missing_remote", run.counts.missing_remote),
            ("missing_local", run.counts.missing_local),
            ("field_drift", run.counts.field_drift),
            ("orphan_link", run.counts.orphan_link),
            ("duplicate", run.counts.duplicate),
        ] {
            metrics.set("syncflow_reconcile_drift", &[("system", self.system()), ("class", class)], n as f64);
        }
        result?;
        tracing::info!(system = %self.system(), entity = entity.name, run = run_id, counts = ?run.counts, "reconciled");
        Ok(ReconcileReport { run_id, counts: run.counts, samples: run.samples, api_calls: run.api_calls, duration_ms })
    }

    async fn reconcile_walk(&self, run: &mut Run<'_>) -> Result<(), ReconcileError> {
        let inward = self.external();
        let mut seen: HashSet<String> = HashSet::new();
        // 1. The system's objects, page by page.
        let mut after: Option<String> = None;
        loop {
            run.api_calls += 1;
            // Bulk work: live pushes to the same system take their turns first.
            let page = Lane::Bulk.run(inward.list_objects(run.entity, after.as_deref())).await?;
            for obj in &page.objects {
                let Some(id) = object_id(obj) else { continue };
                seen.insert(id.to_string());
                run.counts.checked += 1;
                self.check_object(run, id, obj).await?;
                (run.progress)(&run.counts);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        // 2. The hub's links whose object the listing did not show.
        let mut missing = Vec::new();
        let mut after_record = String::new();
        loop {
            let links = self.store().links_page(self.system(), run.entity.name, &after_record, LINK_PAGE).await?;
            let Some(last) = links.last() else { break };
            after_record = last.record_id.clone();
            for link in links.into_iter().filter(|l| !seen.contains(&l.external_id)) {
                run.counts.checked += 1;
                if let Some(m) = self.check_link(run, link).await? {
                    missing.push(m);
                }
                (run.progress)(&run.counts);
            }
        }
        self.settle_missing_remote(run, missing).await
    }

    /// True when the record has a delivery to this system under way (or written
    /// within the grace window): its state is moving, not drifting.
    async fn in_flight(&self, run: &Run<'_>, record_id: &str, link: Option<&Link>) -> Result<bool, StoreError> {
        if link.is_some_and(|l| run.recent_ms(l.updated_at)) {
            return Ok(true);
        }
        Ok(!self.store().unfinished_changes(self.system(), run.entity.name, record_id).await?.is_empty())
    }

    async fn check_object(&self, run: &mut Run<'_>, external_id: &str, obj: &Value) -> Result<(), ReconcileError> {
        let store = self.store();
        let inward = self.external();
        let system = self.system();
        let entity = run.entity;
        let Some(link) = store.link_by_external_id(system, entity.name, external_id).await? else {
            let carried = inward.hub_id(obj);
            if let Some(hub_id) = &carried {
                if self.in_flight(run, hub_id, None).await? {
                    run.counts.in_flight += 1; // our create, its link not recorded yet
                    return Ok(());
                }
                if let Some(other) = store.link(entity.name, hub_id, system).await? {
                    if other.external_id != external_id {
                        run.counts.duplicate += 1;
                        let extra =
                            json!({"linked_external_id": other.external_id, "repair": "none: choose the twin to keep"});
                        run.sample("duplicate", Some(external_id), Some(hub_id), extra);
                        return Ok(());
                    }
                }
                if let Some(r) = store.get(entity, hub_id).await? {
                    if run.recent_record(&r) {
                        run.counts.in_flight += 1;
                        return Ok(());
                    }
                }
            }
            run.counts.missing_local += 1;
            let repair = if run.repair {
                let r = self.import_one(entity, obj).await.map(|_| "imported").map_err(|e| e.to_string());
                run.repaired(r)
            } else {
                Value::Null
            };
            run.sample("missing_local", Some(external_id), carried.as_deref(), json!({"repair": repair}));
            return Ok(());
        };
        let Some(record) = store.get(entity, &link.record_id).await? else {
            run.counts.orphan_link += 1;
            let repair = if run.repair {
                let r = async {
                    store.unlink(system, entity.name, &link.record_id).await.map_err(|e| e.to_string())?;
                    self.import_one(entity, obj).await.map_err(|e| e.to_string())?;
                    Ok("unlinked and imported")
                };
                let r = r.await;
                run.repaired(r)
            } else {
                Value::Null
            };
            run.sample("orphan_link", Some(external_id), Some(&link.record_id), json!({"repair": repair}));
            return Ok(());
        };
        if self.in_flight(run, &record.id, Some(&link)).await? || run.recent_record(&record) {
            run.counts.in_flight += 1;
            return Ok(());
        }
        if record.deleted_at.is_some() {
            // A deletion the mass-delete breaker holds is the operator's to decide
            // (in flight); one they discarded stays undone (reported, never repaired).
            match store.outward_hold_of(system, entity.name, &record.id).await? {
                Some(h) if h.status == "held" => {
                    run.counts.in_flight += 1;
                    return Ok(());
                }
                Some(h) if h.status == "discarded" => {
                    run.counts.missing_local += 1;
                    let detail = format!("deleted in the hub; an operator discarded the deletion (hold {})", h.id);
                    run.sample("missing_local", Some(external_id), Some(&record.id), json!({"detail": detail}));
                    return Ok(());
                }
                _ => {}
            }
            // Deleted in the hub, still there: the delete never reached the system.
            run.counts.missing_local += 1;
            let repair = if run.repair {
                let r = store.resync(entity, &record.id, system).await.map(|_| "delete re-pushed");
                run.repaired(r.map_err(|e| e.to_string()))
            } else {
                Value::Null
            };
            let extra = json!({"detail": "deleted in the hub", "repair": repair});
            run.sample("missing_local", Some(external_id), Some(&record.id), extra);
            return Ok(());
        }
        let mapped = inward.to_hub(entity, obj);
        let refs: BTreeSet<&str> = mapped.refs.iter().map(|r| r.field.as_str()).collect();
        let hub = inward.hub_view(entity, &record.fields);
        let names: BTreeSet<String> =
            hub.keys().chain(mapped.fields.keys()).filter(|n| !refs.contains(n.as_str())).cloned().collect();
        let fields = changed_fields(&hub, &mapped.fields, &names);
        if fields.is_empty() {
            return Ok(());
        }
        run.counts.field_drift += 1;
        let snap = SyncSnapshot::parse(link.snapshot.as_deref());
        let system_moved = link.fingerprint.as_deref() != Some(fingerprint(&mapped.fields).as_str());
        let hub_moved = snap.hub.as_ref().is_none_or(|h| !changed_fields(h, &hub, &names).is_empty());
        let side = match (system_moved, hub_moved) {
            (true, false) => "system",
            (false, true) => "hub",
            _ => "both",
        };
        let repair = if run.repair {
            let r = if side == "system" || mapped.owned {
                self.receive_drift(entity, external_id, obj).await.map(|_| "applied the system's state inward")
            } else {
                store
                    .resync(entity, &record.id, system)
                    .await
                    .map(|_| "re-pushed the hub's state")
                    .map_err(|e| e.to_string())
            };
            run.repaired(r)
        } else {
            Value::Null
        };
        let extra = json!({"fields": fields, "changed_on": side, "repair": repair});
        run.sample("field_drift", Some(external_id), Some(&record.id), extra);
        Ok(())
    }

    /// The system's state, received like an event (source `reconcile`).
    async fn receive_drift(&self, entity: &'static Entity, external_id: &str, obj: &Value) -> Result<(), String> {
        let fp = fingerprint(&self.external().to_hub(entity, obj).fields);
        let event = InwardEvent {
            event_id: format!("reconcile:{external_id}:{}", &fp[..12]),
            event_type: format!("{}.reconciled", entity.name),
            entity: Some(entity),
            external_id: Some(external_id.to_string()),
            occurred_at: chrono::Utc::now().timestamp(),
            deleted: false,
            object: obj.clone(),
        };
        let (row, _) = self.receive(&event, obj.to_string(), "reconcile").await.map_err(|e| e.to_string())?;
        match row.outcome {
            syncflow_store::InboxOutcome::Applied | syncflow_store::InboxOutcome::Echo => Ok(()),
            other => Err(format!("{}: {}", other.as_str(), row.remarks.unwrap_or_default())),
        }
    }
}

/// An inbox row written by a reconcile repair (its payload is the object itself),
/// as the event it was: for recovery and replay.
pub(crate) fn stored_event(row: &syncflow_store::InboxEvent) -> Result<InwardEvent, String> {
    let entity = row.entity.as_deref().and_then(Entity::by_name).ok_or("reconcile event without an entity")?;
    Ok(InwardEvent {
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        entity: Some(entity),
        external_id: row.external_id.clone(),
        occurred_at: row.event_created,
        deleted: false,
        object: serde_json::from_str(&row.payload).map_err(|e| e.to_string())?,
    })
}

impl Pipeline {
    /// A link whose object the listing did not show: orphan, in flight, or (once a
    /// fetch confirms it is gone) missing_remote, returned for `settle_missing_remote`.
    async fn check_link(&self, run: &mut Run<'_>, link: Link) -> Result<Option<(Link, Record)>, ReconcileError> {
        let store = self.store();
        let Some(record) = store.get(run.entity, &link.record_id).await? else {
            run.counts.orphan_link += 1;
            let repair = if run.repair {
                let r = store.unlink(self.system(), run.entity.name, &link.record_id).await;
                run.repaired(r.map(|_| "unlinked").map_err(|e| e.to_string()))
            } else {
                Value::Null
            };
            run.sample("orphan_link", Some(&link.external_id), Some(&link.record_id), json!({"repair": repair}));
            return Ok(None);
        };
        if record.deleted_at.is_some() {
            return Ok(None); // gone on both sides
        }
        if self.in_flight(run, &record.id, Some(&link)).await? || run.recent_record(&record) {
            run.counts.in_flight += 1;
            return Ok(None);
        }
        // The listing may have raced a create: ask for the object itself.
        run.api_calls += 1;
        if self.external().fetch(run.entity, &link.external_id).await?.is_some() {
            return Ok(None);
        }
        run.counts.missing_remote += 1;
        Ok(Some((link, record)))
    }

    /// Repairs the missing_remote records: tombstones what the system deleted (hub
    /// unchanged since the sync), re-pushes what the hub changed since. More
    /// deletions than the mass-delete breaker allows are reported, not applied.
    async fn settle_missing_remote(
        &self,
        run: &mut Run<'_>,
        missing: Vec<(Link, Record)>,
    ) -> Result<(), ReconcileError> {
        let linked = self.store().link_count(self.system(), run.entity.name).await?.max(1) as f64;
        let breaker = &self.config().breaker;
        let too_many =
            breaker.enabled && missing.len() as u64 > breaker.count && missing.len() as f64 / linked > breaker.share;
        for (link, record) in missing {
            let inward = self.external();
            let snap = SyncSnapshot::parse(link.snapshot.as_deref());
            let hub = inward.hub_view(run.entity, &record.fields);
            let hub_moved = snap.hub.as_ref().is_none_or(|h| h != &hub);
            let rule = if hub_moved { "re-push" } else { "tombstone" };
            let repair = if !run.repair {
                Value::Null
            } else if too_many && rule == "tombstone" {
                json!("not deleted: more missing than the mass-delete breaker allows; check the system")
            } else if hub_moved {
                let r = async {
                    self.store().unlink(self.system(), run.entity.name, &record.id).await?;
                    self.store().resync(run.entity, &record.id, self.system()).await
                };
                let r = r.await.map(|_| "unlinked and re-pushed (a create)").map_err(|e| e.to_string());
                run.repaired(r)
            } else {
                let snapshot =
                    SyncSnapshot { external: None, hub: Some(hub), at: snap.at.clone(), pushed: Default::default() };
                let write = InwardWrite::link_only(
                    self.system(),
                    LinkUpdate {
                        external_id: link.external_id.clone(),
                        synced_version: 0,
                        fingerprint: Some(DELETED.to_string()),
                        snapshot: Some(snapshot.to_text()),
                    },
                );
                let op = InwardOp::Delete { id: &record.id, expected_version: Some(record.version) };
                let r = self.store().apply_inward(run.entity, op, &write).await;
                run.repaired(r.map(|_| "tombstoned in the hub").map_err(|e| e.to_string()))
            };
            let extra = json!({"rule": rule, "repair": repair});
            run.sample("missing_remote", Some(&link.external_id), Some(&record.id), extra);
        }
        Ok(())
    }
}

/// The scheduled sweep of one system: every `reconcile_interval`, each of its
/// entities, repairing when `auto_repair` is set. A run another node started
/// within the interval counts, so nodes do not sweep twice.
pub(crate) async fn sweep(
    pipeline: Arc<Pipeline>,
    entities: Vec<&'static Entity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = pipeline.config().reconcile.clone();
    let Some(every) = settings.interval else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let recent = match pipeline.store().reconcile_runs(Some(pipeline.system()), None, 1).await {
            Ok(runs) => runs.first().is_some_and(|r| r.started_at > now_ms() - every.as_millis() as i64 * 9 / 10),
            Err(e) => {
                tracing::warn!(system = %pipeline.system(), error = %e, "cannot read reconcile runs");
                continue;
            }
        };
        if recent {
            continue;
        }
        for entity in &entities {
            let opts = ReconcileOptions { repair: settings.auto_repair, trigger: "schedule" };
            if let Err(e) = pipeline.reconcile(entity, opts, &mut |_| {}).await {
                tracing::warn!(system = %pipeline.system(), entity = entity.name, error = %e, "reconcile failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncflow_store::{InboxEvent, InboxOutcome};

    #[test]
    fn a_stored_reconcile_event_reads_back_for_recovery() {
        let row = InboxEvent {
            id: 1,
            system: "stripe".into(),
            event_id: "reconcile:cus_1:abc".into(),
            event_type: "customer.reconciled".into(),
            entity: Some("customer".into()),
            external_id: Some("cus_1".into()),
            event_created: 42,
            source: "reconcile".into(),
            payload: r#"{"id":"cus_1","name":"Ada"}"#.into(),
            outcome: InboxOutcome::Received,
            record_id: None,
            remarks: None,
            received_at: 0,
            settled_at: None,
            attempts: 1,
        };
        let e = stored_event(&row).unwrap();
        assert_eq!((e.entity.map(|e| e.name), e.occurred_at, e.deleted), (Some("customer"), 42, false));
        assert_eq!(e.object["name"], "Ada");
        assert!(stored_event(&InboxEvent { payload: "not json".into(), ..row }).is_err());
    }
}
