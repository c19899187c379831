//! Syncflow's storage: the catalog and its change log (the transactional outbox) on
//! embedded SQLite or PostgreSQL, chosen by URL.
//!
//! Invariant kept here: every catalog write commits in the same transaction as its
//! change row (and, for inward events, its link and inbox outcome), and change
//! readers never skip a committed change (see `sequence`).
//!
//! Both backends share one implementation: SQL text differs only where `Dialect`
//! says so, and the `on_write!`/`on_read!` macros expand each method body once per
//! backend, so the code is written once but type-checked against each driver.

mod activity;
mod bulk;
mod catalog;
mod changes;
mod checkpoint;
pub mod conflicts;
pub mod deliveries;
mod dialect;
mod group;
pub mod history;
mod idempotency;
pub mod inbox;
mod migrate;
pub mod nodes;
mod outward_holds;
pub mod reconcile;
pub mod retention;
mod sync;
pub mod testing;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::sync::Arc;
use syncflow_core::metrics::Registry;
use syncflow_core::FieldError;
use tokio::sync::watch;

pub use activity::{MinuteActivity, RecentDeliveries};
pub use bulk::BulkProgress;
pub use catalog::{InwardOp, ListQuery, Page};
pub use changes::ChangeQuery;
pub use conflicts::{Conflict, ConflictFilter};
pub use deliveries::{
    now_ms, Claimed, Delivery, DeliveryFilter, Finish, Link, LinkUpdate, QueueStats, Route, Status as DeliveryStatus,
    BACKFILL_PREFIX, LANE_BULK, LANE_LIVE, LANE_RETRY, RECONCILE_PREFIX, RESYNC_PREFIX,
};
pub use dialect::Dialect;
pub use history::{links_json, DeliveryHistory, RecordHistory, TimelineEntry};
pub use idempotency::{KeyClaim, StoredResponse, IDEMPOTENCY_TTL_MS};
pub use inbox::{InboxEvent, InboxOutcome, InboxRef, InwardWrite, NewInboxEvent};
pub use nodes::Node;
pub use outward_holds::DeleteGuard;
pub use reconcile::{Hold, ReconcileRun, RunEnd};
pub use retention::{Pruned, Retention};
pub use sync::{
    client_writer, ChangePage, ItemConflict, ItemError, ItemOutcome, ItemStatus, LosingSide, PullPage, PulledRecord,
    SyncBatch, SyncItem, Winner,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("version mismatch: the record is at version {current}")]
    VersionMismatch { current: i64 },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// A sync batch with invalid items; nothing of the batch was applied.
    #[error("invalid sync batch")]
    InvalidBatch(Vec<ItemError>),
    /// A sync cursor past the end of the change log: it was issued by another
    /// database (or this one was restored from an older backup).
    #[error("cursor {cursor} is ahead of the change log (head {head})")]
    CursorAhead { cursor: i64, head: i64 },
    /// A sync cursor below the retention horizon: changes after it were pruned, so
    /// reading on from it could miss some; the client must sync from the start.
    #[error("cursor {cursor} is older than the retained change log (pruned up to {horizon})")]
    CursorExpired { cursor: i64, horizon: i64 },
    #[error("unsupported database url `{0}`: use a file path, sqlite:PATH or postgres://…")]
    BadUrl(String),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An inward write that records its event found the event in the inbox already
    /// (`InboxRef::New`); nothing was written.
    #[error("the event is in the inbox already")]
    DuplicateEvent,
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) enum Backend {
    /// One writer connection (SQLite allows one writer; serialising here avoids
    /// SQLITE_BUSY and makes `seq` commit-ordered) plus a pool of readers (WAL).
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
        /// Group commit on `write` for the busiest write paths (`on_write_tx!`).
        group: Arc<group::Group>,
        /// The WAL checkpointer's own connection (`checkpoint`).
        checkpointer: SqlitePool,
    },
    Postgres(PgPool),
}

