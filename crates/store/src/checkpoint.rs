//! SQLite checkpoints off the writer's path.
//!
//! By default SQLite copies the WAL back into the database inside the commit that
//! takes the WAL past 1,000 pages: that commit, and every write queued behind the
//! one writer connection, waits for the copy and its fsync. Under a bulk drain
//! that is a stall of tens of milliseconds every few seconds, which is what the
//! tail of live changes' latency was made of (BENCHMARKS.md, "Live changes under a
//! backfill"). So the writer's automatic checkpoint is off, and this task
//! checkpoints `PASSIVE` from a connection of its own: it copies what readers no
//! longer need without waiting for, or blocking, readers or the writer.
//!
//! A passive checkpoint racing steady writes may never catch the WAL's end, and
//! the WAL is only rewound from its start once it has: past `REWIND_PAGES` the
//! checkpoint runs once on the writer connection (`RESTART`), between writes —
//! the old stall, but every ~40 MB of writes instead of every 4 MB.

use std::sync::Weak;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;

use crate::{Backend, Inner};

/// How often the WAL is checkpointed.
const EVERY: Duration = Duration::from_millis(500);

/// WAL pages (4 KiB) left after a passive checkpoint that make the next one
/// rewind the WAL from the writer connection.
const REWIND_PAGES: i64 = 10_000;

/// Runs until the store is closed or dropped.
pub(crate) fn spawn(store: Weak<Inner>, own: SqlitePool) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(inner) = store.upgrade() else { break };
            let Backend::Sqlite { write, .. } = &inner.backend else { break };
            if write.is_closed() || own.is_closed() {
                break;
            }
            // (busy, pages in the WAL, pages copied back)
            let passive: Result<(i64, i64, i64), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&own).await;
            match passive {
                Ok((_, pages, copied)) if pages > REWIND_PAGES => {
                    tracing::debug!(pages, copied, "WAL past its bound; checkpointing on the writer");
                    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(write).await {
                        tracing::warn!(error = %e, "WAL checkpoint on the writer failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed; will retry"),
            }
        }
        own.close().await;
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{Backend, Store};

    /// The writer's commits never checkpoint, so something else must: pages written
    /// reach the database file while the store runs, not only at `close`.
    #[tokio::test]
    async fn the_wal_reaches_the_database_file_while_the_store_runs() {
        let file = std::env::temp_dir().join(format!("syncflow-ckpt-{}.db", syncflow_core::id::new_id("t")));
        let store = Store::open(&format!("sqlite:{}", file.display())).await.unwrap();
        let Backend::Sqlite { write, .. } = &store.inner.backend else { unreachable!() };
        let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let before = size();
        sqlx::query("CREATE TABLE filler (x TEXT)").execute(write).await.unwrap();
        // ~4 MB in one commit: four times the 1,000 pages SQLite would checkpoint at.
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) \
             INSERT INTO filler SELECT randomblob(1000) FROM n",
        )
        .execute(write)
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while size() < before + 3_000_000 {
            assert!(Instant::now() < deadline, "database file still {} bytes (was {before})", size());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
}
