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