/// Handle to the catalog. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    /// Bumped after every local commit that wrote changes, so waiters (long-polls,
    /// the dispatcher) wake without polling.
    pub(crate) wake: watch::Sender<u64>,
    /// The process's metrics registry; the store is the root every part shares.
    pub(crate) metrics: Arc<Registry>,
    /// True while the PostgreSQL listener is subscribed (`spawn_listener`).
    pub(crate) listening: watch::Sender<bool>,
    /// PostgreSQL: poked after each local commit that wrote changes; a task sends one
    /// `pg_notify` for however many commits gathered meanwhile (see `announce`).
    pub(crate) announce: Arc<tokio::sync::Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.announce.notify_one(); // lets the announcer see the store is gone
    }
}

/// Expands `$body` once per backend with `$pool` bound to the pool that may write.
macro_rules! on_write {
    ($store:expr, |$pool:ident, $d:ident| $body:expr) => {
        match &$store.inner.backend {
            $crate::Backend::Sqlite { write, .. } => {
                let $pool = write;
                let $d = $crate::Dialect::Sqlite;
                $body
            }
            $crate::Backend::Postgres(pg) => {
                let $pool = pg;
                let $d = $crate::Dialect::Postgres;
                $body
            }
        }
    };
}

/// Expands `$body` once per backend with `$tx` bound to an open write transaction:
/// on SQLite a member of the group commit (`group.rs`), on PostgreSQL a transaction
/// of its own (PostgreSQL already flushes concurrent commits together). The body
/// uses `&mut *$tx` as its executor and ends with `$tx.commit().await?`, which on
/// SQLite returns once the shared commit is durable.
macro_rules! on_write_tx {
    ($store:expr, |$tx:ident, $d:ident| $body:expr) => {
        match &$store.inner.backend {
            $crate::Backend::Sqlite { group, .. } => {
                #[allow(unused_mut)]
                let mut $tx = group.begin().await?;
                let $d = $crate::Dialect::Sqlite;
                $body
            }
            $crate::Backend::Postgres(pg) => {
                #[allow(unused_mut)]
                let mut $tx = pg.begin().await?;
                let $d = $crate::Dialect::Postgres;
                $body
            }
        }
    };
}

/// One write statement: on SQLite a member of the group commit, on PostgreSQL sent
/// on its own (autocommit: one round trip, not three). `$ex` is the executor,
/// usable once.
macro_rules! on_write_one {
    ($store:expr, |$ex:ident| $body:expr) => {
        match &$store.inner.backend {
            $crate::Backend::Sqlite { group, .. } => {
                let mut tx = group.begin().await?;
                let out = {
                    let $ex = &mut *tx;
                    $body
                };
                tx.commit().await?;
                out
            }
            $crate::Backend::Postgres(pg) => {
                let $ex = pg;
                $body
            }
        }
    };
}

/// Like `on_write!`, but on SQLite uses the reader pool.
macro_rules! on_read {
    ($store:expr, |$pool:ident, $d:ident| $body:expr) => {
        match &$store.inner.backend {
            $crate::Backend::Sqlite { read, .. } => {
                let $pool = read;
                let $d = $crate::Dialect::Sqlite;
                $body
            }
            $crate::Backend::Postgres(pg) => {
                let $pool = pg;
                let $d = $crate::Dialect::Postgres;
                $body
            }
        }
    };
}
pub(crate) use {on_read, on_write, on_write_one, on_write_tx};

