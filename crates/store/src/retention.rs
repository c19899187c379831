//! Retention: what the hub no longer needs is pruned after an age, in short
//! transactions (at most `batch` rows examined each), so a pass never holds the
//! writer (SQLite's one connection) for long.
//!
//! Invariants kept here (ARCHITECTURE.md, "Retention"):
//! * unsettled inbox rows, unfinished deliveries and changes the dispatcher has not
//!   passed are never touched;
//! * per external object the newest applied/echo inbox row stays (payload emptied):
//!   it is `inbox_last_applied`'s stale yardstick, so a re-delivered old event
//!   still settles `stale` after the rows it would have met are gone;
//! * a held deletion's inbox row stays whole (a release applies it);
//! * a finished delivery stays until every status publisher named has passed it,
//!   and while an unfinished callback reports on it;
//! * a change stays while a delivery that may still push it (unfinished, or dead and
//!   so replayable) names it, and per record the newest change stays;
//! * the highest pruned change seq is the horizon (`retention:changes` cursor),
//!   moved in the transaction that deletes: a client cursor below it is refused
//!   (`StoreError::CursorExpired`) instead of silently reading a shorter log.

use std::time::Duration;

use serde::Serialize;

use crate::dialect::Col;
use crate::{now_ms, on_read, on_write, Dialect, Result, Store, StoreError};

/// The `cursors` row holding the highest change seq retention has deleted.
pub const HORIZON_CURSOR: &str = "retention:changes";

/// Rows looked at per transaction.
pub const DEFAULT_BATCH: usize = 500;

/// One pass's settings.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Rows settled, finished or written before this time (epoch ms) are old enough.
    pub cutoff_ms: i64,
    /// Most rows one transaction looks at.
    pub batch: usize,
    /// Cursors (`status:<system>`) of the status publishers that run: a finished
    /// delivery is kept until each has published past it.
    pub status_cursors: Vec<String>,
    /// Pause between transactions, so queued writers get the connection.
    pub pause: Duration,
}

impl Retention {
    /// Everything older than `age` from now.
    pub fn older_than(age: Duration) -> Retention {
        Retention {
            cutoff_ms: now_ms() - age.as_millis() as i64,
            batch: DEFAULT_BATCH,
            status_cursors: Vec::new(),
            pause: Duration::ZERO,
        }
    }
}

/// Rows one pass removed (or emptied), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Settled inbox rows deleted.
    pub inbox: u64,
    /// Kept inbox rows (yardsticks) whose raw payload was emptied.
    pub inbox_payloads: u64,
    pub deliveries: u64,
    pub delivery_attempts: u64,
    pub changes: u64,
    /// Write transactions the pass took.
    pub transactions: u64,
    /// The longest of them (ms): how long the pass held the writer at once.
    pub longest_write_ms: u64,
}

impl Pruned {
    /// Rows deleted or emptied, all tables.
    pub fn total(&self) -> u64 {
        self.inbox + self.inbox_payloads + self.deliveries + self.delivery_attempts + self.changes
    }

    fn wrote(&mut self, started: std::time::Instant) {
        self.transactions += 1;
        self.longest_write_ms = self.longest_write_ms.max(started.elapsed().as_millis() as u64);
    }

