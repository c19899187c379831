//! Catalog reads and writes. Every write validates first, then in one transaction
//! updates the record and appends its change row (the transactional outbox), so a
//! write either happens with its change or not at all.

use serde_json::{Map, Value};
use sqlx::{ColumnIndex, Decode, Row, Type};
use syncflow_core::entity::{Entity, FieldType, Storage};
use syncflow_core::{now_timestamp, FieldError, Op, Record};

use crate::dialect::{Col, Dialect};
use crate::inbox::InwardWrite;
use crate::{on_read, on_write_tx, Result, Store, StoreError};

/// A catalog write made for an inward event (`Store::apply_inward`).
#[derive(Debug, Clone, Copy)]
pub enum InwardOp<'a> {
    Create(&'a Map<String, Value>),
    /// A merge patch; an empty patch writes nothing but still settles the link and inbox row.
    Update {
        id: &'a str,
        patch: &'a Map<String, Value>,
        expected_version: Option<i64>,
    },
    Delete {
        id: &'a str,
        expected_version: Option<i64>,
    },
}

/// Cursor-paginated list request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Continue past this id in the listing direction: ids greater than it
    /// (ascending) or less than it (`descending`).
    pub after: Option<String>,
    /// Newest first (ids are time-ordered).
    pub descending: bool,
    pub limit: usize,
    pub include_deleted: bool,
    /// Equality filters on text fields; e-mail fields compare case-insensitively.
    pub filters: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub data: Vec<Record>,
    pub has_more: bool,
}

/// Columns every record table has, in the order `decode_record` reads them.
const BOOKKEEPING: [(&str, Col); 4] = [
    ("version", Col::Field(Storage::Integer)),
    ("created_at", Col::Timestamp),
    ("updated_at", Col::Timestamp),
    ("deleted_at", Col::Timestamp),
];

pub(crate) fn select_list(entity: &Entity, d: Dialect) -> String {
    select_list_of(entity, d, "")
}

/// `select_list` with each column qualified by `prefix` (`"r."`), for joins.
fn select_list_of(entity: &Entity, d: Dialect, prefix: &str) -> String {
    let mut cols = vec![format!("{prefix}id")];
    cols.extend(BOOKKEEPING.iter().map(|(n, c)| d.select(&format!("{prefix}{n}"), *c)));
    cols.extend(entity.fields.iter().map(|f| d.select(&format!("{prefix}{}", f.name), Col::Field(f.ty.storage()))));
    cols.join(", ")
}

pub(crate) fn insert_sql(entity: &Entity, d: Dialect) -> String {
    let mut names = vec!["id"];
    let mut params = vec![d.param(1, Col::Field(Storage::Text))];
    for (i, (n, c)) in BOOKKEEPING.iter().enumerate() {
        names.push(n);
        params.push(d.param(i + 2, *c));
    }
    for (i, f) in entity.fields.iter().enumerate() {
        names.push(f.name);
        params.push(d.param(i + 2 + BOOKKEEPING.len(), Col::Field(f.ty.storage())));
    }
    format!("INSERT INTO {} ({}) VALUES ({})", entity.plural, names.join(", "), params.join(", "))
}

/// `UPDATE … SET <bookkeeping>, <fields> WHERE id = $1`: binds in the same order as
/// `insert_sql`, so one binding routine serves both.
pub(crate) fn update_sql(entity: &Entity, d: Dialect) -> String {
    let mut sets = Vec::new();
    for (i, (n, c)) in BOOKKEEPING.iter().enumerate() {
        sets.push(format!("{n} = {}", d.param(i + 2, *c)));
    }
    for (i, f) in entity.fields.iter().enumerate() {
        sets.push(format!("{} = {}", f.name, d.param(i + 2 + BOOKKEEPING.len(), Col::Field(f.ty.storage()))));
    }
    format!("UPDATE {} SET {} WHERE id = $1", entity.plural, sets.join(", "))
}

pub(crate) fn select_one_sql(entity: &Entity, d: Dialect, for_update: bool) -> String {
    let lock = if for_update && d == Dialect::Postgres { " FOR UPDATE" } else { "" };
    format!("SELECT {} FROM {} WHERE id = $1{lock}", select_list(entity, d), entity.plural)
}

