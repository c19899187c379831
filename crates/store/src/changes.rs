//! Reading the change log in order, without ever skipping a committed change.
//!
//! SQLite: one writer connection, so `seq` (taken inside the write transaction) is
//! already commit order.
//! PostgreSQL: rows arrive with `seq` NULL; `sequence()` stamps them in batches
//! under an advisory lock, each batch numbered after everything already visible and
//! committed before the next batch starts. Every reader sequences before reading,
//! so a committed change is readable at once, and a reader that has seen seq N has
//! seen every seq below N.

use serde_json::Value;
use sqlx::Row;
use syncflow_core::{Change, Op};

use crate::{on_read, on_write, Backend, Dialect, Result, Store, StoreError};

/// Arbitrary constant naming syncflow's sequencer lock.
const SEQUENCER_LOCK: i64 = 0x5359_4e43_0002;

/// Most rows stamped by one sequencer pass; a backlog takes several passes.
const SEQUENCE_BATCH: i64 = 10_000;

impl Store {
    /// PostgreSQL: assigns `seq` to committed change rows that have none yet, in
    /// insertion order. Returns how many were stamped. A no-op on SQLite.
    pub async fn sequence(&self) -> Result<u64> {
        let Backend::Postgres(pool) = &self.inner.backend else {
            return Ok(0);
        };
        // Cheap check first (partial index), so idle readers do not queue on the lock.
        let pending: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM changes WHERE seq IS NULL)").fetch_one(pool).await?;
        if !pending {
            return Ok(0);
        }
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SEQUENCER_LOCK).execute(&mut *tx).await?;
        // Rows of one record are inserted in version order (the record's row lock
        // serialises its writers), so numbering by `id` keeps per-record order.
        let stamped = sqlx::query(
            "WITH base AS (SELECT COALESCE(MAX(seq), 0) AS top FROM changes),
                  ready AS (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS n
                            FROM (SELECT id FROM changes WHERE seq IS NULL ORDER BY id LIMIT $1) pending)
             UPDATE changes c SET seq = base.top + ready.n
             FROM ready, base WHERE c.id = ready.id",
        )
        .bind(SEQUENCE_BATCH)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stamped > 0 {
            sqlx::query("SELECT pg_notify('syncflow_changes', 'sequenced')").execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(stamped)
    }

    /// Up to `limit` changes with `seq > after`, in `seq` order.
    pub async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        self.changes_where("seq > $1", after, limit).await
    }

    /// Changes of one record, oldest first.
    pub async fn changes_of_record(&self, entity: &str, record_id: &str) -> Result<Vec<Change>> {
        self.sequence().await?;
        on_read!(self, |pool, d| {
            let sql = format!(
                "SELECT {} FROM changes WHERE entity = $1 AND record_id = $2 AND seq IS NOT NULL ORDER BY seq",
                change_columns(d)
            );
            let rows = sqlx::query(&sql).bind(entity.to_string()).bind(record_id.to_string()).fetch_all(pool).await?;
            rows.iter().map(decode_change).collect()
        })
    }

    /// One change by its sequence number.
    pub async fn change(&self, seq: i64) -> Result<Option<Change>> {
        Ok(self.changes_where("seq = $1", seq, 1).await?.pop())
    }

    /// The highest sequence number handed out so far (0 when the log is empty).
    pub async fn head_seq(&self) -> Result<i64> {
        self.sequence().await?;
        on_read!(self, |pool, _d| {
            let top: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes").fetch_one(pool).await?;
            Ok(top.unwrap_or(0))
        })
    }

    async fn changes_where(&self, condition: &str, arg: i64, limit: usize) -> Result<Vec<Change>> {
        self.sequence().await?;
        let limit = limit.clamp(1, 10_000);
        on_read!(self, |pool, d| {
            let sql = format!("SELECT {} FROM changes WHERE {condition} ORDER BY seq LIMIT {limit}", change_columns(d));
            let rows = sqlx::query(&sql).bind(arg).fetch_all(pool).await?;
            rows.iter().map(decode_change).collect()
        })
    }

    /// Unused by the API; lets tests look at raw change rows on either backend.
    #[doc(hidden)]
    pub async fn unsequenced_count(&self) -> Result<i64> {
        on_write!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE seq IS NULL").fetch_one(pool).await?)
        })
    }
}