    /// (table label, count) for metrics and output.
    pub fn tables(&self) -> [(&'static str, u64); 5] {
        [
            ("inbox", self.inbox),
            ("inbox_payload", self.inbox_payloads),
            ("deliveries", self.deliveries),
            ("delivery_attempts", self.delivery_attempts),
            ("changes", self.changes),
        ]
    }
}

/// A settled inbox row older than the cutoff ($1) that no open hold needs.
const INBOX_OLD: &str = "inbox.outcome <> 'received' AND inbox.settled_at < $1 \
     AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.inbox_id = inbox.id AND h.status = 'held')";

/// The row `inbox_last_applied` answers with for its object: the newest applied or
/// echo event (ties: the highest id).
const INBOX_YARDSTICK: &str = "(inbox.outcome IN ('applied', 'echo') AND inbox.external_id IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM inbox n WHERE n.system = inbox.system AND n.external_id = inbox.external_id \
       AND n.outcome IN ('applied', 'echo') AND (n.event_created > inbox.event_created \
         OR (n.event_created = inbox.event_created AND n.id > inbox.id))))";

/// A finished delivery before the bound ($1), up to the window's last (finished_at,
/// id) ($2, $3), that no unfinished callback reports on.
const DELIVERY_OLD: &str = "finished_at IS NOT NULL AND finished_at < $1 \
     AND (finished_at < $2 OR (finished_at = $2 AND id <= $3)) \
     AND NOT EXISTS (SELECT 1 FROM deliveries c WHERE c.change_seq = deliveries.change_seq \
       AND c.kind = 'callback' AND c.subject_id = deliveries.id AND c.status IN ('pending', 'retrying', 'in_flight'))";

impl Store {
    /// Runs one retention pass: inbox, then deliveries and their attempts, then
    /// the change log. Counts pruned rows in `syncflow_retention_pruned_total`.
    pub async fn prune(&self, r: &Retention) -> Result<Pruned> {
        let mut out = Pruned::default();
        self.prune_inbox(r, &mut out).await?;
        self.prune_deliveries(r, &mut out).await?;
        self.prune_changes(r, &mut out).await?;
        Ok(out)
    }

    /// The highest change seq retention has deleted (0: none). Client cursors
    /// below it are refused.
    pub async fn change_horizon(&self) -> Result<i64> {
        Ok(self.cursor(HORIZON_CURSOR).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The head of the change log and the retention horizon, in one read: what a
    /// reader's cursor is checked against (`check_cursor`).
    pub(crate) async fn cursor_bounds(&self) -> Result<(i64, i64)> {
        self.sequence().await?;
        let (head, horizon): (Option<i64>, Option<String>) = on_read!(self, |pool, _d| {
            sqlx::query_as(
                "SELECT (SELECT MAX(seq) FROM changes), (SELECT value FROM cursors WHERE name = 'retention:changes')",
            )
            .fetch_one(pool)
            .await?
        });
        Ok((head.unwrap_or(0), horizon.and_then(|v| v.parse().ok()).unwrap_or(0)))
    }

    /// Where a log reader starts: `after` once checked against the head and the
    /// horizon (`CursorAhead`, `CursorExpired`), or the head when it names none.
    pub async fn reader_start(&self, after: Option<i64>) -> Result<i64> {
        let (head, horizon) = self.cursor_bounds().await?;
        match after {
            Some(after) => check_cursor(after, head, horizon).map(|()| after),
            None => Ok(head),
        }
    }

    /// Names of the cursors starting with `prefix` (`status:` for every status
    /// publisher that ever ran).
    pub async fn cursor_names(&self, prefix: &str) -> Result<Vec<String>> {
        let names: Vec<String> = on_read!(self, |pool, _d| {
            sqlx::query_scalar("SELECT name FROM cursors ORDER BY name").fetch_all(pool).await?
        });
        Ok(names.into_iter().filter(|n| n.starts_with(prefix)).collect())
    }

    /// Inbox: by id, in windows of `batch` rows, up to the first window holding a
    /// row received after the cutoff (later rows are younger still).
    async fn prune_inbox(&self, r: &Retention, out: &mut Pruned) -> Result<()> {
        let mut after = 0i64;
        loop {
            // The window: its last id, and whether it reaches young rows.
            let (end, young): (Option<i64>, Option<i64>) = on_read!(self, |pool, _d| {
                sqlx::query_as(
                    "SELECT MAX(id), SUM(CASE WHEN received_at < $2 THEN 0 ELSE 1 END) FROM \
                     (SELECT id, received_at FROM inbox WHERE id > $1 ORDER BY id LIMIT $3) w",
                )
                .bind(after)
                .bind(r.cutoff_ms)
                .bind(r.batch as i64)
                .fetch_one(pool)
                .await?
            });
            let Some(end) = end else { return Ok(()) };
            // Look first on a reader: windows of kept rows cost no write transaction.
            let todo: i64 = on_read!(self, |pool, _d| {
                sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM inbox WHERE id > $2 AND id <= $3 AND {INBOX_OLD} \
                     AND (payload <> '' OR NOT {INBOX_YARDSTICK})"
                ))
                .bind(r.cutoff_ms)
                .bind(after)
                .bind(end)
                .fetch_one(pool)
                .await?
            });
            if todo > 0 {
                let write = std::time::Instant::now();
                let (deleted, emptied) = on_write!(self, |pool, _d| {
                    let mut tx = pool.begin().await?;
                    let deleted = sqlx::query(&format!(
                        "DELETE FROM inbox WHERE id > $2 AND id <= $3 AND {INBOX_OLD} AND NOT {INBOX_YARDSTICK}"
                    ))
                    .bind(r.cutoff_ms)
                    .bind(after)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let emptied = sqlx::query(&format!(
                        "UPDATE inbox SET payload = '' WHERE id > $2 AND id <= $3 AND {INBOX_OLD} AND payload <> ''"
                    ))
                    .bind(r.cutoff_ms)
                    .bind(after)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    (deleted, emptied)
                });
                out.inbox += deleted;
                out.inbox_payloads += emptied;
                out.wrote(write);
                self.count_pruned(&[("inbox", deleted), ("inbox_payload", emptied)]);
                self.between_batches(r).await;
            }
            if young.unwrap_or(0) > 0 {
                return Ok(());
            }
            after = end;
        }
    }

