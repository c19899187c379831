//! Retention on SQLite and PostgreSQL: what a pass prunes, what it keeps and why,
//! the change-log horizon that refuses old client cursors, and bounded batches.
//! Ages are injected (`Retention::cutoff_ms`): rows written before the cutoff are
//! old, rows written after it young — no sleeping.

use serde_json::{json, Map, Value};
use syncflow_core::CUSTOMER;
use syncflow_store::testing::TestStore;
use syncflow_store::{
    backend_tests, now_ms, DeliveryFilter, DeliveryStatus, Finish, InboxOutcome, NewInboxEvent, Retention, Route,
    Store, StoreError,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

/// Waits until the clock (ms) has moved past everything written so far and
/// returns it: rows written before are older than it, rows written after are not.
async fn tick() -> i64 {
    let start = now_ms();
    while now_ms() <= start {
        tokio::task::yield_now().await;
    }
    now_ms()
}

fn before(cutoff_ms: i64, batch: usize) -> Retention {
    Retention { cutoff_ms, batch, status_cursors: Vec::new(), pause: std::time::Duration::ZERO }
}

fn event(id: &str, external_id: &str, created: i64) -> NewInboxEvent {
    NewInboxEvent {
        system: "stripe".into(),
        event_id: id.into(),
        event_type: "customer.updated".into(),
        entity: Some("customer".into()),
        external_id: Some(external_id.into()),
        event_created: created,
        source: "webhook".into(),
        payload: format!("{{\"id\":\"{id}\",\"raw\":\"{}\"}}", "x".repeat(500)),
    }
}

async fn settled(s: &Store, id: &str, external_id: &str, created: i64, outcome: InboxOutcome) -> i64 {
    let (row, _) = s.inbox_receive(&event(id, external_id, created), 60_000).await.unwrap();
    if outcome != InboxOutcome::Received {
        s.inbox_settle(row.id, outcome, None, Some("test")).await.unwrap();
    }
    row.id
}

fn finish(status: DeliveryStatus) -> Finish {
    Finish {
        status,
        next_attempt_at: None,
        http_status: Some(if status == DeliveryStatus::Delivered { 200 } else { 400 }),
        external_id: None,
        remarks: None,
        duration_ms: 1,
        link: None,
        callback_to: None,
    }
}

fn crm() -> Vec<Route> {
    vec![Route { system: "crm".into(), entities: vec!["customer".into()] }]
}

async fn create(s: &Store, name: &str) -> String {
    s.create(&CUSTOMER, &obj(json!({"name": name})), "api").await.unwrap().id
}

async fn rename(s: &Store, id: &str, name: &str) {
    s.update(&CUSTOMER, id, &obj(json!({"name": name})), None, "api").await.unwrap();
}

async fn seqs_of(s: &Store, id: &str) -> Vec<i64> {
    s.changes_of_record("customer", id).await.unwrap().iter().map(|c| c.seq).collect()
}

backend_tests!(
    old_settled_inbox_rows_go_while_young_unsettled_held_and_yardstick_rows_stay,
    finished_deliveries_go_with_their_attempts_after_every_status_publisher,
    changes_go_once_passed_superseded_and_no_longer_deliverable,
    a_cursor_below_the_horizon_is_refused_and_one_at_or_above_it_reads,
    a_pass_works_in_bounded_batches,
);

async fn old_settled_inbox_rows_go_while_young_unsettled_held_and_yardstick_rows_stay(t: TestStore) {
    let s = &t.store;
    // cus_1: two applied events; the newer (200) is the stale yardstick.
    let older = settled(s, "evt_a", "cus_1", 100, InboxOutcome::Applied).await;
    let newer = settled(s, "evt_b", "cus_1", 200, InboxOutcome::Applied).await;
    let rejected = settled(s, "evt_c", "cus_2", 150, InboxOutcome::Rejected).await;
    let echo_old = settled(s, "evt_d", "cus_3", 300, InboxOutcome::Echo).await;
    let stale = settled(s, "evt_e", "cus_3", 250, InboxOutcome::Stale).await;
    let unsettled = settled(s, "evt_f", "cus_4", 100, InboxOutcome::Received).await;
    // A deletion the breaker held: its row is settled `ignored` but a release applies it.
    let held = settled(s, "evt_g", "cus_5", 100, InboxOutcome::Received).await;
    s.hold_delete("stripe", "customer", "cust_x", "cus_5", held, "breaker").await.unwrap();
    let cutoff = tick().await;
    let young = settled(s, "evt_h", "cus_6", 100, InboxOutcome::Ignored).await;

    let p = s.prune(&before(cutoff, 1000)).await.unwrap();
    assert_eq!((p.inbox, p.inbox_payloads), (3, 2), "{p:?}");
    let rows = s.inbox("stripe", 0, 100).await.unwrap();
    let kept: Vec<(i64, bool)> = rows.iter().map(|r| (r.id, r.payload.is_empty())).collect();
    assert_eq!(
        kept,
        vec![(newer, true), (echo_old, true), (unsettled, false), (held, false), (young, false)],
        "gone: {older} (superseded), {rejected} (settled), {stale} (not a yardstick)"
    );
    // The yardsticks answer as before, so a re-delivered older event is still stale.
    assert_eq!(s.inbox_last_applied("stripe", "cus_1", -1).await.unwrap(), Some(200));
    assert_eq!(s.inbox_last_applied("stripe", "cus_3", -1).await.unwrap(), Some(300));
    let (again, inserted) = s.inbox_receive(&event("evt_a", "cus_1", 100), 60_000).await.unwrap();
    assert!(inserted, "the pruned row no longer dedupes the event id");
    assert_eq!(s.inbox_last_applied("stripe", "cus_1", again.id).await.unwrap(), Some(200), "100 < 200: stale");
    let (dup, inserted) = s.inbox_receive(&event("evt_b", "cus_1", 200), 60_000).await.unwrap();
    assert!(!inserted && dup.id == newer, "the kept yardstick still dedupes its own event");

    // A second pass finds nothing more to do (and writes nothing).
    let p = s.prune(&before(cutoff, 1000)).await.unwrap();
    assert_eq!(p.total() + p.transactions, 0, "{p:?}");
    assert_eq!(s.metrics().value("syncflow_retention_pruned_total", &[("table", "inbox")]), 3.0);
    assert_eq!(s.metrics().value("syncflow_retention_pruned_total", &[("table", "inbox_payload")]), 2.0);
}

async fn finished_deliveries_go_with_their_attempts_after_every_status_publisher(t: TestStore) {
    let s = &t.store;
    for name in ["delivered", "dead", "in flight"] {
        create(s, name).await;
    }
    s.dispatch(&crm(), 100).await.unwrap();
    let claimed = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(s.finish(&claimed[0].delivery, "n1", &finish(DeliveryStatus::Delivered)).await.unwrap());
    assert!(s.finish(&claimed[1].delivery, "n1", &finish(DeliveryStatus::Dead)).await.unwrap());
    let cutoff = tick().await;
    create(s, "young").await;
    s.dispatch(&crm(), 100).await.unwrap();
    let young = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    assert!(s.finish(&young[0].delivery, "n1", &finish(DeliveryStatus::Delivered)).await.unwrap());

    // A status publisher that has published nothing before the cutoff holds them back.
    s.set_cursor("status:bus", &format!("{}:0", claimed[0].delivery.created_at)).await.unwrap();
    let mut r = before(cutoff, 1000);
    r.status_cursors = vec!["status:bus".into()];
    let p = s.prune(&r).await.unwrap();
    assert_eq!((p.deliveries, p.delivery_attempts), (0, 0), "not published yet: {p:?}");

    // Once it has passed them they go, with their attempt rows; dead ones too.
    s.set_cursor("status:bus", &format!("{}:0", now_ms())).await.unwrap();
    let p = s.prune(&r).await.unwrap();
    assert_eq!((p.deliveries, p.delivery_attempts), (2, 2), "{p:?}");
    for gone in &claimed[..2] {
        assert!(s.delivery(gone.delivery.id).await.unwrap().is_none());
        assert!(s.attempts(gone.delivery.id).await.unwrap().is_empty());
    }
    let left = s.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
    let left: Vec<(i64, DeliveryStatus)> = left.iter().map(|d| (d.id, d.status)).collect();
    assert_eq!(
        left,
        vec![(claimed[2].delivery.id, DeliveryStatus::InFlight), (young[0].delivery.id, DeliveryStatus::Delivered)],
        "unfinished and young deliveries stay"
    );
    // The in-flight one still records its outcome.
    assert!(s.finish(&claimed[2].delivery, "n1", &finish(DeliveryStatus::Delivered)).await.unwrap());
}

async fn changes_go_once_passed_superseded_and_no_longer_deliverable(t: TestStore) {
    let s = &t.store;
    // X: three versions, delivered (the claim coalesces v1 and v2 into v3).
    let x = create(s, "x1").await;
    rename(s, &x, "x2").await;
    rename(s, &x, "x3").await;
    // Y: v1 in flight when v2 is written. W: v1 goes dead after the cutoff.
    let y = create(s, "y1").await;
    let w = create(s, "w1").await;
    s.dispatch(&crm(), 100).await.unwrap();
    let claimed = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    let of = |id: &str| claimed.iter().find(|c| c.delivery.record_id == id).unwrap().clone();
    assert!(s.finish(&of(&x).delivery, "n1", &finish(DeliveryStatus::Delivered)).await.unwrap());
    rename(s, &y, "y2").await;
    rename(s, &w, "w2").await;
    s.dispatch(&crm(), 100).await.unwrap();
    // Z: written after the dispatcher's last pass — not yet turned into deliveries.
    let z = create(s, "z1").await;
    rename(s, &z, "z2").await;
    let (x_seqs, y_seqs, w_seqs, z_seqs) =
        (seqs_of(s, &x).await, seqs_of(s, &y).await, seqs_of(s, &w).await, seqs_of(s, &z).await);
    let cutoff = tick().await;
    assert!(s.finish(&of(&w).delivery, "n1", &finish(DeliveryStatus::Dead)).await.unwrap());

    let p = s.prune(&before(cutoff, 1000)).await.unwrap();
    // X's three deliveries (two skipped, one delivered) went first, then X v1 and v2.
    assert_eq!((p.deliveries, p.changes), (3, 2), "{p:?}");
    assert_eq!(seqs_of(s, &x).await, x_seqs[2..], "the newest change of a record stays");
    assert_eq!(seqs_of(s, &y).await, y_seqs, "a change with an unfinished delivery stays");
    assert_eq!(seqs_of(s, &w).await, w_seqs, "a change a dead (replayable) delivery names stays");
    assert_eq!(seqs_of(s, &z).await, z_seqs, "changes past the dispatch cursor stay");
    assert_eq!(s.change_horizon().await.unwrap(), x_seqs[1]);

    // The record's history still reads; it shows less.
    let h = s.record_history(&CUSTOMER, &x).await.unwrap().unwrap();
    assert_eq!(h.changes.iter().map(|c| c.version).collect::<Vec<_>>(), vec![3]);
    assert!(h.deliveries.is_empty() && !h.timeline().is_empty());
    // A replayed dead delivery is claimed again (its change is still there).
    s.retry_delivery(of(&w).delivery.id).await.unwrap().unwrap();
    let again = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    assert!(again.iter().any(|c| c.delivery.record_id == w), "{again:?}");
}

async fn a_cursor_below_the_horizon_is_refused_and_one_at_or_above_it_reads(t: TestStore) {
    let s = &t.store;
    let x = create(s, "x1").await;
    rename(s, &x, "x2").await;
    let y = create(s, "y1").await;
    s.delete(&CUSTOMER, &y, None, "api").await.unwrap();
    rename(s, &x, "x3").await;
    s.dispatch(&[], 100).await.unwrap();
    let cutoff = tick().await;
    let p = s.prune(&before(cutoff, 1000)).await.unwrap();
    assert_eq!(p.changes, 3, "x v1, x v2 and y's create: {p:?}");
    let horizon = s.change_horizon().await.unwrap();
    assert_eq!(horizon, 3, "x v1 (1), x v2 (2) and y's create (3) went; y's delete (4) and x v3 (5) stay");

    for after in [1, horizon - 1] {
        let err = s.pull("client:a", after, 100, &[&CUSTOMER]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::CursorExpired { cursor, horizon: h } if cursor == after && h == horizon),
            "{err}"
        );
        assert!(matches!(s.change_page(after, 100, None).await, Err(StoreError::CursorExpired { .. })));
        assert!(matches!(s.reader_start(Some(after)).await, Err(StoreError::CursorExpired { .. })));
    }
    // At the horizon nothing after it is missing; from 0 is a full resync of what is kept.
    assert_eq!(s.pull("client:a", horizon, 100, &[&CUSTOMER]).await.unwrap().records.len(), 2);
    let full = s.pull("client:a", 0, 100, &[&CUSTOMER]).await.unwrap();
    let mut got: Vec<(String, i64, bool)> =
        full.records.iter().map(|r| (r.id.clone(), r.version, r.record["deleted_at"].is_string())).collect();
    got.sort();
    let mut want = vec![(x.clone(), 3, false), (y.clone(), 2, true)];
    want.sort();
    assert_eq!(got, want, "every record's current state, the delete included");
    assert_eq!(s.change_page(0, 100, None).await.unwrap().changes.len(), 2);
    assert!(matches!(s.pull("client:a", 99, 100, &[&CUSTOMER]).await, Err(StoreError::CursorAhead { .. })));
}

