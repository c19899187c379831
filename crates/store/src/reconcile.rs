//! Reconciliation runs and mass-delete holds as rows, and the link reads a
//! reconcile walk needs (all links of a system, page by page).
//!
//! Invariants kept here: every reconcile run is a row from its start (`running`)
//! to its end (`completed` or `failed`), so a crashed run is visible; a held
//! deletion is a row until an operator releases or discards it, and a system with
//! a held row is flagged.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use syncflow_core::sync::Link;

use crate::deliveries::now_ms;
use crate::{on_read, on_write, Result, Store, StoreError};

/// One reconcile run of one (system, entity).
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileRun {
    pub id: i64,
    pub system: String,
    pub entity: String,
    /// `cli`, `schedule` or `api`.
    pub trigger: String,
    pub repair: bool,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Counts per class (and `checked`, `in_flight`, `repaired`).
    pub counts: Value,
    pub samples: Value,
    pub api_calls: Option<i64>,
    pub error: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub status: &'static str,
    pub counts: Value,
    pub samples: Value,
    pub api_calls: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A deletion the mass-delete breaker held: `inward` (a system's deletion, before
/// the hub applies it) or `outward` (a hub deletion, before it is delivered to
/// `system`).
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub id: i64,
    pub system: String,
    pub entity: String,
    pub record_id: String,
    pub external_id: String,
    /// `inward` or `outward`.
    pub side: String,
    /// The source that deleted: the system itself (inward), or `api`, `sql`, a client (outward).
    pub origin: String,
    /// The held inbox row (inward).
    pub inbox_id: Option<i64>,
    /// The held delivery (outward).
    pub delivery_id: Option<i64>,
    /// `held`, `released` or `discarded`.
    pub status: String,
    pub reason: String,
    pub created_at: i64,
    pub settled_at: Option<i64>,
}

const RUN_COLUMNS: &str = "id, system, entity, trigger, repair, status, counts, samples, api_calls, error, \
     started_at, finished_at, duration_ms";
pub(crate) const HOLD_COLUMNS: &str = "id, system, entity, record_id, external_id, inbox_id, status, reason, \
     created_at, settled_at, side, origin, delivery_id";

fn json(text: String) -> Result<Value> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("reconcile run: {e}")))
}

macro_rules! decode_run {
    ($row:expr) => {{
        let r = $row;
        let repair: i64 = r.try_get(4)?;
        ReconcileRun {
            id: r.try_get(0)?,
            system: r.try_get(1)?,
            entity: r.try_get(2)?,
            trigger: r.try_get(3)?,
            repair: repair != 0,
            status: r.try_get(5)?,
            counts: json(r.try_get(6)?)?,
            samples: json(r.try_get(7)?)?,
            api_calls: r.try_get(8)?,
            error: r.try_get(9)?,
            started_at: r.try_get(10)?,
            finished_at: r.try_get(11)?,
            duration_ms: r.try_get(12)?,
        }
    }};
}

macro_rules! decode_hold {
    ($row:expr) => {{
        let r = $row;
        Hold {
            id: r.try_get(0)?,
            system: r.try_get(1)?,
            entity: r.try_get(2)?,
            record_id: r.try_get(3)?,
            external_id: r.try_get(4)?,
            inbox_id: r.try_get(5)?,
            status: r.try_get(6)?,
            reason: r.try_get(7)?,
            created_at: r.try_get(8)?,
            settled_at: r.try_get(9)?,
            side: r.try_get(10)?,
            origin: r.try_get(11)?,
            delivery_id: r.try_get(12)?,
        }
    }};
}

macro_rules! decode_link {
    ($row:expr) => {{
        let r = $row;
        Link {
            entity: r.try_get(0)?,
            record_id: r.try_get(1)?,
            system: r.try_get(2)?,
            external_id: r.try_get(3)?,
            synced_version: r.try_get(4)?,
            fingerprint: r.try_get(5)?,
            snapshot: r.try_get(6)?,
            updated_at: r.try_get(7)?,
        }
    }};
}