    /// Deliveries: oldest `finished_at` first (index `deliveries_finished`), with
    /// their attempt rows, below the cutoff and every status publisher's position.
    async fn prune_deliveries(&self, r: &Retention, out: &mut Pruned) -> Result<()> {
        let mut bound = r.cutoff_ms;
        for name in &r.status_cursors {
            if let Some(text) = self.cursor(name).await? {
                // `finished_at:id`; everything finished strictly before `finished_at` is published.
                let at = text.split_once(':').and_then(|(at, _)| at.parse::<i64>().ok());
                let at = at.ok_or_else(|| StoreError::Corrupt(format!("cursor {name} is `{text}`")))?;
                bound = bound.min(at);
            }
            // No cursor yet: its publisher starts at "now" and never reads older rows.
        }
        loop {
            let last: Option<(i64, i64)> = on_read!(self, |pool, _d| {
                sqlx::query_as(
                    "SELECT finished_at, id FROM (SELECT finished_at, id FROM deliveries \
                     WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at, id LIMIT $2) w \
                     ORDER BY finished_at DESC, id DESC LIMIT 1",
                )
                .bind(bound)
                .bind(r.batch as i64)
                .fetch_optional(pool)
                .await?
            });
            let Some((at, id)) = last else { return Ok(()) };
            let write = std::time::Instant::now();
            let (deliveries, attempts) = on_write!(self, |pool, d| {
                let mut tx = pool.begin().await?;
                if d == Dialect::Postgres {
                    // A replay waiting on these rows then finds them gone, and a
                    // replayed row (finished_at cleared) drops out before its attempts go.
                    sqlx::query(&format!("SELECT 1 FROM deliveries WHERE {DELIVERY_OLD} ORDER BY id FOR UPDATE"))
                        .bind(bound)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                let attempts = sqlx::query(&format!(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE {DELIVERY_OLD})"
                ))
                .bind(bound)
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let deliveries = sqlx::query(&format!("DELETE FROM deliveries WHERE {DELIVERY_OLD}"))
                    .bind(bound)
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                (deliveries, attempts)
            });
            out.deliveries += deliveries;
            out.delivery_attempts += attempts;
            out.wrote(write);
            self.count_pruned(&[("deliveries", deliveries), ("delivery_attempts", attempts)]);
            self.between_batches(r).await;
            if deliveries == 0 {
                // Only rows an unfinished callback still needs are left before the
                // bound; they go in a later pass.
                return Ok(());
            }
        }
    }

