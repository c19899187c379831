//! Group commit on SQLite's single writer connection.
//!
//! Every SQLite write goes through one connection, one transaction at a time, and a
//! commit writes each page it touched to the WAL: a webhook's apply touched a dozen
//! pages (record, change, link and inbox tables and their indexes), most of them the
//! same right-hand leaves the next request touches again. Here concurrent writers
//! share one transaction: each runs its own statements inside a savepoint (so one
//! bad request rolls back alone), and the last writer in line commits for everyone.
//! Each caller's `commit` returns only after the commit that holds its writes, so a
//! request is still answered only once its write is durable.
//!
//! No task of its own, and no closures shipped to one: a caller runs its own code on
//! the shared connection while it holds the slot. A batch always ends: the writer
//! that finds nobody queued behind it commits, and every member that is waiting for
//! the outcome takes the slot itself and commits if its batch is still open (so a
//! queued writer that gave up cannot strand a batch).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use crate::{Result, StoreError};

/// Writers per shared transaction at most, so one commit never waits for an
/// unbounded queue (and one failed commit fails a bounded number of requests).
const MAX_BATCH: usize = 256;

type Outcome = Option<std::result::Result<(), String>>;

pub(crate) struct Group {
    pool: SqlitePool,
    slot: Arc<Mutex<Slot>>,
    /// Writers queued for the slot: while any are, a finished writer leaves the
    /// transaction open for them instead of committing.
    queued: AtomicUsize,
    metrics: Arc<syncflow_core::metrics::Registry>,
}

#[derive(Default)]
struct Slot {
    tx: Option<Transaction<'static, Sqlite>>,
    /// The open batch's outcome, shared with its members.
    batch: Option<Arc<watch::Sender<Outcome>>>,
    members: usize,
    /// A writer dropped without committing: its savepoint is rolled back by the
    /// next holder of the slot, before anything else runs.
    rollback: bool,
}

impl Group {
    pub(crate) fn new(pool: SqlitePool, metrics: Arc<syncflow_core::metrics::Registry>) -> Arc<Group> {
        Arc::new(Group { pool, slot: Default::default(), queued: AtomicUsize::new(0), metrics })
    }

    /// Joins the open transaction (or begins one) inside a savepoint of its own.
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<GroupTx> {
        let mut guard = {
            let _queued = Queued::enter(&self.queued);
            self.slot.clone().lock_owned().await
        };
        self.settle_rollback(&mut guard).await;
        if guard.tx.is_none() {
            guard.tx = Some(self.pool.begin().await?);
            guard.batch = Some(Arc::new(watch::channel(None).0));
            guard.members = 0;
        }
        let tx = guard.tx.as_mut().expect("open");
        if let Err(e) = sqlx::query("SAVEPOINT member").execute(&mut **tx).await {
            abort(&mut guard, &e.to_string());
            return Err(e.into());
        }
        Ok(GroupTx { guard: Some(guard), group: self.clone() })
    }

    /// Rolls back the savepoint of a writer that was dropped mid-work. A failure
    /// here leaves the transaction unusable: the batch fails as a whole.
    async fn settle_rollback(&self, slot: &mut Slot) {
        if !std::mem::take(&mut slot.rollback) {
            return;
        }
        let Some(tx) = slot.tx.as_mut() else { return };
        let undone = async {
            sqlx::query("ROLLBACK TO member").execute(&mut **tx).await?;
            sqlx::query("RELEASE member").execute(&mut **tx).await
        };
        if let Err(e) = undone.await {
            abort(slot, &format!("could not roll back a failed write: {e}"));
        }
    }

