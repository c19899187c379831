//! Client sync in the store: applying a client's batch of writes with conflict
//! resolution, and reading what a client lacks after a cursor.
//!
//! Invariants kept here: a batch commits whole or not at all (one transaction; any
//! invalid item rolls everything back); every applied item is an ordinary catalog
//! write with its change row (origin `client:<id>`), so it fans out like any
//! other; conflicts are decided by `syncflow_core::clock` and never depend on the
//! order batches arrive in; and a pull returns every record changed after the
//! cursor, except those whose current version this very client wrote.

use std::collections::HashMap;

use serde_json::{Map, Value};
use syncflow_core::clock::{Clock, ConflictPolicy, HUB_WRITER};
use syncflow_core::{now_timestamp, Change, Entity, Op, Record};

use syncflow_core::Storage;

use crate::catalog::{
    append_change_quiet, bind_record, change_insert_sql, decode_record, insert_sql, natural_key_owner, select_list,
    select_one_sql, update_sql,
};
use crate::changes::{change_columns, decode_change};
use crate::dialect::{Col, Dialect};
use crate::{on_read, on_write_tx, Backend, Result, Store, StoreError};

/// One write a client pushes.
#[derive(Debug, Clone)]
pub struct SyncItem {
    pub entity: &'static Entity,
    pub op: Op,
    /// Hub id of the record, when the client knows it.
    pub id: Option<String>,
    /// The client's own id for a record it created (offline); mapped to a hub id
    /// per client, so pushing it again updates instead of duplicating.
    pub client_ref: Option<String>,
    /// For an upsert: a merge patch on an existing record, the whole record on a
    /// create. Ignored for deletes.
    pub fields: Map<String, Value>,
    /// When the client made the edit, canonical (`clock::canonical`).
    pub edited_at: String,
    /// The version the client's edit was based on, if it says.
    pub base_version: Option<i64>,
}

/// A client's batch: applied in order, in one transaction.
#[derive(Debug, Clone)]
pub struct SyncBatch {
    pub client_id: String,
    pub policy: ConflictPolicy,
    pub items: Vec<SyncItem>,
}

impl SyncBatch {
    /// The change-log origin and sync-clock writer of this client's writes.
    pub fn writer(&self) -> String {
        client_writer(&self.client_id)
    }
}

/// `client:<id>`: origin and clock writer of a client's writes.
pub fn client_writer(client_id: &str) -> String {
    format!("client:{client_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
    Created,
    Updated,
    Deleted,
    /// Nothing to do: the record already had this value, was already deleted, or
    /// (delete of a `client_ref` the hub never saw) never existed here.
    Unchanged,
    /// The hub kept its value; `conflict` carries the client's losing value.
    Conflict,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Created => "created",
            ItemStatus::Updated => "updated",
            ItemStatus::Deleted => "deleted",
            ItemStatus::Unchanged => "unchanged",
            ItemStatus::Conflict => "conflict",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Client,
    Hub,
}

impl Winner {
    pub fn as_str(self) -> &'static str {
        match self {
            Winner::Client => "client",
            Winner::Hub => "hub",
        }
    }
}