pub(crate) fn change_insert_sql(d: Dialect) -> String {
    format!(
        "INSERT INTO changes (entity, record_id, op, version, origin, snapshot, created_at) \
         VALUES ($1, $2, $3, $4, $5, {}, {})",
        d.param(6, Col::Field(Storage::Json)),
        d.param(7, Col::Timestamp)
    )
}

/// Binds a record's id, bookkeeping and fields in `insert_sql`/`update_sql` order.
macro_rules! bind_record {
    ($q:expr, $r:expr) => {{
        let r: &Record = $r;
        let mut q = $q.bind(r.id.clone()).bind(r.version).bind(r.created_at.clone()).bind(r.updated_at.clone());
        q = q.bind(r.deleted_at.clone());
        for f in r.entity.fields {
            let v = r.fields.get(f.name).unwrap_or(&Value::Null);
            q = match f.ty.storage() {
                Storage::Integer => q.bind(v.as_i64()),
                Storage::Json => q.bind(if v.is_null() { None } else { Some(v.to_string()) }),
                Storage::Text | Storage::Date => q.bind(v.as_str().map(str::to_owned)),
            };
        }
        q
    }};
}

/// Appends the change row for `record` (no wake-up: batches notify once at the end).
macro_rules! append_change_quiet {
    ($tx:expr, $d:expr, $record:expr, $op:expr, $origin:expr) => {{
        let r: &Record = $record;
        let sql = change_insert_sql($d);
        sqlx::query(&sql)
            .bind(r.entity.name)
            .bind(r.id.clone())
            .bind($op.as_str())
            .bind(r.version)
            .bind($origin.to_string())
            .bind(r.to_json().to_string())
            .bind(r.updated_at.clone())
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Appends the change row for `record`. No `pg_notify` here: PostgreSQL takes one
/// cluster-wide lock for every committing transaction that notified, held through
/// its WAL flush, which serialised all writers' commits; the sequencer's single
/// notification per pass wakes other nodes instead (`Store::sequence`).
macro_rules! append_change {
    ($tx:expr, $d:expr, $record:expr, $op:expr, $origin:expr) => {{
        append_change_quiet!($tx, $d, $record, $op, $origin);
    }};
}

/// Upserts the inward write's link (at the written version), settles its inbox
/// row and records its conflicts, inside the catalog write's transaction: the
/// record, its change, the link, the conflicts and the event's outcome commit
/// together or not at all.
macro_rules! settle_inward {
    ($tx:expr, $d:expr, $inward:expr, $record:expr) => {
        if let Some(w) = $inward {
            let w: &InwardWrite = w;
            let r: &Record = $record;
            let now = crate::deliveries::now_ms();
            if let Some(link) = &w.link {
                sqlx::query(crate::deliveries::UPSERT_LINK)
                    .bind(r.entity.name.to_string())
                    .bind(r.id.clone())
                    .bind(w.system.clone())
                    .bind(link.external_id.clone())
                    .bind(r.version)
                    .bind(link.fingerprint.clone())
                    .bind(link.snapshot.clone())
                    .bind(now)
                    .execute(&mut *$tx)
                    .await?;
            }
            let inbox_id = match &w.inbox {
                None => None,
                Some((crate::inbox::InboxRef::Id(id), outcome, remarks)) => {
                    sqlx::query(
                        "UPDATE inbox SET outcome = $2, record_id = $3, remarks = $4, lease_until = NULL, \
                         settled_at = $5 WHERE id = $1",
                    )
                    .bind(*id)
                    .bind(outcome.as_str())
                    .bind(r.id.clone())
                    .bind(remarks.clone())
                    .bind(now)
                    .execute(&mut *$tx)
                    .await?;
                    Some(*id)
                }
                Some((crate::inbox::InboxRef::New(e), outcome, remarks)) => {
                    let id: Option<i64> =
                        crate::inbox::bind_event!(sqlx::query_scalar(crate::inbox::INSERT_SETTLED), e)
                            .bind(now)
                            .bind(outcome.as_str())
                            .bind(r.id.clone())
                            .bind(remarks.clone())
                            .bind(Some(now))
                            .bind(0i64)
                            .bind(None::<i64>)
                            .fetch_optional(&mut *$tx)
                            .await?;
                    // Seen already (another node, a retried webhook): the whole write is dropped.
                    Some(id.ok_or(StoreError::DuplicateEvent)?)
                }
            };
            for c in &w.conflicts {
                // A later edit of a field with an open (manual) conflict updates that row.
                sqlx::query(
                    "INSERT INTO conflicts (system, entity, record_id, field, hub_value, external_value, policy, \
                     winner, status, inbox_id, created_at, resolved_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (system, entity, record_id, field) WHERE status = 'open' DO UPDATE SET \
                     hub_value = excluded.hub_value, external_value = excluded.external_value, \
                     inbox_id = excluded.inbox_id, created_at = excluded.created_at",
                )
                .bind(w.system.clone())
                .bind(r.entity.name.to_string())
                .bind(r.id.clone())
                .bind(c.field.clone())
                .bind(c.hub_value.to_string())
                .bind(c.external_value.to_string())
                .bind(c.policy.as_str())
                .bind(c.winner.map(str::to_string))
                .bind(if c.winner.is_some() { "resolved" } else { "open" })
                .bind(inbox_id)
                .bind(now)
                .bind(c.winner.map(|_| now))
                .execute(&mut *$tx)
                .await?;
            }
            if w.resync {
                let origin = format!("{}{}", crate::deliveries::RESYNC_PREFIX, w.system);
                append_change_quiet!($tx, $d, r, if r.deleted_at.is_some() { Op::Delete } else { Op::Upsert }, origin);
            }
        }
    };
}

/// Fails with a field error for each reference field that does not name a live
/// record. On PostgreSQL the referenced row is share-locked until commit, so it
/// cannot be deleted underneath us.
macro_rules! check_references {
    ($tx:expr, $d:expr, $entity:expr, $fields:expr, $only_changed_from:expr) => {{
        let mut errors = Vec::new();
        for (field, target) in $entity.references() {
            let Some(value) = $fields.get(field).and_then(Value::as_str) else {
                continue;
            };
            let previous: Option<&Map<String, Value>> = $only_changed_from;
            if previous.and_then(|p| p.get(field)).and_then(Value::as_str) == Some(value) {
                continue;
            }
            let target = Entity::by_name(target).expect("reference names a known entity");
            let lock = if $d == Dialect::Postgres { " FOR SHARE" } else { "" };
            let sql = format!("SELECT id FROM {} WHERE id = $1 AND deleted_at IS NULL{lock}", target.plural);
            let found: Option<String> =
                sqlx::query_scalar(&sql).bind(value.to_string()).fetch_optional(&mut *$tx).await?;
            if found.is_none() {
                errors.push(FieldError::new(field, format!("no {} with id `{value}`", target.name)));
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
    }};
}

/// Id of the live record other than `$exclude` whose natural key is `$value`. (The
/// partial unique index is the final guard; asking first gives a per-field message.)
macro_rules! natural_key_owner {
    ($tx:expr, $entity:expr, $key:expr, $value:expr, $exclude:expr) => {{
        let sql = format!("SELECT id FROM {} WHERE {} = $1 AND deleted_at IS NULL AND id <> $2", $entity.plural, $key);
        let owner: Option<String> = sqlx::query_scalar(&sql)
            .bind($value.to_string())
            .bind($exclude.to_string())
            .fetch_optional(&mut *$tx)
            .await?;
        owner
    }};
}

/// Fails when another live record already holds this record's natural key.
macro_rules! check_natural_key {
    ($tx:expr, $entity:expr, $fields:expr, $id:expr) => {{
        if let Some(key) = $entity.natural_key {
            if let Some(value) = $fields.get(key).and_then(Value::as_str) {
                if let Some(other) = natural_key_owner!($tx, $entity, key, value, $id) {
                    return Err(natural_key_taken($entity, &other));
                }
            }
        }
    }};
}

pub(crate) use {append_change_quiet, bind_record, natural_key_owner};

/// The error for a natural key already held by live record `other`.
pub(crate) fn natural_key_taken(entity: &Entity, other: &str) -> StoreError {
    let key = entity.natural_key.unwrap_or("id");
    StoreError::Invalid(vec![FieldError::new(key, format!("is already used by {} `{other}`", entity.name))])
}

/// Maps a unique-index violation (two writers racing for one natural key on
/// PostgreSQL) to the same field error the pre-check gives; other errors pass.
pub(crate) fn unique_to_invalid(entity: &Entity, e: sqlx::Error) -> StoreError {
    let unique = e.as_database_error().is_some_and(|d| d.is_unique_violation());
    match (unique, entity.natural_key) {
        (true, Some(_)) => natural_key_taken(entity, "(concurrent write)"),
        _ => StoreError::Database(e),
    }
}

impl Store {
    /// Creates a record from a client body (validated here) and logs the change.
    pub async fn create(&self, entity: &'static Entity, body: &Map<String, Value>, origin: &str) -> Result<Record> {
        self.create_inner(entity, body, origin, None).await
    }

    /// A catalog write for an inward event of `write.system` (which becomes the
    /// change's origin), committed with the event's link and inbox outcome.
    pub async fn apply_inward(&self, entity: &'static Entity, op: InwardOp<'_>, write: &InwardWrite) -> Result<Record> {
        let origin = write.system.as_str();
        match op {
            InwardOp::Create(body) => self.create_inner(entity, body, origin, Some(write)).await,
            InwardOp::Update { id, patch, expected_version } => {
                self.update_inner(entity, id, patch, expected_version, origin, Some(write)).await
            }
            InwardOp::Delete { id, expected_version } => {
                self.delete_inner(entity, id, expected_version, origin, Some(write)).await
            }
        }
    }

    /// Appends a `reconcile:<system>` change of the record as it stands (a tombstone
    /// yields a delete), so the dispatcher re-pushes its state to that system only,
    /// in the bulk lane: reconciliation's repair of what a system lost. `NotFound`
    /// without the record.
    pub async fn resync(&self, entity: &'static Entity, id: &str, system: &str) -> Result<Record> {
        let origin = format!("{}{system}", crate::deliveries::RECONCILE_PREFIX);
        let record = on_write_tx!(self, |tx, d| {
            let row =
                sqlx::query(&select_one_sql(entity, d, true)).bind(id.to_string()).fetch_optional(&mut *tx).await?;
            let record = match row {
                Some(row) => decode_record(entity, &row)?,
                None => return Err(StoreError::NotFound),
            };
            let op = if record.deleted_at.is_some() { Op::Delete } else { Op::Upsert };
            append_change!(tx, d, &record, op, origin);
            tx.commit().await?;
            record
        });
        self.notify_written(entity.name, &origin);
        Ok(record)
    }

    async fn create_inner(
        &self,
        entity: &'static Entity,
        body: &Map<String, Value>,
        origin: &str,
        inward: Option<&InwardWrite>,
    ) -> Result<Record> {
        let fields = entity.validate_create(body).map_err(StoreError::Invalid)?;
        let record = Record::new(entity, fields);
        on_write_tx!(self, |tx, d| {
            check_references!(tx, d, entity, &record.fields, None);
            check_natural_key!(tx, entity, &record.fields, &record.id);
            let sql = insert_sql(entity, d);
            bind_record!(sqlx::query(&sql), &record)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_to_invalid(entity, e))?;
            append_change!(tx, d, &record, Op::Upsert, origin);
            settle_inward!(tx, d, inward, &record);
            tx.commit().await?;
        });
        self.notify_written(entity.name, origin);
        Ok(record)
    }

    /// Applies a merge patch. `expected_version` (from `If-Match`) must equal the
    /// current version. A patch that changes nothing writes nothing.
    pub async fn update(
        &self,
        entity: &'static Entity,
        id: &str,
        patch: &Map<String, Value>,
        expected_version: Option<i64>,
        origin: &str,
    ) -> Result<Record> {
        self.update_inner(entity, id, patch, expected_version, origin, None).await
    }

    async fn update_inner(
        &self,
        entity: &'static Entity,
        id: &str,
        patch: &Map<String, Value>,
        expected_version: Option<i64>,
        origin: &str,
        inward: Option<&InwardWrite>,
    ) -> Result<Record> {
        let written = on_write_tx!(self, |tx, d| {
            let row =
                sqlx::query(&select_one_sql(entity, d, true)).bind(id.to_string()).fetch_optional(&mut *tx).await?;
            let current = match row {
                Some(row) => decode_record(entity, &row)?,
                None => return Err(StoreError::NotFound),
            };
            if current.deleted_at.is_some() {
                return Err(StoreError::NotFound);
            }
            if let Some(expected) = expected_version {
                if expected != current.version {
                    return Err(StoreError::VersionMismatch { current: current.version });
                }
            }
            let fields = entity.apply_patch(&current.fields, patch).map_err(StoreError::Invalid)?;
            if fields == current.fields {
                // Nothing to write, but an inward event still settles (and links) here.
                if inward.is_some() {
                    settle_inward!(tx, d, inward, &current);
                    tx.commit().await?;
                    if inward.is_some_and(|w| w.resync) {
                        self.notify_written(entity.name, origin);
                    }
                }
                return Ok(current);
            }
            check_references!(tx, d, entity, &fields, Some(&current.fields));
            // The natural key is asked about only when it changes (most updates keep it).
            if entity.natural_key.is_some_and(|k| fields.get(k) != current.fields.get(k)) {
                check_natural_key!(tx, entity, &fields, &current.id);
            }
            let record = Record { version: current.version + 1, updated_at: now_timestamp(), fields, ..current };
            let sql = update_sql(entity, d);
            bind_record!(sqlx::query(&sql), &record)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_to_invalid(entity, e))?;
            append_change!(tx, d, &record, Op::Upsert, origin);
            settle_inward!(tx, d, inward, &record);
            tx.commit().await?;
            record
        });
        self.notify_written(entity.name, origin);
        Ok(written)
    }

    /// Tombstones a record: it stays in the table with `deleted_at` set, so the
    /// delete can travel to other systems and clients like any other change.
    pub async fn delete(
        &self,
        entity: &'static Entity,
        id: &str,
        expected_version: Option<i64>,
        origin: &str,
    ) -> Result<Record> {
        self.delete_inner(entity, id, expected_version, origin, None).await
    }

    async fn delete_inner(
        &self,
        entity: &'static Entity,
        id: &str,
        expected_version: Option<i64>,
        origin: &str,
        inward: Option<&InwardWrite>,
    ) -> Result<Record> {
        let record = on_write_tx!(self, |tx, d| {
            let row =
                sqlx::query(&select_one_sql(entity, d, true)).bind(id.to_string()).fetch_optional(&mut *tx).await?;
            let current = match row {
                Some(row) => decode_record(entity, &row)?,
                None => return Err(StoreError::NotFound),
            };
            if current.deleted_at.is_some() {
                return Err(StoreError::NotFound);
            }
            if let Some(expected) = expected_version {
                if expected != current.version {
                    return Err(StoreError::VersionMismatch { current: current.version });
                }
            }
            let now = now_timestamp();
            let record =
                Record { version: current.version + 1, updated_at: now.clone(), deleted_at: Some(now), ..current };
            let sql = update_sql(entity, d);
            bind_record!(sqlx::query(&sql), &record).execute(&mut *tx).await?;
            append_change!(tx, d, &record, Op::Delete, origin);
            settle_inward!(tx, d, inward, &record);
            tx.commit().await?;
            record
        });
        self.notify_written(entity.name, origin);
        Ok(record)
    }

    /// Reads one record, tombstoned or not.
    pub async fn get(&self, entity: &'static Entity, id: &str) -> Result<Option<Record>> {
        on_read!(self, |pool, d| {
            let row = sqlx::query(&select_one_sql(entity, d, false)).bind(id.to_string()).fetch_optional(pool).await?;
            row.map(|r| decode_record(entity, &r)).transpose()
        })
    }

    /// What deciding an inward event needs, in one read: the object's link, the hub
    /// record it names, and the newest event time applied (or echoed) for the object
    /// in inbox rows other than `except` — the yardstick for stale events. `None`
    /// when the object is not linked.
    pub async fn linked_record(
        &self,
        entity: &'static Entity,
        system: &str,
        external_id: &str,
        except: i64,
    ) -> Result<Option<(crate::Link, Option<Record>, Option<i64>)>> {
        on_read!(self, |pool, d| {
            let sql = format!(
                "SELECT {}, l.record_id, l.external_id, l.synced_version, l.fingerprint, l.snapshot, l.updated_at, \
                 (SELECT MAX(event_created) FROM inbox WHERE system = $1 AND external_id = $3 AND id <> $4 \
                  AND outcome IN ('applied', 'echo')) \
                 FROM links l LEFT JOIN {} r ON r.id = l.record_id \
                 WHERE l.system = $1 AND l.entity = $2 AND l.external_id = $3",
                select_list_of(entity, d, "r."),
                entity.plural
            );
            let Some(row) = sqlx::query(&sql)
                .bind(system.to_string())
                .bind(entity.name.to_string())
                .bind(external_id.to_string())
                .bind(except)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let record = match row.try_get::<Option<String>, _>(0)? {
                Some(_) => Some(decode_record(entity, &row)?),
                None => None,
            };
            let n = 1 + BOOKKEEPING.len() + entity.fields.len();
            let link = crate::Link {
                entity: entity.name.to_string(),
                record_id: row.try_get(n)?,
                system: system.to_string(),
                external_id: row.try_get(n + 1)?,
                synced_version: row.try_get(n + 2)?,
                fingerprint: row.try_get(n + 3)?,
                snapshot: row.try_get(n + 4)?,
                updated_at: row.try_get(n + 5)?,
            };
            Ok(Some((link, record, row.try_get(n + 6)?)))
        })
    }

    /// Lists records in id order (ids are time-ordered; `descending` for newest
    /// first), `limit` at a time.
    pub async fn list(&self, entity: &'static Entity, q: &ListQuery) -> Result<Page> {
        let limit = q.limit.clamp(1, 1000);
        let page = on_read!(self, |pool, d| {
            let mut sql = format!("SELECT {} FROM {} WHERE TRUE", select_list(entity, d), entity.plural);
            let mut binds: Vec<String> = Vec::new();
            if let Some(after) = &q.after {
                binds.push(after.clone());
                let cmp = if q.descending { "<" } else { ">" };
                sql.push_str(&format!(" AND id {cmp} ${}", binds.len()));
            }
            if !q.include_deleted {
                sql.push_str(" AND deleted_at IS NULL");
            }
            for (field, value) in &q.filters {
                binds.push(value.clone());
                let is_email = entity.field(field).is_some_and(|f| f.ty == FieldType::Email);
                if is_email {
                    sql.push_str(&format!(" AND lower({field}) = lower(${})", binds.len()));
                } else {
                    sql.push_str(&format!(" AND {field} = ${}", binds.len()));
                }
            }
            let dir = if q.descending { " DESC" } else { "" };
            sql.push_str(&format!(" ORDER BY id{dir} LIMIT {}", limit + 1));
            let mut query = sqlx::query(&sql);
            for b in binds {
                query = query.bind(b);
            }
            let rows = query.fetch_all(pool).await?;
            let mut data = rows.iter().map(|r| decode_record(entity, r)).collect::<Result<Vec<_>>>()?;
            let has_more = data.len() > limit;
            data.truncate(limit);
            Page { data, has_more }
        });
        Ok(page)
    }

    /// Number of records of `entity` (live only).
    pub async fn count(&self, entity: &'static Entity) -> Result<i64> {
        on_read!(self, |pool, _d| {
            let sql = format!("SELECT COUNT(*) FROM {} WHERE deleted_at IS NULL", entity.plural);
            Ok(sqlx::query_scalar(&sql).fetch_one(pool).await?)
        })
    }
}

/// Reads a row laid out by `select_list` into a `Record`.
pub(crate) fn decode_record<'r, R>(entity: &'static Entity, row: &'r R) -> Result<Record>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut fields = Map::with_capacity(entity.fields.len());
    for (i, f) in entity.fields.iter().enumerate() {
        let idx = i + 1 + BOOKKEEPING.len();
        let value = match f.ty.storage() {
            Storage::Integer => row.try_get::<Option<i64>, _>(idx)?.map_or(Value::Null, Value::from),
            Storage::Json => match row.try_get::<Option<String>, _>(idx)? {
                Some(s) => serde_json::from_str(&s)
                    .map_err(|e| StoreError::Corrupt(format!("{}.{}: {e}", entity.plural, f.name)))?,
                None => Value::Null,
            },
            Storage::Text | Storage::Date => row.try_get::<Option<String>, _>(idx)?.map_or(Value::Null, Value::String),
        };
        fields.insert(f.name.to_string(), value);
    }
    Ok(Record {
        entity,
        id: row.try_get(0)?,
        version: row.try_get(1)?,
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        deleted_at: row.try_get(4)?,
        fields,
    })
}
