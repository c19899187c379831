//! What a scenario cost the database: transactions, WAL and growth (PostgreSQL's
//! statistics views; the file sizes on SQLite), and the raw commit rate of the same
//! database as a baseline.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::Connection;

use crate::hub::Env;

/// Counters read before and after a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbStats {
    /// Committed and rolled-back transactions of the hub's database (PostgreSQL).
    pub xacts: Option<i64>,
    /// WAL records and bytes written by the whole cluster (PostgreSQL).
    pub wal_records: Option<i64>,
    pub wal_bytes: Option<i64>,
    /// Database size in bytes (SQLite: the file plus its WAL).
    pub size: i64,
}

impl DbStats {
    pub async fn read(env: &Env) -> Result<DbStats> {
        if let Some(path) = sqlite_path(&env.database_url) {
            let size = |p: &str| std::fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0);
            return Ok(DbStats { size: size(path) + size(&format!("{path}-wal")), ..DbStats::default() });
        }
        let mut c = sqlx::PgConnection::connect(&env.database_url).await?;
        // The statistics collector publishes each backend's counts within a second or so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (xacts, size): (i64, i64) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::bigint, pg_database_size(current_database()) \
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut c)
        .await?;
        let (records, bytes): (i64, i64) =
            sqlx::query_as("SELECT wal_records::bigint, wal_bytes::bigint FROM pg_stat_wal").fetch_one(&mut c).await?;
        Ok(DbStats { xacts: Some(xacts), wal_records: Some(records), wal_bytes: Some(bytes), size })
    }

    /// Per-event figures of `after - self` over `events`, as a sentence and as JSON.
    pub fn per_event(&self, after: &DbStats, events: usize) -> (String, serde_json::Value) {
        let n = events.max(1) as f64;
        let per = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| (b - a) as f64 / n);
        let xacts = per(self.xacts, after.xacts);
        let records = per(self.wal_records, after.wal_records);
        let bytes = per(self.wal_bytes, after.wal_bytes);
        let growth = (after.size - self.size) as f64 / n;
        let mut text = format!("{:.2} KB growth", growth / 1024.0);
        if let (Some(x), Some(r), Some(b)) = (xacts, records, bytes) {
            text = format!("{x:.1} transactions, {r:.1} WAL records, {:.2} KB WAL, {text}", b / 1024.0);
        }
        let json = serde_json::json!({"xacts_per_event": xacts, "wal_records_per_event": records,
            "wal_bytes_per_event": bytes, "growth_bytes_per_event": growth});
        (format!("per event: {text}"), json)
    }
}

fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite:")
}

/// Single-row `INSERT` commits per second on the same kind of database as the hub's
/// (SQLite: a file beside it with the hub's settings and one writer connection;
/// PostgreSQL: the same database), `writers` at a time: how fast the database
/// itself commits here, for a reader to set the hub's figures against.
pub async fn raw_insert_baseline(env: &Env, n: usize, writers: usize) -> Result<f64> {
    let payload = "x".repeat(2048);
    let next = Arc::new(AtomicUsize::new(0));
    let started;
    if let Some(path) = sqlite_path(&env.database_url) {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
        let file = Path::new(path).with_file_name("baseline.db");
        let opts = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::query("CREATE TABLE raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)").execute(&pool).await?;
        started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let (pool, next, payload) = (pool.clone(), next.clone(), payload.clone());
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    sqlx::query("INSERT INTO raw (payload) VALUES ($1)").bind(&payload).execute(&pool).await?;
                }
                Ok::<(), sqlx::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&env.database_url).await?;
        sqlx::query("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, payload text NOT NULL)").execute(&pool).await?;
        started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let (pool, next, payload) = (pool.clone(), next.clone(), payload.clone());
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)").bind(&payload).execute(&pool).await?;
                }
                Ok::<(), sqlx::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        sqlx::query("DROP TABLE bench_raw").execute(&pool).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
