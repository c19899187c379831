//! Same-field conflicts as rows (written by `apply_inward` with the apply that met
//! them): listed for operators, resolved by them when the policy is `manual`.
//! Invariant kept here: a conflict is never silently dropped — every one is a row.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::deliveries::now_ms;
use crate::{on_read, on_write, Result, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub id: i64,
    pub system: String,
    pub entity: String,
    pub record_id: String,
    pub field: String,
    pub hub_value: Value,
    pub external_value: Value,
    pub policy: String,
    /// `hub` or `external`; `None` while open.
    pub winner: Option<String>,
    /// `open` or `resolved`.
    pub status: String,
    /// How an operator resolved it (`hub`, `external`, `value`), if one did.
    pub resolution: Option<String>,
    pub inbox_id: Option<i64>,
    pub created_at: i64,
    pub resolved_at: Option<i64>,
}

/// Filters for `Store::conflicts` (all optional), newest first, paged by id.
#[derive(Debug, Clone, Default)]
pub struct ConflictFilter {
    pub system: Option<String>,
    pub record_id: Option<String>,
    /// `open` or `resolved`.
    pub status: Option<String>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

const COLUMNS: &str = "id, system, entity, record_id, field, hub_value, external_value, policy, winner, status, \
     resolution, inbox_id, created_at, resolved_at";

fn decode<'r, R>(row: &'r R) -> Result<Conflict>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let json = |i: usize| -> Result<Value> {
        let text: String = row.try_get(i)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("conflict value: {e}")))
    };
    Ok(Conflict {
        id: row.try_get(0)?,
        system: row.try_get(1)?,
        entity: row.try_get(2)?,
        record_id: row.try_get(3)?,
        field: row.try_get(4)?,
        hub_value: json(5)?,
        external_value: json(6)?,
        policy: row.try_get(7)?,
        winner: row.try_get(8)?,
        status: row.try_get(9)?,
        resolution: row.try_get(10)?,
        inbox_id: row.try_get(11)?,
        created_at: row.try_get(12)?,
        resolved_at: row.try_get(13)?,
    })
}

impl Store {
    pub async fn conflicts(&self, f: &ConflictFilter) -> Result<Vec<Conflict>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM conflicts WHERE ($1 IS NULL OR system = $1) AND ($2 IS NULL OR record_id = $2) \
                 AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT {}",
                f.limit.clamp(1, 1000)
            ))
            .bind(f.system.clone())
            .bind(f.record_id.clone())
            .bind(f.status.clone())
            .bind(f.before_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode).collect()
        })
    }

    pub async fn conflict(&self, id: i64) -> Result<Option<Conflict>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM conflicts WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(decode).transpose()
        })
    }

    /// Marks an open conflict resolved (`winner`: `hub` or `external`; `resolution`
    /// says how). False when it was not open (resolved meanwhile).
    pub async fn close_conflict(&self, id: i64, winner: &str, resolution: &str) -> Result<bool> {
        on_write!(self, |pool, _d| {
            let n = sqlx::query(
                "UPDATE conflicts SET status = 'resolved', winner = $2, resolution = $3, resolved_at = $4 \
                 WHERE id = $1 AND status = 'open'",
            )
            .bind(id)
            .bind(winner.to_string())
            .bind(resolution.to_string())
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// Fields of a record that have an open conflict with `system` (held at the
    /// hub's value until resolved).
    pub async fn open_conflict_fields(&self, system: &str, entity: &str, record_id: &str) -> Result<Vec<String>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar(
                "SELECT field FROM conflicts WHERE system = $1 AND entity = $2 AND record_id = $3 AND status = 'open'",
            )
            .bind(system.to_string())
            .bind(entity.to_string())
            .bind(record_id.to_string())
            .fetch_all(pool)
            .await?)
        })
    }
}
