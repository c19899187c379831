//! PostgreSQL-only behaviour: capture of plain-SQL writes by other programs, and a
//! change-log reader that never skips a change under concurrent writers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use syncflow_core::{Op, CUSTOMER};
use syncflow_store::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sql_writes_are_captured_once_with_origin_sql() {
    let Some(t) = testing::postgres().await else {
        return;
    };
    let s = &t.store;
    let other = PgPool::connect(&t.url).await.unwrap();

    let id: String =
        sqlx::query_scalar("INSERT INTO customers (name, email) VALUES ('Raw', 'raw@example.com') RETURNING id")
            .fetch_one(&other)
            .await
            .unwrap();
    assert!(id.starts_with("cust_") && id.len() == 31, "{id}");
    sqlx::query("UPDATE customers SET name = 'Raw 2' WHERE id = $1").bind(&id).execute(&other).await.unwrap();
    // An UPDATE that changes nothing is not a change.
    sqlx::query("UPDATE customers SET name = 'Raw 2' WHERE id = $1").bind(&id).execute(&other).await.unwrap();
    // syncflow's own write in between: captured once, by syncflow, as `api`.
    let own = s.create(&CUSTOMER, json!({"name": "Own"}).as_object().unwrap(), "api").await.unwrap();
    sqlx::query("DELETE FROM customers WHERE id = $1").bind(&id).execute(&other).await.unwrap();

    let changes = s.changes_after(0, 100).await.unwrap();
    let summary: Vec<_> = changes.iter().map(|c| (c.record_id.as_str(), c.op, c.version, c.origin.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            (id.as_str(), Op::Upsert, 1, "sql"),
            (id.as_str(), Op::Upsert, 2, "sql"),
            (own.id.as_str(), Op::Upsert, 1, "api"),
            (id.as_str(), Op::Delete, 3, "sql"),
        ]
    );
    // Snapshots of captured writes have the same shape as syncflow's own.
    let snap = &changes[1].snapshot;
    assert_eq!(snap["object"], "customer");
    assert_eq!(snap["name"], "Raw 2");
    assert_eq!(snap["metadata"], json!({}));
    assert!(snap["updated_at"].as_str().unwrap().ends_with('Z'));
    let own_snap = changes[2].snapshot.as_object().unwrap();
    let mut sql_keys: Vec<_> = snap.as_object().unwrap().keys().collect();
    let mut own_keys: Vec<_> = own_snap.keys().collect();
    sql_keys.sort();
    own_keys.sort();
    assert_eq!(sql_keys, own_keys);
    other.close().await;
}

/// Writers hold their transactions open for random times, so sequence values (if
/// taken at insert) would commit out of order. A reader following the log with a
/// cursor must still see every change exactly once, in per-record order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_never_skips_changes_of_concurrent_writers() {
    let Some(t) = testing::postgres().await else {
        return;
    };
    let store = t.store.clone();
    let raw = PgPool::connect(&t.url).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store.changes_after(cursor, 7).await.unwrap();
                if let Some(last) = page.last() {
                    cursor = last.seq;
                }
                let empty = page.is_empty();
                seen.extend(page);
                if finished && empty {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..8 {
        let raw = raw.clone();
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                if w % 2 == 0 {
                    let mut tx = raw.begin().await.unwrap();
                    let id: String = sqlx::query_scalar("INSERT INTO customers (name) VALUES ($1) RETURNING id")
                        .bind(format!("w{w}-{i}"))
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    let pause = f64::from(rand::thread_rng().gen_range(0..15u8)) / 1000.0;
                    sqlx::query("SELECT pg_sleep($1)").bind(pause).execute(&mut *tx).await.unwrap();
                    sqlx::query("UPDATE customers SET email = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(format!("w{w}-{i}@example.com"))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    ids.push(id);
                } else {
                    let body = json!({"name": format!("w{w}-{i}")});
                    let c = store.create(&CUSTOMER, body.as_object().unwrap(), "api").await.unwrap();
                    let patch = json!({"email": format!("w{w}-{i}@example.com")});
                    store.update(&CUSTOMER, &c.id, patch.as_object().unwrap(), None, "api").await.unwrap();
                    ids.push(c.id);
                }
                let gap = Duration::from_millis(rand::thread_rng().gen_range(0..3));
                tokio::time::sleep(gap).await;
            }
            ids
        }));
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    // Raw writers update inside the insert's transaction: one change per record
    // (the trigger fires per statement, both in one txn → two rows), API writers
    // write two changes. Every one of them must have reached the reader.
    let total = store.head_seq().await.unwrap();
    let seqs: Vec<i64> = seen.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "reader skipped or repeated a change");
    let ids: BTreeSet<_> = seen.iter().map(|c| c.record_id.clone()).collect();
    assert_eq!(ids, written);
    assert_eq!(seen.len(), written.len() * 2);
    // Per record, versions arrive in order.
    for id in &written {
        let versions: Vec<i64> = seen.iter().filter(|c| &c.record_id == id).map(|c| c.version).collect();
        assert_eq!(versions, vec![1, 2], "record {id}");
    }
    assert_eq!(store.unsequenced_count().await.unwrap(), 0);
    raw.close().await;
}