/// The value that lost a conflict, so the client can show it.
#[derive(Debug, Clone, PartialEq)]
pub struct LosingSide {
    pub op: Op,
    /// For the hub's side: the overwritten record (API shape). For the client's
    /// side: the fields it pushed, normalised. `null` for a delete.
    pub value: Value,
    pub clock: Clock,
    /// The hub version that lost (hub side only).
    pub version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemConflict {
    pub policy: ConflictPolicy,
    pub winner: Winner,
    /// Why: `stale_base_version`, `older_edit` or `deleted` (a tombstone is final).
    pub reason: &'static str,
    pub losing: LosingSide,
}

/// What became of one pushed item.
#[derive(Debug, Clone)]
pub struct ItemOutcome {
    pub index: usize,
    pub entity: &'static Entity,
    pub client_ref: Option<String>,
    pub status: ItemStatus,
    /// The record as the hub now has it (`None` only for a delete of a record the
    /// hub never had).
    pub record: Option<Record>,
    pub clock: Option<Clock>,
    pub conflict: Option<ItemConflict>,
}

/// One problem with one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

/// A record a client lacks, in its current state.
#[derive(Debug, Clone)]
pub struct PulledRecord {
    pub entity: &'static Entity,
    pub id: String,
    pub op: Op,
    pub version: i64,
    pub clock: Clock,
    /// The record in the API shape; a tombstone for a delete.
    pub record: Value,
    /// Sequence number of the record's last change in this page.
    pub seq: i64,
}

#[derive(Debug, Clone)]
pub struct PullPage {
    pub records: Vec<PulledRecord>,
    /// Pass this as `after` next time. When the page is not full it is the head of
    /// the change log read at the start, so nothing between is skipped or re-read.
    pub next_after: i64,
    pub has_more: bool,
}

/// A page of the change log, optionally limited to some entities.
#[derive(Debug, Clone)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// Where the next read starts: the last change returned, or — when the page is
    /// not full — the head of the log read first, so filtered-out changes are not
    /// scanned again.
    pub next_after: i64,
}

/// Clock of a record's current version, from its `sync_clocks` row if a client
/// wrote that version, else the hub's own commit time.
fn effective_clock(record: &Record, row: Option<&(i64, String, String)>) -> Clock {
    match row {
        Some((version, edited_at, writer)) if *version == record.version => {
            Clock::new(edited_at.clone(), writer.clone())
        }
        _ => Clock::new(record.updated_at.clone(), HUB_WRITER),
    }
}

/// How many times a batch is retried after losing a race on PostgreSQL (two
/// batches creating one natural key, or a deadlock between row locks).
const BATCH_ATTEMPTS: usize = 5;

fn is_retryable(e: &StoreError) -> bool {
    let StoreError::Database(e) = e else {
        return false;
    };
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() || matches!(d.code().as_deref(), Some("40001" | "40P01")))
}

/// Builds `$first, $first+1, …` for `n` binds.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Ids per `IN (…)` query; well under both backends' bind limits.
const IN_CHUNK: usize = 500;