impl Store {
    /// Records the start of a run; returns its id.
    pub async fn reconcile_start(&self, system: &str, entity: &str, trigger: &str, repair: bool) -> Result<i64> {
        on_write!(self, |pool, _d| {
            Ok(sqlx::query_scalar(
                "INSERT INTO reconcile_runs (system, entity, trigger, repair, status, started_at) \
                 VALUES ($1, $2, $3, $4, 'running', $5) RETURNING id",
            )
            .bind(system.to_string())
            .bind(entity.to_string())
            .bind(trigger.to_string())
            .bind(i64::from(repair))
            .bind(now_ms())
            .fetch_one(pool)
            .await?)
        })
    }

    pub async fn reconcile_finish(&self, id: i64, end: &RunEnd) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE reconcile_runs SET status = $2, counts = $3, samples = $4, api_calls = $5, error = $6, \
                 finished_at = $7, duration_ms = $8 WHERE id = $1",
            )
            .bind(id)
            .bind(end.status.to_string())
            .bind(end.counts.to_string())
            .bind(end.samples.to_string())
            .bind(end.api_calls)
            .bind(end.error.clone())
            .bind(now_ms())
            .bind(end.duration_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Runs newest first, optionally of one system, before run id `before`.
    pub async fn reconcile_runs(
        &self,
        system: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ReconcileRun>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE ($1 IS NULL OR system = $1) AND ($2 IS NULL OR id < $2) \
                 ORDER BY id DESC LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.map(str::to_string))
            .bind(before)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decode_run!(row));
            }
            Ok(out)
        })
    }

    pub async fn reconcile_run(&self, id: i64) -> Result<Option<ReconcileRun>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM reconcile_runs WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(decode_run!(&row)),
                None => None,
            })
        })
    }

    /// Links of one system and entity after `after_record_id`, by record id.
    pub async fn links_page(
        &self,
        system: &str,
        entity: &str,
        after_record_id: &str,
        limit: usize,
    ) -> Result<Vec<Link>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT entity, record_id, system, external_id, synced_version, fingerprint, snapshot, updated_at \
                 FROM links WHERE system = $1 AND entity = $2 AND record_id > $3 ORDER BY record_id LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.to_string())
            .bind(entity.to_string())
            .bind(after_record_id.to_string())
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decode_link!(row));
            }
            Ok(out)
        })
    }

    /// How many records of `entity` are linked to `system`.
    pub async fn link_count(&self, system: &str, entity: &str) -> Result<i64> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM links WHERE system = $1 AND entity = $2")
                .bind(system.to_string())
                .bind(entity.to_string())
                .fetch_one(pool)
                .await?)
        })
    }

    /// Forgets a record's link to a system (its twin there is gone, or the link
    /// points at a record that does not exist). True when one was removed.
    pub async fn unlink(&self, system: &str, entity: &str, record_id: &str) -> Result<bool> {
        on_write!(self, |pool, _d| {
            let n = sqlx::query("DELETE FROM links WHERE system = $1 AND entity = $2 AND record_id = $3")
                .bind(system.to_string())
                .bind(entity.to_string())
                .bind(record_id.to_string())
                .execute(pool)
                .await?
                .rows_affected();
            Ok(n > 0)
        })
    }

    /// Holds a deletion: settles its inbox row `ignored` (with the reason) and
    /// records the hold, in one transaction. Returns the hold's id.
    pub async fn hold_delete(
        &self,
        system: &str,
        entity: &str,
        record_id: &str,
        external_id: &str,
        inbox_id: i64,
        reason: &str,
    ) -> Result<i64> {
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO holds (system, entity, record_id, external_id, inbox_id, status, reason, created_at, \
                 side, origin) VALUES ($1, $2, $3, $4, $5, 'held', $6, $7, 'inward', $1) \
                 ON CONFLICT (inbox_id) DO UPDATE SET reason = excluded.reason RETURNING id",
            )
            .bind(system.to_string())
            .bind(entity.to_string())
            .bind(record_id.to_string())
            .bind(external_id.to_string())
            .bind(inbox_id)
            .bind(reason.to_string())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE inbox SET outcome = 'ignored', record_id = $2, remarks = $3, lease_until = NULL, settled_at = $4 \
                 WHERE id = $1",
            )
            .bind(inbox_id)
            .bind(record_id.to_string())
            .bind(format!("held by the mass-delete breaker (hold {id}): {reason}"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Holds newest first (`status`: held, released, discarded; `None`: all).
    pub async fn holds(&self, system: Option<&str>, status: Option<&str>, limit: usize) -> Result<Vec<Hold>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE ($1 IS NULL OR system = $1) AND ($2 IS NULL OR status = $2) \
                 ORDER BY id DESC LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.map(str::to_string))
            .bind(status.map(str::to_string))
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decode_hold!(row));
            }
            Ok(out)
        })
    }

    pub async fn hold(&self, id: i64) -> Result<Option<Hold>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(decode_hold!(&row)),
                None => None,
            })
        })
    }

    /// Holds matching `cond` over $1–$3, newest first (at most 10).
    pub(crate) async fn holds_where(&self, cond: &str, a: &str, b: &str, c: &str) -> Result<Vec<Hold>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE {cond} ORDER BY id DESC LIMIT 10"))
                .bind(a.to_string())
                .bind(b.to_string())
                .bind(c.to_string())
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decode_hold!(row));
            }
            Ok(out)
        })
    }

    /// The hold of an inbox row, if the breaker held it.
    pub async fn hold_of_inbox(&self, inbox_id: i64) -> Result<Option<Hold>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE inbox_id = $1"))
                .bind(inbox_id)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(decode_hold!(&row)),
                None => None,
            })
        })
    }

    /// Systems with deletions held (flagged), with how many, on both sides.
    pub async fn held_counts(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        self.held_counts_on(None).await
    }

    /// `held_counts` of one side (`inward` or `outward`), or of both.
    pub async fn held_counts_on(&self, side: Option<&str>) -> Result<std::collections::BTreeMap<String, i64>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(
                "SELECT system, COUNT(*) FROM holds WHERE status = 'held' AND ($1 IS NULL OR side = $1) GROUP BY system",
            )
            .bind(side.map(str::to_string))
            .fetch_all(pool)
            .await?;
            let mut out = std::collections::BTreeMap::new();
            for row in &rows {
                out.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
            Ok(out)
        })
    }

    /// Releases a held deletion (inward: its inbox row goes back to `received`, so
    /// the pipeline applies it; outward: its delivery becomes pending) or discards
    /// it (inward: the hub keeps the record; outward: the system keeps it). False
    /// when the hold was not `held` any more.
    pub async fn settle_hold(&self, id: i64, release: bool) -> Result<bool> {
        if self.hold(id).await?.is_some_and(|h| h.side == "outward") {
            return self.settle_outward_hold(id, release).await;
        }
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            let status = if release { "released" } else { "discarded" };
            let inbox_id: Option<Option<i64>> = sqlx::query_scalar(
                "UPDATE holds SET status = $2, settled_at = $3 WHERE id = $1 AND status = 'held' RETURNING inbox_id",
            )
            .bind(id)
            .bind(status.to_string())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(Some(inbox_id)) = inbox_id else { return Ok(false) };
            let sql = if release {
                "UPDATE inbox SET outcome = 'received', attempts = 0, next_attempt_at = NULL, lease_until = NULL, \
                 settled_at = NULL, remarks = COALESCE(remarks, '') || ' [released]' WHERE id = $1"
            } else {
                "UPDATE inbox SET remarks = COALESCE(remarks, '') || ' [discarded: the hub keeps the record]' WHERE id = $1"
            };
            sqlx::query(sql).bind(inbox_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}
