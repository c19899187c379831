//! `syncflow backfill --system NAME`: brings two catalogs that already have data
//! into agreement before live sync takes over, for any two-way system.
//!
//! * Import (system → hub): every object is linked to the hub record named by the
//!   hub id it carries, else to an unlinked live hub record with the same e-mail,
//!   else imported.
//! * Export (hub → system): every unlinked live hub record is enqueued as a
//!   `backfill:<system>` change, which the dispatcher routes to that system only, in
//!   the bulk lane: the engine's workers push it (a create) after live changes and
//!   retries, within the system's rate limit, retry it like any delivery, and the
//!   delivery's outcome writes the link. A record with a delivery to the system
//!   still unfinished is left to that delivery, so a backfill never races live sync
//!   into a second create.
//!
//! Paged and resumable: each direction keeps its position in a named cursor,
//! advanced only up to the record before the first one that failed (invariant 7),
//! so a rerun retries it. Import is paced by the connector's rate limit; export
//! only writes to the hub's store (one transaction per page).

use serde_json::{Map, Value};
use syncflow_connectors::pacer::Lane;
use syncflow_core::sync::{LinkUpdate, SyncSnapshot};
use syncflow_core::{Entity, Record};
use syncflow_store::{InwardOp, InwardWrite, ListQuery, StoreError};

use crate::inward::Pipeline;

const PAGE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The system's objects into the hub.
    Import,
    /// Hub records into the system.
    Export,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Import => "import",
            Direction::Export => "export",
        }
    }
}

/// Counts so far, reported after every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub seen: u64,
    /// Already linked: nothing to do.
    pub linked_before: u64,
    /// Linked to an existing record on the other side.
    pub linked: u64,
    /// Created on the other side (import).
    pub created: u64,
    /// Enqueued for delivery in the bulk lane (export).
    pub enqueued: u64,
    /// Left to a live delivery still under way.
    pub in_flight: u64,
    pub failed: u64,
    /// Total to expect, when known (hub side).
    pub total: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Remote(String),
}

pub(crate) enum Done {
    Created,
    Linked,
    LinkedBefore,
    InFlight,
}

impl Pipeline {
    fn backfill_cursor(&self, entity: &Entity, direction: Direction) -> String {
        format!("backfill:{}:{}:{}", self.system(), entity.name, direction.name())
    }

    /// Forgets a direction's position, so the next run starts from the beginning
    /// (records already linked are skipped cheaply).
    pub async fn backfill_reset(&self, entity: &'static Entity, direction: Direction) -> Result<(), BackfillError> {
        self.store().set_cursor(&self.backfill_cursor(entity, direction), "").await?;
        Ok(())
    }