pub(crate) fn change_columns(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "seq, entity, record_id, op, version, origin, snapshot, created_at",
        Dialect::Postgres => "seq, entity, record_id, op, version, origin, snapshot::text, syncflow_ts(created_at)",
    }
}

pub(crate) fn decode_change<'r, R>(row: &'r R) -> Result<Change>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let op: String = row.try_get(3)?;
    let snapshot: String = row.try_get(6)?;
    Ok(Change {
        seq: row.try_get(0)?,
        entity: row.try_get(1)?,
        record_id: row.try_get(2)?,
        op: Op::parse(&op).ok_or_else(|| StoreError::Corrupt(format!("unknown op `{op}`")))?,
        version: row.try_get(4)?,
        origin: row.try_get(5)?,
        snapshot: serde_json::from_str::<Value>(&snapshot)
            .map_err(|e| StoreError::Corrupt(format!("change snapshot: {e}")))?,
        created_at: row.try_get(7)?,
    })
}

/// A filtered read of the change log in either direction (`Store::change_list`).
#[derive(Debug, Clone, Default)]
pub struct ChangeQuery {
    /// Continue past this seq in the listing direction: `seq > after` ascending,
    /// `seq < after` descending. `None` starts at the beginning (or the head).
    pub after: Option<i64>,
    pub limit: usize,
    pub descending: bool,
    /// Only this record's changes.
    pub record_id: Option<String>,
    /// Only these entities (`None`: all).
    pub entities: Option<Vec<&'static str>>,
}

impl Store {
    /// Up to `limit` changes matching `q`, and whether more follow.
    pub async fn change_list(&self, q: &ChangeQuery) -> Result<(Vec<Change>, bool)> {
        self.sequence().await?;
        let limit = q.limit.clamp(1, 10_000);
        if q.entities.as_ref().is_some_and(Vec::is_empty) {
            return Ok((Vec::new(), false));
        }
        let mut rows = on_read!(self, |pool, d| {
            let mut sql = format!("SELECT {} FROM changes WHERE seq IS NOT NULL", change_columns(d));
            let mut texts: Vec<String> = Vec::new();
            if let Some(id) = &q.record_id {
                texts.push(id.clone());
                sql.push_str(&format!(" AND record_id = ${}", texts.len()));
                // Ids carry their entity's prefix: naming it lets the (entity, record_id) index serve.
                if let Some(e) = syncflow_core::ENTITIES.iter().find(|e| id.starts_with(&format!("{}_", e.id_prefix))) {
                    texts.push(e.name.to_string());
                    sql.push_str(&format!(" AND entity = ${}", texts.len()));
                }
            }
            if let Some(entities) = &q.entities {
                let list: Vec<String> = entities
                    .iter()
                    .map(|e| {
                        texts.push((*e).to_string());
                        format!("${}", texts.len())
                    })
                    .collect();
                sql.push_str(&format!(" AND entity IN ({})", list.join(", ")));
            }
            let (cmp, dir) = if q.descending { ("<", "DESC") } else { (">", "") };
            if q.after.is_some() {
                sql.push_str(&format!(" AND seq {cmp} ${}", texts.len() + 1));
            }
            sql.push_str(&format!(" ORDER BY seq {dir} LIMIT {}", limit + 1));
            let mut query = sqlx::query(&sql);
            for t in &texts {
                query = query.bind(t.clone());
            }
            if let Some(a) = q.after {
                query = query.bind(a);
            }
            query.fetch_all(pool).await?.iter().map(decode_change).collect::<Result<Vec<_>>>()?
        });
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// Changes past the dispatch cursor that some route would turn into a
    /// delivery: 0 when everything is dispatched, and also when no system
    /// subscribes to what is waiting (or no system is configured).
    pub async fn dispatch_lag(&self, routes: &[crate::Route]) -> Result<i64> {
        if routes.is_empty() {
            return Ok(0);
        }
        let cursor = self.dispatch_cursor().await?;
        self.sequence().await?;
        let groups: Vec<(String, String, i64)> = on_read!(self, |pool, _d| {
            sqlx::query_as("SELECT entity, origin, COUNT(*) FROM changes WHERE seq > $1 GROUP BY entity, origin")
                .bind(cursor)
                .fetch_all(pool)
                .await?
        });
        Ok(groups
            .iter()
            .filter(|(entity, origin, _)| routes.iter().any(|r| &r.system != origin && r.entities.contains(entity)))
            .map(|(_, _, n)| n)
            .sum())
    }
}