    /// Change log: by seq up to the dispatch cursor, in windows of `batch` rows, up
    /// to the first window holding a change written after the cutoff.
    async fn prune_changes(&self, r: &Retention, out: &mut Pruned) -> Result<()> {
        self.sequence().await?;
        let dispatched = self.dispatch_cursor().await?;
        let cutoff = timestamp(r.cutoff_ms);
        let mut after = 0i64;
        loop {
            let (end, young): (Option<i64>, Option<i64>) = on_read!(self, |pool, d| {
                sqlx::query_as(&format!(
                    "SELECT MAX(seq), SUM(CASE WHEN created_at < {} THEN 0 ELSE 1 END) FROM \
                     (SELECT seq, created_at FROM changes WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $4) w",
                    d.param(3, Col::Timestamp)
                ))
                .bind(after)
                .bind(dispatched)
                .bind(&cutoff)
                .bind(r.batch as i64)
                .fetch_one(pool)
                .await?
            });
            let Some(end) = end else { return Ok(()) };
            let todo: i64 = on_read!(self, |pool, d| {
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM changes WHERE {}", prunable_change(d)))
                    .bind(after)
                    .bind(end)
                    .bind(&cutoff)
                    .fetch_one(pool)
                    .await?
            });
            if todo > 0 {
                let write = std::time::Instant::now();
                let gone = on_write!(self, |pool, d| {
                    let mut tx = pool.begin().await?;
                    let gone: Vec<i64> =
                        sqlx::query_scalar(&format!("DELETE FROM changes WHERE {} RETURNING seq", prunable_change(d)))
                            .bind(after)
                            .bind(end)
                            .bind(&cutoff)
                            .fetch_all(&mut *tx)
                            .await?;
                    if let Some(top) = gone.iter().max() {
                        // The horizon only moves up (two nodes' passes may overlap).
                        sqlx::query(
                            "INSERT INTO cursors (name, value, updated_at) VALUES ($1, $2, $3) \
                             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
                             WHERE CAST(cursors.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
                        )
                        .bind(HORIZON_CURSOR)
                        .bind(top.to_string())
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    gone.len() as u64
                });
                out.changes += gone;
                out.wrote(write);
                self.count_pruned(&[("changes", gone)]);
                self.between_batches(r).await;
            }
            if young.unwrap_or(0) > 0 {
                return Ok(());
            }
            after = end;
        }
    }

    fn count_pruned(&self, counts: &[(&str, u64)]) {
        for (table, n) in counts.iter().filter(|(_, n)| *n > 0) {
            self.inner.metrics.inc("syncflow_retention_pruned_total", &[("table", table)], *n as f64);
        }
    }

    async fn between_batches(&self, r: &Retention) {
        if r.pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(r.pause).await;
        }
    }
}

/// A change in the window ($1, $2] written before the cutoff ($3) that a newer
/// change of its record supersedes and no delivery may still push (unfinished, or
/// dead and so replayable).
fn prunable_change(d: Dialect) -> String {
    // Per-record order: `seq` on SQLite; insertion `id` on PostgreSQL, where a newer
    // change may not be sequenced yet (and `changes_record` is by id).
    let order = match d {
        Dialect::Sqlite => "seq",
        Dialect::Postgres => "id",
    };
    format!(
        "seq > $1 AND seq <= $2 AND created_at < {cutoff} \
         AND EXISTS (SELECT 1 FROM changes n WHERE n.entity = changes.entity AND n.record_id = changes.record_id \
           AND n.{order} > changes.{order}) \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.change_seq = changes.seq \
           AND d.status IN ('pending', 'retrying', 'in_flight', 'dead'))",
        cutoff = d.param(3, Col::Timestamp)
    )
}

/// Epoch ms as the change log's `created_at` text (RFC 3339, UTC, µs), which
/// compares in time order on SQLite and casts to `timestamptz` on PostgreSQL.
fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Checks a reader's cursor (`after`) against the log's head and the retention
/// horizon. 0 (from the start) is always allowed: it reads what is kept, which
/// holds every record's newest change.
pub(crate) fn check_cursor(after: i64, head: i64, horizon: i64) -> Result<()> {
    if after > head {
        return Err(StoreError::CursorAhead { cursor: after, head });
    }
    if after > 0 && after < horizon {
        return Err(StoreError::CursorExpired { cursor: after, horizon });
    }
    Ok(())
}
