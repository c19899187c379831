//! Schema migrations, embedded in the binary and applied at start-up, each in its
//! own transaction. On PostgreSQL an advisory lock makes nodes that start together
//! take turns, so a migration is applied once.

use crate::{on_write, Result, Store, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Migrations in order; the helper keeps the two lists in step.
macro_rules! migrations {
    ($dir:literal: $($version:literal $name:literal $file:literal),* $(,)?) => {
        &[$(Migration { version: $version, name: $name, sql: include_str!(concat!("../migrations/", $dir, "/", $file)) }),*]
    };
}

const SQLITE: &[Migration] = migrations!("sqlite":
    1 "catalog" "0001_catalog.sql",
    2 "delivery" "0002_delivery.sql",
    3 "client_sync" "0003_client_sync.sql",
    4 "inbox" "0004_inbox.sql",
    5 "delivery_queue_index" "0005_delivery_queue_index.sql",
    6 "sync_pipeline" "0006_sync_pipeline.sql",
    7 "idempotency_keys" "0007_idempotency_keys.sql",
    8 "reconcile" "0008_reconcile.sql",
    9 "cluster" "0009_cluster.sql",
    10 "delivery_claim" "0010_delivery_claim.sql",
    11 "retention" "0011_retention.sql",
    12 "outward_holds" "0012_outward_holds.sql",
);

const POSTGRES: &[Migration] = migrations!("postgres":
    1 "catalog" "0001_catalog.sql",
    2 "delivery" "0002_delivery.sql",
    3 "client_sync" "0003_client_sync.sql",
    4 "inbox" "0004_inbox.sql",
    5 "delivery_queue_index" "0005_delivery_queue_index.sql",
    6 "sync_pipeline" "0006_sync_pipeline.sql",
    7 "idempotency_keys" "0007_idempotency_keys.sql",
    8 "reconcile" "0008_reconcile.sql",
    9 "cluster" "0009_cluster.sql",
    10 "delivery_claim" "0010_delivery_claim.sql",
    11 "retention" "0011_retention.sql",
    12 "outward_holds" "0012_outward_holds.sql",
);

/// Arbitrary constant naming syncflow's migration lock.
const MIGRATION_LOCK: i64 = 0x5359_4e43_0001;

pub(crate) async fn run(store: &Store) -> Result<()> {
    on_write!(store, |pool, d| {
        let list = match d {
            crate::Dialect::Sqlite => SQLITE,
            crate::Dialect::Postgres => POSTGRES,
        };
        let mut tx = pool.begin().await?;
        if d == crate::Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
        }
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS syncflow_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM syncflow_migrations").fetch_all(&mut *tx).await?;
        for m in list.iter().filter(|m| !applied.contains(&m.version)) {
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(|source| StoreError::Migration { version: m.version, source })?;
            sqlx::query("INSERT INTO syncflow_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(m.version)
                .bind(m.name)
                .bind(syncflow_core::now_timestamp())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        tx.commit().await?;
    });
    Ok(())
}