impl Store {
    /// Opens (creating if needed) the database named by `url` and runs migrations.
    /// `postgres://…` / `postgresql://…` selects PostgreSQL; `sqlite:PATH`,
    /// `sqlite://PATH` or a bare path selects SQLite.
    pub async fn open(url: &str) -> Result<Store> {
        let metrics = Arc::new(Registry::new());
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Every connection of ours is syncflow's own writer: the plain-SQL capture
            // triggers skip its writes (we append the change rows, with the real origin).
            // Set once per session, not once per transaction.
            let opts = PgConnectOptions::from_str(url)
                .map_err(|_| StoreError::BadUrl(redact(url)))?
                .options([("syncflow.writer", "on")]);
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Backend::Postgres(pool)
        } else {
            let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
            if path.is_empty() || path.contains("://") {
                return Err(StoreError::BadUrl(redact(url)));
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // No checkpoint inside the writer's commits: `checkpoint` runs them aside.
            let writer = opts.clone().pragma("wal_autocheckpoint", "0");
            let write = SqlitePoolOptions::new().max_connections(1).connect_with(writer).await?;
            // Readers never write, but are opened read-write: a read-only connection
            // cannot set the journal mode the writer needs.
            let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts.clone()).await?;
            let checkpointer = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
            let group = group::Group::new(write.clone(), metrics.clone());
            Backend::Sqlite { write, read, group, checkpointer }
        };
        let (wake, _) = watch::channel(0);
        let listening = watch::channel(false).0;
        let announce = Arc::new(tokio::sync::Notify::new());
        let inner = Inner { backend, wake, metrics, listening, announce };
        let store = Store { inner: Arc::new(inner) };
        migrate::run(&store).await?;
        store.spawn_announcer();
        if let Backend::Sqlite { checkpointer, .. } = &store.inner.backend {
            checkpoint::spawn(Arc::downgrade(&store.inner), checkpointer.clone());
        }
        Ok(store)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Round-trips to the database (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        on_read!(self, |pool, _d| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// A receiver that changes whenever this process commits a change (and, with
    /// the PostgreSQL listener running, whenever any node or SQL writer does).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// How many receivers from `subscribe` are alive (open streams, long-polls and
    /// other waiters), for status output and for tests that must act only once a
    /// waiter is waiting.
    pub fn waiters(&self) -> usize {
        self.inner.wake.receiver_count()
    }

    pub fn metrics(&self) -> Arc<Registry> {
        self.inner.metrics.clone()
    }

    /// PostgreSQL: forwards `pg_notify('syncflow_changes')` — sent by every node's
    /// writes, the capture triggers and the sequencer — to `subscribe()`rs, so this
    /// node wakes for other nodes' work. Notifications only wake; the tables stay
    /// the source of truth, and waiters also poll. A no-op on SQLite.
    pub fn spawn_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let Backend::Postgres(pool) = &self.inner.backend else { return None };
        let pool = pool.clone();
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    l.listen("syncflow_changes").await?;
                    store.inner.listening.send_replace(true);
                    loop {
                        l.recv().await?;
                        store.notify_deliveries();
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                if let Err(e) = listener.await {
                    store.inner.listening.send_replace(false);
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    /// PostgreSQL: tells other nodes (and their streams) that this one committed
    /// changes. Writers do not notify inside their own transactions: PostgreSQL
    /// serialises every committing transaction that notified on one cluster-wide
    /// lock held through its WAL flush, which put all writers' commits in single
    /// file. Here commits that land while a notification is on its way share the
    /// next one, so under load it is a few notifications a second, not one per
    /// write. A no-op on SQLite (one process).
    fn spawn_announcer(&self) {
        if !matches!(self.inner.backend, Backend::Postgres(_)) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let poke = self.inner.announce.clone();
        tokio::spawn(async move {
            loop {
                poke.notified().await;
                let Some(inner) = weak.upgrade() else { return };
                let Backend::Postgres(pool) = &inner.backend else { return };
                if pool.is_closed() {
                    return;
                }
                let sent = sqlx::query("SELECT pg_notify('syncflow_changes', 'written')").execute(pool).await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not announce a commit to other nodes");
                }
            }
        });
    }

    /// Resolves once the listener started by `spawn_listener` is subscribed, so other
    /// nodes' notifications from then on reach this one (tests wait for it).
    pub async fn listening(&self) {
        let mut rx = self.inner.listening.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Wakes delivery workers (after a replay, retry or resume).
    pub(crate) fn notify_deliveries(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Called after a commit that appended a change: counts it and wakes waiters.
    pub(crate) fn notify_written(&self, entity: &str, origin: &str) {
        self.inner.metrics.inc("syncflow_changes_written_total", &[("entity", entity), ("origin", origin)], 1.0);
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        self.inner.announce.notify_one();
    }

    /// Closes every connection, waiting for checked-out ones to be returned. On
    /// SQLite this checkpoints the WAL so the file is self-contained afterwards.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Sqlite { write, read, checkpointer, .. } => {
                checkpointer.close().await;
                read.close().await;
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(write).await;
                write.close().await;
            }
            Backend::Postgres(pg) => pg.close().await,
        }
    }
}

/// A URL with any password replaced, safe for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_password() {
        assert_eq!(super::redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("./syncflow.db"), "./syncflow.db");
    }
}