async fn a_pass_works_in_bounded_batches(t: TestStore) {
    let s = &t.store;
    for i in 0..25 {
        settled(s, &format!("evt_{i}"), &format!("cus_{i}"), 100, InboxOutcome::Ignored).await;
        create(s, &format!("c{i}")).await;
    }
    s.dispatch(&crm(), 100).await.unwrap();
    let claimed = s.claim("crm", "n1", 100, 60_000, &[]).await.unwrap();
    let done: Vec<Finish> = claimed.iter().map(|_| finish(DeliveryStatus::Delivered)).collect();
    let items: Vec<_> = claimed.iter().map(|c| &c.delivery).zip(done.iter()).collect();
    assert!(s.finish_many("n1", &items).await.unwrap().iter().all(|ok| *ok));
    let cutoff = tick().await;

    let p = s.prune(&before(cutoff, 10)).await.unwrap();
    assert_eq!((p.inbox, p.deliveries, p.delivery_attempts), (25, 25, 25), "{p:?}");
    // 25 rows in windows of 10: three transactions per table (inbox, deliveries).
    assert_eq!(p.transactions, 6, "{p:?}");
    assert!(s.inbox("stripe", 0, 100).await.unwrap().is_empty());
}

/// Bytes of SQLite database per webhook-like event before and after a prune: each
/// event is an inbox row with a ~2 KB payload, an applied update (change row with
/// its snapshot), and a delivery to one system with its attempt. Prints figures;
/// run with `cargo test -p syncflow-store --test retention -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_bytes_per_event_sqlite() {
    const EVENTS: usize = 10_000;
    const OBJECTS: usize = 1_000;
    let t = syncflow_store::testing::sqlite().await;
    let s = &t.store;
    let file = t.url.trim_start_matches("sqlite:").to_string();
    let padding = "x".repeat(1_700);
    let mut ids = Vec::new();
    for i in 0..OBJECTS {
        ids.push(create(s, &format!("c{i}")).await);
    }
    s.dispatch(&crm(), 10_000).await.unwrap();
    drain(s).await;
    let base = used_bytes(&file).await;
    for n in 0..EVENTS {
        let i = n % OBJECTS;
        let mut e = event(&format!("evt_{n}"), &format!("cus_{i}"), n as i64);
        e.payload = format!(
            "{{\"id\":\"evt_{n}\",\"object\":\"event\",\"type\":\"customer.updated\",\"data\":{{\"object\":{{\"id\":\"cus_{i}\",\"name\":\"n{n}\",\"pad\":\"{padding}\"}}}}}}"
        );
        let (row, _) = s.inbox_receive(&e, 60_000).await.unwrap();
        s.update(
            &CUSTOMER,
            &ids[i],
            &obj(json!({"name": format!("n{n}"), "email": format!("c{i}@example.com")})),
            None,
            "stripe",
        )
        .await
        .unwrap();
        s.inbox_settle(row.id, InboxOutcome::Applied, Some(&ids[i]), None).await.unwrap();
        if n % 500 == 499 {
            s.dispatch(&crm(), 10_000).await.unwrap();
            drain(s).await;
        }
    }
    s.dispatch(&crm(), 10_000).await.unwrap();
    drain(s).await;
    let full = used_bytes(&file).await;
    let cutoff = tick().await;
    let started = std::time::Instant::now();
    let batch = std::env::var("RETENTION_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(syncflow_store::retention::DEFAULT_BATCH);
    let p = s.prune(&before(cutoff, batch)).await.unwrap();
    let took = started.elapsed();
    let after = used_bytes(&file).await;
    let per = |b: i64| (b - base) as f64 / EVENTS as f64;
    println!("{EVENTS} events over {OBJECTS} objects (debug build, SQLite), windows of {batch}:");
    println!("  before prune: {:.0} bytes/event ({} bytes above the {OBJECTS} records)", per(full), full - base);
    println!("  after prune:  {:.0} bytes/event ({} bytes)", per(after), after - base);
    println!(
        "  pruned {p:?} in {took:?} ({:.1} ms per transaction)",
        took.as_secs_f64() * 1e3 / p.transactions.max(1) as f64
    );
}

async fn drain(s: &Store) {
    loop {
        let claimed = s.claim("crm", "n1", 1000, 60_000, &[]).await.unwrap();
        if claimed.is_empty() {
            return;
        }
        let done: Vec<Finish> = claimed.iter().map(|_| finish(DeliveryStatus::Delivered)).collect();
        let items: Vec<_> = claimed.iter().map(|c| &c.delivery).zip(done.iter()).collect();
        s.finish_many("n1", &items).await.unwrap();
    }
}

/// Pages in use (file pages minus the free list), in bytes: what the data takes,
/// whether or not the file has been vacuumed.
async fn used_bytes(file: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{file}")).await.unwrap();
    let q = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    let used = (q("PRAGMA page_count").await - q("PRAGMA freelist_count").await) * q("PRAGMA page_size").await;
    pool.close().await;
    used
}