    /// Commits the open batch in a task of its own, so a caller that gives up
    /// (a client hanging up) cannot leave the commit half-done and its batch-mates
    /// guessing. The next batch begins once the connection is back in the pool.
    fn commit_now(&self, slot: &mut Slot) {
        let (Some(tx), Some(batch)) = (slot.tx.take(), slot.batch.take()) else { return };
        let members = std::mem::take(&mut slot.members);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let outcome = tx.commit().await.map_err(|e| e.to_string());
            metrics.inc("syncflow_store_group_commits_total", &[], 1.0);
            metrics.inc("syncflow_store_group_writes_total", &[], members as f64);
            batch.send_replace(Some(outcome));
        });
    }

    /// Resolves a dropped writer's savepoint and commits the open batch, if any.
    async fn flush(self: Arc<Self>) {
        let mut guard = self.slot.clone().lock_owned().await;
        self.settle_rollback(&mut guard).await;
        self.commit_now(&mut guard);
    }
}

/// Fails the open batch: rolls its transaction back (by dropping it) and tells its
/// members.
fn abort(slot: &mut Slot, why: &str) {
    slot.tx = None;
    slot.members = 0;
    slot.rollback = false;
    if let Some(batch) = slot.batch.take() {
        batch.send_replace(Some(Err(why.to_string())));
    }
}

/// Counts a writer queued for the slot for as long as it waits (also when its
/// future is dropped while waiting).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Queued(n)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One writer's part of a shared transaction: use `&mut *tx` as the executor, then
/// `commit`. Dropped without `commit` (an error returned with `?`), its statements
/// are rolled back and the others' are not.
pub(crate) struct GroupTx {
    guard: Option<OwnedMutexGuard<Slot>>,
    group: Arc<Group>,
}

impl GroupTx {
    /// Keeps this writer's statements and returns once they are committed (with
    /// whichever others share the transaction), or with the commit's error.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let mut guard = self.guard.take().expect("held until commit");
        let tx = guard.tx.as_mut().expect("open while held");
        if let Err(e) = sqlx::query("RELEASE member").execute(&mut **tx).await {
            abort(&mut guard, &e.to_string());
            return Err(e.into());
        }
        guard.members += 1;
        let batch = guard.batch.clone().expect("open while held");
        if self.group.queued.load(Ordering::SeqCst) == 0 || guard.members >= MAX_BATCH {
            self.group.commit_now(&mut guard);
        }
        drop(guard);
        let mut outcome = batch.subscribe();
        loop {
            if let Some(done) = outcome.borrow_and_update().clone() {
                return done.map_err(|e| StoreError::Database(sqlx::Error::Protocol(format!("group commit: {e}"))));
            }
            tokio::select! {
                changed = outcome.changed() => {
                    if changed.is_err() {
                        let lost = "group commit: the committing task ended without an outcome";
                        return Err(StoreError::Database(sqlx::Error::Protocol(lost.into())));
                    }
                }
                mut slot = self.group.slot.clone().lock_owned() => {
                    // Everyone queued ahead has had their turn: if our batch is still
                    // open, nobody else is going to commit it.
                    if slot.batch.as_ref().is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                        self.group.settle_rollback(&mut slot).await;
                        if slot.batch.as_ref().is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                            self.group.commit_now(&mut slot);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for GroupTx {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else { return };
        guard.rollback = true;
        drop(guard);
        // Others in the batch may be waiting on it: settle and commit it now.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.group.clone().flush());
        }
    }
}

impl Deref for GroupTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.guard.as_ref().and_then(|g| g.tx.as_deref()).expect("open while held")
    }
}

