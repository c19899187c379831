//! Bulk work for one system: a backfill's exports enqueued as changes the
//! dispatcher routes to that system only, in the bulk lane (after live changes
//! and retries), and the progress of such work.

use syncflow_core::{Entity, Op, Record};

use crate::catalog::{append_change_quiet, change_insert_sql, decode_record, select_one_sql};
use crate::deliveries::BACKFILL_PREFIX;
use crate::{on_read, on_write, Dialect, Result, Store};

/// How far one origin's deliveries to a system are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkProgress {
    pub unfinished: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Skipped: coalesced into a newer change of the record, or discarded.
    pub skipped: i64,
}

impl Store {
    /// Appends a `backfill:<system>` change for each record of `ids` that is live,
    /// with its state read in the same transaction (so a later edit is a later
    /// change, and stale state never follows newer). One transaction for the lot.
    /// Returns how many were enqueued.
    pub async fn enqueue_backfill(&self, entity: &'static Entity, ids: &[String], system: &str) -> Result<usize> {
        let origin = format!("{BACKFILL_PREFIX}{system}");
        let n = on_write!(self, |pool, d| {
            // Reads then writes: on SQLite take the write lock first, so another
            // process's commit in between (a running hub) is waited for, not a
            // stale-snapshot error.
            let mut tx =
                if d == Dialect::Sqlite { pool.begin_with("BEGIN IMMEDIATE").await? } else { pool.begin().await? };
            let sql = select_one_sql(entity, d, true);
            let mut n = 0;
            for id in ids {
                let Some(row) = sqlx::query(&sql).bind(id.clone()).fetch_optional(&mut *tx).await? else { continue };
                let record = decode_record(entity, &row)?;
                if record.deleted_at.is_some() {
                    continue;
                }
                append_change_quiet!(tx, d, &record, Op::Upsert, origin);
                n += 1;
            }
            if d == Dialect::Postgres && n > 0 {
                sqlx::query("SELECT pg_notify('syncflow_changes', $1)").bind(entity.name).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n
        });
        if n > 0 {
            self.notify_written(entity.name, &origin);
        }
        Ok(n)
    }

    /// Deliveries to `system` of changes from `origin` (`backfill:stripe`), by state.
    pub async fn origin_progress(&self, system: &str, origin: &str) -> Result<BulkProgress> {
        on_read!(self, |pool, _d| {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT d.status, COUNT(*) FROM deliveries d JOIN changes c ON c.seq = d.change_seq \
                 WHERE d.system = $1 AND c.origin = $2 AND d.kind = 'change' GROUP BY d.status",
            )
            .bind(system.to_string())
            .bind(origin.to_string())
            .fetch_all(pool)
            .await?;
            let mut p = BulkProgress::default();
            for (status, n) in rows {
                match status.as_str() {
                    "delivered" => p.delivered += n,
                    "dead" => p.dead += n,
                    "skipped" => p.skipped += n,
                    _ => p.unfinished += n,
                }
            }
            Ok(p)
        })
    }
}