    /// Runs one direction to the end (or to the first page with a failure), calling
    /// `progress` after every record.
    pub async fn backfill(
        &self,
        entity: &'static Entity,
        direction: Direction,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Progress, BackfillError> {
        let cursor_name = self.backfill_cursor(entity, direction);
        let mut after = self.store().cursor(&cursor_name).await?.filter(|c| !c.is_empty());
        let mut p = Progress::default();
        if direction == Direction::Export {
            p.total = Some(self.store().count(entity).await? as u64);
        }
        loop {
            let (last_good, next, failed) = match direction {
                Direction::Import => self.import_page(entity, after.as_deref(), &mut p, &mut progress).await?,
                Direction::Export => self.export_page(entity, after.as_deref(), &mut p, &mut progress).await?,
            };
            if let Some(id) = &last_good {
                self.store().set_cursor(&cursor_name, id).await?;
            }
            if failed {
                return Ok(p); // the cursor stays before the first failure; a rerun retries it
            }
            match next {
                Some(id) => after = Some(id),
                None => return Ok(p),
            }
        }
    }

    /// One page of the system's objects. Returns the last id before the first
    /// failure (if any moved), where the next page starts, and whether one failed.
    async fn import_page(
        &self,
        entity: &'static Entity,
        after: Option<&str>,
        p: &mut Progress,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<(Option<String>, Option<String>, bool), BackfillError> {
        // Bulk work: live pushes to the same system take their turns first.
        let page = Lane::Bulk
            .run(self.external().list_objects(entity, after))
            .await
            .map_err(|e| BackfillError::Remote(e.0))?;
        let mut last_good = None;
        let mut failed = false;
        for obj in &page.objects {
            p.seen += 1;
            let id = object_id(obj).unwrap_or_default().to_string();
            match self.import_one(entity, obj).await {
                Ok(done) => count(p, done),
                Err(e) => {
                    tracing::warn!(system = %self.system(), object = %id, error = %e, "backfill import failed");
                    p.failed += 1;
                    failed = true;
                }
            }
            if !failed {
                last_good = Some(id);
            }
            progress(p);
        }
        Ok((last_good, page.next, failed))
    }

    pub(crate) async fn import_one(&self, entity: &'static Entity, obj: &Value) -> Result<Done, BackfillError> {
        let inward = self.external();
        let store = self.store();
        let external_id = object_id(obj).ok_or_else(|| BackfillError::Remote("object without id".into()))?;
        if store.link_by_external_id(self.system(), entity.name, external_id).await?.is_some() {
            return Ok(Done::LinkedBefore);
        }
        let mapped = inward.to_hub(entity, obj);
        let by_id = match inward.hub_id(obj) {
            Some(id) => store.get(entity, &id).await?.filter(|r| r.deleted_at.is_none()),
            None => None,
        };
        let target = match by_id {
            Some(r) => Some(r),
            None => self.unlinked_with_email(entity, mapped.fields.get("email").and_then(Value::as_str)).await?,
        };
        let now = chrono::Utc::now().timestamp();
        let snapshot = |hub: Map<String, Value>| SyncSnapshot {
            at: SyncSnapshot::synced_at(&mapped.fields, now),
            external: Some(mapped.fields.clone()),
            hub: Some(inward.hub_view(entity, &hub)),
            pushed: Default::default(),
        };
        match target {
            Some(record) => {
                let write = self.link_write(external_id, &snapshot(record.fields.clone()));
                let op = InwardOp::Update { id: &record.id, patch: &Map::new(), expected_version: None };
                store.apply_inward(entity, op, &write).await?;
                Ok(Done::Linked)
            }
            None => {
                let (body, _) = inward.create_body(entity, &mapped.fields, external_id);
                let fields = entity.validate_create(&body).map_err(StoreError::Invalid)?;
                let write = self.link_write(external_id, &snapshot(fields));
                store.apply_inward(entity, InwardOp::Create(&body), &write).await?;
                Ok(Done::Created)
            }
        }
    }

    async fn unlinked_with_email(
        &self,
        entity: &'static Entity,
        email: Option<&str>,
    ) -> Result<Option<Record>, StoreError> {
        let Some(email) = email else { return Ok(None) };
        if !entity.fields.iter().any(|f| f.name == "email") {
            return Ok(None);
        }
        let q = ListQuery { limit: 10, filters: vec![("email", email.to_string())], ..ListQuery::default() };
        for r in self.store().list(entity, &q).await?.data {
            if self.store().link(entity.name, &r.id, self.system()).await?.is_none() {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// One page of hub records (see `import_page` for the result): the unlinked
    /// ones without an unfinished delivery are enqueued together.
    async fn export_page(
        &self,
        entity: &'static Entity,
        after: Option<&str>,
        p: &mut Progress,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<(Option<String>, Option<String>, bool), BackfillError> {
        let q = ListQuery { after: after.map(str::to_string), limit: PAGE, ..ListQuery::default() };
        let page = self.store().list(entity, &q).await?;
        let mut export = Vec::new();
        for record in &page.data {
            p.seen += 1;
            match self.export_check(entity, record).await? {
                Some(done) => count(p, done),
                None => export.push(record.id.clone()),
            }
        }
        p.enqueued += self.store().enqueue_backfill(entity, &export, self.system()).await? as u64;
        progress(p);
        let last = page.data.last().map(|r| r.id.clone());
        Ok((last.clone(), last.filter(|_| page.has_more), false))
    }

    /// Whether a hub record needs exporting (`None`) or why not.
    async fn export_check(&self, entity: &'static Entity, record: &Record) -> Result<Option<Done>, BackfillError> {
        let store = self.store();
        if store.link(entity.name, &record.id, self.system()).await?.is_some() {
            return Ok(Some(Done::LinkedBefore));
        }
        if !store.unfinished_changes(self.system(), entity.name, &record.id).await?.is_empty() {
            return Ok(Some(Done::InFlight));
        }
        Ok(None)
    }

    /// The export's deliveries so far (every `backfill:<system>` change's).
    pub async fn backfill_deliveries(&self) -> Result<syncflow_store::BulkProgress, BackfillError> {
        let origin = format!("{}{}", syncflow_store::BACKFILL_PREFIX, self.system());
        Ok(self.store().origin_progress(self.system(), &origin).await?)
    }

    fn link_write(&self, external_id: &str, snap: &SyncSnapshot) -> InwardWrite {
        InwardWrite::link_only(
            self.system(),
            LinkUpdate {
                external_id: external_id.to_string(),
                synced_version: 0,
                fingerprint: Some(snap.fingerprint()),
                snapshot: Some(snap.to_text()),
            },
        )
    }
}

fn count(p: &mut Progress, done: Done) {
    match done {
        Done::Created => p.created += 1,
        Done::Linked => p.linked += 1,
        Done::LinkedBefore => p.linked_before += 1,
        Done::InFlight => p.in_flight += 1,
    }
}

/// An external object's id: `id` (Stripe and most APIs) or `Id` (Salesforce).
pub(crate) fn object_id(obj: &Value) -> Option<&str> {
    obj["id"].as_str().or_else(|| obj["Id"].as_str()).filter(|s| !s.is_empty())
}