impl DerefMut for GroupTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.guard.as_mut().and_then(|g| g.tx.as_deref_mut()).expect("open while held")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use std::time::Duration;

    /// Removes the test's database files when dropped.
    struct Files(std::path::PathBuf);

    impl Drop for Files {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    async fn group() -> (Arc<Group>, SqlitePool, Files) {
        let file = std::env::temp_dir().join(format!("syncflow-group-{}.db", syncflow_core::id::new_id("g")));
        let opts =
            SqliteConnectOptions::new().filename(&file).create_if_missing(true).journal_mode(SqliteJournalMode::Wal);
        let write = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)").execute(&write).await.unwrap();
        let read = SqlitePoolOptions::new().max_connections(2).connect_with(opts).await.unwrap();
        let metrics = Arc::new(syncflow_core::metrics::Registry::new());
        (Group::new(write, metrics), read, Files(file))
    }

    async fn keys(read: &SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("SELECT k FROM t ORDER BY k").fetch_all(read).await.unwrap()
    }

    async fn insert(g: &Arc<Group>, k: i64) -> Result<()> {
        let mut tx = g.begin().await?;
        sqlx::query("INSERT INTO t (k) VALUES ($1)").bind(k).execute(&mut *tx).await?;
        tx.commit().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_commits_and_each_returns_after_its_commit() {
        let (g, read, _dir) = group().await;
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..200 {
            let g = g.clone();
            let read = read.clone();
            tasks.spawn(async move {
                insert(&g, k).await.unwrap();
                // Answered only once committed: a fresh reader sees the row.
                let seen: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE k = $1").bind(k).fetch_one(&read).await.unwrap();
                assert_eq!(seen, 1, "write {k} returned before its commit");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(keys(&read).await, (0..200).collect::<Vec<_>>());
        let commits = g.metrics.value("syncflow_store_group_commits_total", &[]);
        let writes = g.metrics.value("syncflow_store_group_writes_total", &[]);
        assert_eq!(writes, 200.0);
        assert!(commits < writes, "{commits} commits for {writes} writes: nothing was grouped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_writer_rolls_back_alone() {
        let (g, read, _dir) = group().await;
        insert(&g, 1).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..50 {
            let g = g.clone();
            // Every fifth writer repeats key 1 and fails on the primary key.
            tasks.spawn(async move { (k, insert(&g, if k % 5 == 0 { 1 } else { 100 + k }).await) });
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            let (k, result) = r.unwrap();
            assert_eq!(result.is_err(), k % 5 == 0, "writer {k}: {result:?}");
            failed += usize::from(result.is_err());
        }
        assert_eq!(failed, 10);
        let mut want = vec![1];
        want.extend((0..50).filter(|k| k % 5 != 0).map(|k| 100 + k));
        assert_eq!(keys(&read).await, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_dropped_mid_work_is_undone_and_strands_nobody() {
        let (g, read, _dir) = group().await;
        // A takes the slot and writes, then is dropped without committing while B waits.
        let mut a = g.begin().await.unwrap();
        sqlx::query("INSERT INTO t (k) VALUES (7)").execute(&mut *a).await.unwrap();
        let b = tokio::spawn({
            let g = g.clone();
            async move { insert(&g, 8).await }
        });
        while g.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(a);
        tokio::time::timeout(Duration::from_secs(10), b).await.expect("B committed").unwrap().unwrap();
        assert_eq!(keys(&read).await, vec![8], "A's write is rolled back, B's kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_gives_up_while_queued_strands_nobody() {
        let (g, read, _dir) = group().await;
        // C holds the slot so that B queues behind A.
        let mut c = g.begin().await.unwrap();
        sqlx::query("INSERT INTO t (k) VALUES (1)").execute(&mut *c).await.unwrap();
        let a = tokio::spawn({
            let g = g.clone();
            async move { insert(&g, 2).await }
        });
        while g.queued.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        let b = tokio::spawn({
            let g = g.clone();
            async move { insert(&g, 3).await }
        });
        while g.queued.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // C commits with A and B queued: it leaves the transaction open for them.
        let c_done = tokio::spawn(c.commit());
        // B gives up (usually while still queued); A runs, and the batch is committed
        // by whoever is last to hold the slot.
        b.abort();
        let _ = b.await;
        tokio::time::timeout(Duration::from_secs(10), a).await.expect("A committed").unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), c_done).await.expect("C committed").unwrap().unwrap();
        // B may have got its turn before it gave up (then its write is there, as
        // with a client that hangs up after the commit); A's and C's always are.
        let k = keys(&read).await;
        assert!(k.starts_with(&[1, 2]) && k.len() <= 3, "{k:?}");
    }
}