/// Records `$clock` as the sync clock of `$record`'s (new) version.
macro_rules! save_clock {
    ($tx:expr, $record:expr, $clock:expr) => {{
        let record: &Record = $record;
        let clock: &Clock = $clock;
        sqlx::query(
            "INSERT INTO sync_clocks (entity, record_id, version, edited_at, writer) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (entity, record_id) DO UPDATE SET version = excluded.version, \
             edited_at = excluded.edited_at, writer = excluded.writer",
        )
        .bind(record.entity.name)
        .bind(record.id.clone())
        .bind(record.version)
        .bind(clock.edited_at.clone())
        .bind(clock.writer.clone())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Maps the item's `client_ref` (if any) to `$record_id` for this client.
macro_rules! save_ref {
    ($tx:expr, $d:expr, $batch:expr, $item:expr, $record_id:expr) => {{
        let item: &SyncItem = $item;
        if let Some(client_ref) = &item.client_ref {
            let sql = format!(
                "INSERT INTO client_refs (client_id, entity, client_ref, record_id, created_at) \
                 VALUES ($1, $2, $3, $4, {})",
                $d.param(5, Col::Timestamp)
            );
            sqlx::query(&sql)
                .bind($batch.client_id.clone())
                .bind(item.entity.name)
                .bind(client_ref.clone())
                .bind($record_id.to_string())
                .bind(now_timestamp())
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Store {
    /// Applies a client's batch atomically and reports each item's outcome. Any
    /// invalid item fails the whole batch with `StoreError::InvalidBatch` listing
    /// every problem found, and nothing is written.
    pub async fn apply_sync_batch(&self, batch: &SyncBatch) -> Result<Vec<ItemOutcome>> {
        let mut attempt = 1;
        loop {
            match self.apply_sync_batch_once(batch).await {
                // The retry re-reads everything, so the batch then sees the winner's
                // row (and updates it) instead of colliding with it.
                Err(e) if attempt < BATCH_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "sync batch lost a race; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn apply_sync_batch_once(&self, batch: &SyncBatch) -> Result<Vec<ItemOutcome>> {
        let writer = batch.writer();
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(batch.items.len());
        let mut errors: Vec<ItemError> = Vec::new();
        let mut written: Vec<&'static str> = Vec::new();
        // The client's refs named by this batch, fetched in one query per entity and
        // kept up to date as the batch binds new ones.
        let mut wanted: HashMap<&'static str, Vec<String>> = HashMap::new();
        for item in &batch.items {
            if let Some(r) = &item.client_ref {
                wanted.entry(item.entity.name).or_default().push(r.clone());
            }
        }
        // Read before the transaction: a ref bound meanwhile by a concurrent batch of
        // the same client makes our insert collide, and the retry reads it.
        let mut refs = self.client_refs_of(&batch.client_id, &wanted).await?;
        on_write_tx!(self, |tx, d| {
            for (index, item) in batch.items.iter().enumerate() {
                let entity = item.entity;
                let mut fail =
                    |field: &str, message: String| errors.push(ItemError { index, field: field.to_string(), message });

                // 1. Which record: hub id, else the client's ref, else (upserts of
                //    entities with a natural key) the live record holding that key.
                let mut target: Option<String> = item.id.clone();
                let mut bind_ref = false;
                if target.is_none() {
                    if let Some(r) = &item.client_ref {
                        target = refs.get(&(entity.name, r.clone())).cloned();
                        bind_ref = target.is_none();
                    }
                }
                if target.is_none() && item.op == Op::Upsert {
                    if let Some(key) = entity.natural_key {
                        if let Some(value) = item.fields.get(key).and_then(Value::as_str) {
                            if d == Dialect::Postgres {
                                // A row that does not exist yet cannot be locked, so
                                // batches creating the same key take turns on a lock
                                // named after it; the second then finds (and updates)
                                // the first one's record instead of racing it.
                                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                                    .bind(format!("syncflow:natural-key:{}:{value}", entity.name))
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            target = natural_key_owner!(tx, entity, key, value, "");
                        }
                    }
                }
                let current = match &target {
                    Some(id) => sqlx::query(&select_one_sql(entity, d, true))
                        .bind(id.clone())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| decode_record(entity, &row))
                        .transpose()?,
                    None => None,
                };
                if let (Some(id), None) = (&item.id, &current) {
                    fail("id", format!("no {} with id `{id}`", entity.name));
                    continue;
                }

                // 2. Reference fields may name records by this client's refs
                //    (an invoice created offline for a customer created offline).
                let mut fields = item.fields.clone();
                for (field, target_name) in entity.references() {
                    let Some(target_entity) = Entity::by_name(target_name) else {
                        continue;
                    };
                    let Some(value) = fields.get(field).and_then(Value::as_str) else {
                        continue;
                    };
                    if value.starts_with(&format!("{}_", target_entity.id_prefix)) {
                        continue;
                    }
                    let mapped: Option<String> = match refs.get(&(target_entity.name, value.to_string())) {
                        Some(id) => Some(id.clone()),
                        None => {
                            sqlx::query_scalar(
                                "SELECT record_id FROM client_refs \
                                 WHERE client_id = $1 AND entity = $2 AND client_ref = $3",
                            )
                            .bind(batch.client_id.clone())
                            .bind(target_entity.name)
                            .bind(value.to_string())
                            .fetch_optional(&mut *tx)
                            .await?
                        }
                    };
                    if let Some(id) = mapped {
                        fields.insert(field.to_string(), Value::String(id));
                    }
                }

                // 3. Validate (always, even for an item that will lose: a client must
                //    learn that its data is invalid), then decide.
                let new_fields = match (item.op, &current) {
                    (Op::Delete, _) => None,
                    (Op::Upsert, None) => match entity.validate_create(&fields) {
                        Ok(f) => Some(f),
                        Err(errs) => {
                            for e in errs {
                                fail(&format!("fields.{}", e.field), e.message);
                            }
                            continue;
                        }
                    },
                    (Op::Upsert, Some(cur)) => match entity.apply_patch(&cur.fields, &fields) {
                        Ok(f) => Some(f),
                        Err(errs) => {
                            for e in errs {
                                fail(&format!("fields.{}", e.field), e.message);
                            }
                            continue;
                        }
                    },
                };
                if let Some(new_fields) = &new_fields {
                    let mut bad = false;
                    for (field, target_name) in entity.references() {
                        let Some(value) = new_fields.get(field).and_then(Value::as_str) else {
                            continue;
                        };
                        let unchanged =
                            current.as_ref().and_then(|c| c.fields.get(field)).and_then(Value::as_str) == Some(value);
                        if unchanged {
                            continue;
                        }
                        let Some(target_entity) = Entity::by_name(target_name) else {
                            continue;
                        };
                        let lock = if d == Dialect::Postgres { " FOR SHARE" } else { "" };
                        let sql = format!(
                            "SELECT id FROM {} WHERE id = $1 AND deleted_at IS NULL{lock}",
                            target_entity.plural
                        );
                        let found: Option<String> =
                            sqlx::query_scalar(&sql).bind(value.to_string()).fetch_optional(&mut *tx).await?;
                        if found.is_none() {
                            fail(&format!("fields.{field}"), format!("no {} with id `{value}`", target_entity.name));
                            bad = true;
                        }
                    }
                    if let Some(key) = entity.natural_key {
                        if let Some(value) = new_fields.get(key).and_then(Value::as_str) {
                            let own = current.as_ref().map_or("", |c| c.id.as_str());
                            if let Some(other) = natural_key_owner!(tx, entity, key, value, own) {
                                fail(&format!("fields.{key}"), format!("is already used by {} `{other}`", entity.name));
                                bad = true;
                            }
                        }
                    }
                    if bad {
                        continue;
                    }
                }
                if let Some(v) = item.base_version {
                    if current.is_none() && v > 0 {
                        fail("base_version", format!("is {v}, but the hub has no such {}", entity.name));
                        continue;
                    }
                }

                let incoming = Clock::new(item.edited_at.clone(), writer.clone());
                // What the client pushed, normalised, for reporting a loss.
                let pushed = match (&new_fields, item.op) {
                    (Some(nf), Op::Upsert) => Value::Object(
                        nf.iter()
                            .filter(|(k, _)| fields.contains_key(*k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    _ => Value::Null,
                };
                let client_losing =
                    || LosingSide { op: item.op, value: pushed.clone(), clock: incoming.clone(), version: None };
                let mut outcome = ItemOutcome {
                    index,
                    entity,
                    client_ref: item.client_ref.clone(),
                    status: ItemStatus::Unchanged,
                    record: None,
                    clock: None,
                    conflict: None,
                };

                match current {
                    None if item.op == Op::Delete => {
                        // A record created and deleted before it ever reached the hub.
                    }
                    None => {
                        // Create.
                        let record = Record::new(entity, new_fields.unwrap_or_default());
                        let sql = insert_sql(entity, d);
                        bind_record!(sqlx::query(&sql), &record).execute(&mut *tx).await?;
                        append_change_quiet!(tx, d, &record, Op::Upsert, writer);
                        save_clock!(tx, &record, &incoming);
                        if bind_ref {
                            save_ref!(tx, d, batch, item, &record.id);
                            if let Some(r) = &item.client_ref {
                                refs.insert((entity.name, r.clone()), record.id.clone());
                            }
                        }
                        written.push(entity.name);
                        outcome.status = ItemStatus::Created;
                        outcome.clock = Some(incoming.clone());
                        outcome.record = Some(record);
                    }
                    Some(cur) => {
                        let clock_row: Option<(i64, String, String)> = sqlx::query_as(
                            "SELECT version, edited_at, writer FROM sync_clocks \
                             WHERE entity = $1 AND record_id = $2",
                        )
                        .bind(entity.name)
                        .bind(cur.id.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                        let current_clock = effective_clock(&cur, clock_row.as_ref());
                        let stale = item.base_version.is_some_and(|v| v != cur.version);
                        // (apply?, reason if the hub's value is superseded or kept)
                        let (apply, reason) = if cur.deleted_at.is_some() {
                            // A tombstone is final: deleting again changes nothing, and
                            // an edit cannot resurrect it (hub ids are never reused).
                            (false, "deleted")
                        } else {
                            match batch.policy {
                                ConflictPolicy::LastWriterWins => match item.base_version {
                                    Some(v) if v == cur.version => (true, ""),
                                    _ if incoming.beats(&current_clock) => (true, "stale_base_version"),
                                    _ => (false, "older_edit"),
                                },
                                ConflictPolicy::RejectStale => {
                                    let base = item.base_version.unwrap_or(0);
                                    (base == cur.version, "stale_base_version")
                                }
                            }
                        };
                        if bind_ref {
                            save_ref!(tx, d, batch, item, &cur.id);
                            if let Some(r) = &item.client_ref {
                                refs.insert((entity.name, r.clone()), cur.id.clone());
                            }
                        }
                        if !apply {
                            let already = cur.deleted_at.is_some() && item.op == Op::Delete;
                            if !already {
                                outcome.status = ItemStatus::Conflict;
                                outcome.conflict = Some(ItemConflict {
                                    policy: batch.policy,
                                    winner: Winner::Hub,
                                    reason,
                                    losing: client_losing(),
                                });
                            }
                            outcome.clock = Some(current_clock);
                            outcome.record = Some(cur);
                            outcomes.push(outcome);
                            continue;
                        }
                        let next_fields = new_fields.unwrap_or_else(|| cur.fields.clone());
                        if item.op == Op::Upsert && next_fields == cur.fields {
                            outcome.clock = Some(current_clock);
                            outcome.record = Some(cur);
                            outcomes.push(outcome);
                            continue;
                        }
                        let now = now_timestamp();
                        let record = Record {
                            version: cur.version + 1,
                            updated_at: now.clone(),
                            deleted_at: (item.op == Op::Delete).then_some(now),
                            fields: next_fields,
                            ..cur.clone()
                        };
                        let sql = update_sql(entity, d);
                        bind_record!(sqlx::query(&sql), &record).execute(&mut *tx).await?;
                        append_change_quiet!(tx, d, &record, item.op, writer);
                        save_clock!(tx, &record, &incoming);
                        written.push(entity.name);
                        // A write that applied although its base was stale overwrote a
                        // value the client never saw: report that value as the loser.
                        if stale {
                            outcome.conflict = Some(ItemConflict {
                                policy: batch.policy,
                                winner: Winner::Client,
                                reason,
                                losing: LosingSide {
                                    op: if cur.deleted_at.is_some() { Op::Delete } else { Op::Upsert },
                                    value: cur.to_json(),
                                    clock: current_clock,
                                    version: Some(cur.version),
                                },
                            });
                        }
                        outcome.status = match item.op {
                            Op::Upsert => ItemStatus::Updated,
                            Op::Delete => ItemStatus::Deleted,
                        };
                        outcome.clock = Some(incoming.clone());
                        outcome.record = Some(record);
                    }
                }
                outcomes.push(outcome);
            }
            if !errors.is_empty() {
                // Dropping the transaction rolls back every item already applied.
                return Err(StoreError::InvalidBatch(errors));
            }
            tx.commit().await?;
        });
        for entity in written {
            self.notify_written(entity, &writer);
        }
        Ok(outcomes)
    }

    /// Records changed after `after` (a change sequence number) that the client
    /// with clock writer `writer` lacks, in their current state, coalesced per
    /// record and ordered by their last change. Reads at most `limit` changes.
    pub async fn pull(&self, writer: &str, after: i64, limit: usize, entities: &[&'static Entity]) -> Result<PullPage> {
        let (head, horizon) = self.cursor_bounds().await?;
        crate::retention::check_cursor(after, head, horizon)?;
        let limit = limit.clamp(1, 10_000);
        if entities.is_empty() {
            return Ok(PullPage { records: Vec::new(), next_after: head, has_more: false });
        }
        // Scan by sequence alone and filter here (see `change_page`).
        let scanned: Vec<(i64, String, String)> = on_read!(self, |pool, _d| {
            let sql = format!(
                "SELECT seq, entity, record_id FROM changes WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT {}",
                limit + 1
            );
            sqlx::query_as(&sql).bind(after).bind(head).fetch_all(pool).await?
        });
        let has_more = scanned.len() > limit;
        let scanned = &scanned[..scanned.len().min(limit)];
        let next_after = if has_more { scanned.last().map_or(head, |r| r.0) } else { head };
        let rows: Vec<&(i64, String, String)> =
            scanned.iter().filter(|(_, entity, _)| entities.iter().any(|e| e.name == entity)).collect();

        // Last change per record within the page, in seq order.
        let mut last: HashMap<(&str, &str), i64> = HashMap::new();
        for (seq, entity, id) in rows {
            last.insert((entity.as_str(), id.as_str()), *seq);
        }
        let mut order: Vec<((&str, &str), i64)> = last.into_iter().collect();
        order.sort_by_key(|(_, seq)| *seq);

        let mut by_entity: HashMap<&str, Vec<String>> = HashMap::new();
        for ((entity, id), _) in &order {
            by_entity.entry(entity).or_default().push((*id).to_string());
        }
        let mut current: HashMap<(String, String), (Record, Clock)> = HashMap::new();
        for (name, ids) in &by_entity {
            let Some(entity) = Entity::by_name(name) else {
                continue;
            };
            for (record, clock) in self.records_with_clocks(entity, ids).await? {
                current.insert((name.to_string(), record.id.clone()), (record, clock));
            }
        }

        let mut records = Vec::with_capacity(order.len());
        for ((name, id), seq) in order {
            let Some(entity) = Entity::by_name(name) else {
                continue;
            };
            let pulled = match current.remove(&(name.to_string(), id.to_string())) {
                Some((record, clock)) => {
                    if clock.writer == writer {
                        continue; // this client wrote the current version: it has it
                    }
                    PulledRecord {
                        entity,
                        id: record.id.clone(),
                        op: if record.deleted_at.is_some() { Op::Delete } else { Op::Upsert },
                        version: record.version,
                        record: record.to_json(),
                        clock,
                        seq,
                    }
                }
                None => {
                    // Row removed by plain SQL (PostgreSQL captures that as a
                    // tombstone change): send the last snapshot as the tombstone.
                    let Some(change) = self.changes_of_record(name, id).await?.pop() else {
                        continue;
                    };
                    let edited = change
                        .snapshot
                        .get("updated_at")
                        .and_then(Value::as_str)
                        .unwrap_or(&change.created_at)
                        .to_string();
                    PulledRecord {
                        entity,
                        id: id.to_string(),
                        op: change.op,
                        version: change.version,
                        record: change.snapshot,
                        clock: Clock::new(edited, HUB_WRITER),
                        seq,
                    }
                }
            };
            records.push(pulled);
        }
        Ok(PullPage { records, next_after, has_more })
    }

    /// The record ids this client's refs name, per entity.
    async fn client_refs_of(
        &self,
        client_id: &str,
        wanted: &HashMap<&'static str, Vec<String>>,
    ) -> Result<HashMap<(&'static str, String), String>> {
        let mut out = HashMap::new();
        for (entity, list) in wanted {
            for chunk in list.chunks(IN_CHUNK) {
                let found: Vec<(String, String)> = match &self.inner.backend {
                    // One array parameter, each element a primary-key lookup (LIMIT
                    // keeps the lateral subquery from being flattened into a join:
                    // PostgreSQL's generic plan would then scan all of the client's
                    // refs, as it does for an IN list of parameters).
                    Backend::Postgres(pool) => {
                        sqlx::query_as(
                            "SELECT r.client_ref, c.record_id FROM unnest($3::text[]) AS r(client_ref) \
                             CROSS JOIN LATERAL (SELECT record_id FROM client_refs WHERE client_id = $1 \
                             AND entity = $2 AND client_ref = r.client_ref LIMIT 1) c",
                        )
                        .bind(client_id)
                        .bind(*entity)
                        .bind(chunk.to_vec())
                        .fetch_all(pool)
                        .await?
                    }
                    Backend::Sqlite { read, .. } => {
                        let sql = format!(
                            "SELECT client_ref, record_id FROM client_refs \
                             WHERE client_id = $1 AND entity = $2 AND client_ref IN ({})",
                            placeholders(3, chunk.len())
                        );
                        let mut q = sqlx::query_as(&sql).bind(client_id).bind(*entity);
                        for r in chunk {
                            q = q.bind(r.clone());
                        }
                        q.fetch_all(read).await?
                    }
                };
                for (r, id) in found {
                    out.insert((*entity, r), id);
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` changes after `after`, of the given entities only (`None`: all).
    pub async fn change_page(
        &self,
        after: i64,
        limit: usize,
        entities: Option<&[&'static Entity]>,
    ) -> Result<ChangePage> {
        let (head, horizon) = self.cursor_bounds().await?;
        crate::retention::check_cursor(after, head, horizon)?;
        if entities.is_some_and(<[_]>::is_empty) {
            return Ok(ChangePage { changes: Vec::new(), next_after: head });
        }
        let limit = limit.clamp(1, 10_000);
        // Scan by sequence alone (the primary ordering index) and filter here: an
        // entity filter in SQL lets PostgreSQL's generic plan sort the whole range.
        let scan = limit.max(500);
        let mut changes: Vec<Change> = Vec::new();
        let mut cursor = after;
        let next_after = loop {
            let rows: Vec<Change> = on_read!(self, |pool, d| {
                let sql = format!(
                    "SELECT {} FROM changes WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT {scan}",
                    change_columns(d)
                );
                let rows = sqlx::query(&sql).bind(cursor).bind(head).fetch_all(pool).await?;
                rows.iter().map(decode_change).collect::<Result<Vec<_>>>()?
            });
            let full = rows.len() == scan;
            let mut last_seen = None;
            for change in rows {
                last_seen = Some(change.seq);
                if entities.is_none_or(|list| list.iter().any(|e| e.name == change.entity)) {
                    changes.push(change);
                    if changes.len() == limit {
                        break;
                    }
                }
            }
            if changes.len() == limit {
                break changes.last().map_or(head, |c| c.seq);
            }
            match (full, last_seen) {
                (true, Some(seq)) => cursor = seq,
                _ => break head,
            }
        };
        Ok(ChangePage { changes, next_after })
    }

    /// The records with these ids (tombstones included) with their sync clocks.
    pub async fn records_with_clocks(&self, entity: &'static Entity, ids: &[String]) -> Result<Vec<(Record, Clock)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            // PostgreSQL gets one array parameter: a statement with hundreds of
            // parameters is re-planned per distinct length and planned poorly.
            let records: Vec<Record> = match &self.inner.backend {
                Backend::Postgres(pool) => {
                    let d = Dialect::Postgres;
                    let sql = format!("SELECT {} FROM {} WHERE id = ANY($1)", select_list(entity, d), entity.plural);
                    let rows = sqlx::query(&sql).bind(chunk.to_vec()).fetch_all(pool).await?;
                    rows.iter().map(|r| decode_record(entity, r)).collect::<Result<Vec<_>>>()?
                }
                Backend::Sqlite { read, .. } => {
                    let d = Dialect::Sqlite;
                    let sql = format!(
                        "SELECT {} FROM {} WHERE id IN ({})",
                        select_list(entity, d),
                        entity.plural,
                        placeholders(1, chunk.len())
                    );
                    let mut q = sqlx::query(&sql);
                    for id in chunk {
                        q = q.bind(id.clone());
                    }
                    let rows = q.fetch_all(read).await?;
                    rows.iter().map(|r| decode_record(entity, r)).collect::<Result<Vec<_>>>()?
                }
            };
            out.extend(self.attach_clocks(entity, records).await?);
        }
        Ok(out)
    }

    /// Live records of `entity` the hub changed after `since` (canonical time; all
    /// when `None`), with their sync clocks, newest edit first. Unpaged: this
    /// serves the seed protocol, which has no paging.
    pub async fn records_changed_since(
        &self,
        entity: &'static Entity,
        since: Option<&str>,
    ) -> Result<Vec<(Record, Clock)>> {
        let records: Vec<Record> = on_read!(self, |pool, d| {
            let mut sql = format!("SELECT {} FROM {} WHERE deleted_at IS NULL", select_list(entity, d), entity.plural);
            if since.is_some() {
                sql.push_str(&format!(" AND updated_at > {}", d.param(1, Col::Timestamp)));
            }
            let mut q = sqlx::query(&sql);
            if let Some(since) = since {
                q = q.bind(since.to_string());
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| decode_record(entity, r)).collect::<Result<Vec<_>>>()?
        });
        let mut out = self.attach_clocks(entity, records).await?;
        out.sort_by(|a, b| b.1.order(&a.1).then_with(|| b.0.id.cmp(&a.0.id)));
        Ok(out)
    }

    async fn attach_clocks(&self, entity: &'static Entity, records: Vec<Record>) -> Result<Vec<(Record, Clock)>> {
        let mut rows: HashMap<String, (i64, String, String)> = HashMap::new();
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        for chunk in ids.chunks(IN_CHUNK) {
            let found: Vec<(String, i64, String, String)> = match &self.inner.backend {
                Backend::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT record_id, version, edited_at, writer FROM sync_clocks \
                         WHERE entity = $1 AND record_id = ANY($2)",
                    )
                    .bind(entity.name)
                    .bind(chunk.to_vec())
                    .fetch_all(pool)
                    .await?
                }
                Backend::Sqlite { read, .. } => {
                    let sql = format!(
                        "SELECT record_id, version, edited_at, writer FROM sync_clocks \
                         WHERE entity = $1 AND record_id IN ({})",
                        placeholders(2, chunk.len())
                    );
                    let mut q = sqlx::query_as(&sql).bind(entity.name);
                    for id in chunk {
                        q = q.bind(id.clone());
                    }
                    q.fetch_all(read).await?
                }
            };
            for (id, version, edited_at, writer) in found {
                rows.insert(id, (version, edited_at, writer));
            }
        }
        Ok(records
            .into_iter()
            .map(|r| {
                let clock = effective_clock(&r, rows.get(&r.id));
                (r, clock)
            })
            .collect())
    }

    /// The sync clock of one record's current version (`None` if no such record).
    pub async fn clock_of(&self, entity: &'static Entity, id: &str) -> Result<Option<Clock>> {
        Ok(self.records_with_clocks(entity, &[id.to_string()]).await?.pop().map(|(_, c)| c))
    }
}
