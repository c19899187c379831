//! Catalog and change-log behaviour, run on SQLite and PostgreSQL alike.

use serde_json::{json, Map, Value};
use syncflow_core::{Op, CUSTOMER, INVOICE};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, ListQuery, StoreError};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

backend_tests!(
    write_appends_one_change_per_write,
    failed_writes_leave_no_trace,
    stale_version_is_refused,
    invoice_requires_live_customer,
    noop_patch_writes_nothing,
    list_pages_and_filters_by_email,
    changes_page_in_order,
    migrations_are_idempotent,
);

async fn write_appends_one_change_per_write(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Ada", "email": "ada@example.com"})), "api").await.unwrap();
    assert!(c.id.starts_with("cust_"));
    assert_eq!(c.version, 1);
    let u = s.update(&CUSTOMER, &c.id, &obj(json!({"name": "Ada L."})), Some(1), "api").await.unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.fields["email"], "ada@example.com");
    let d = s.delete(&CUSTOMER, &c.id, None, "api").await.unwrap();
    assert_eq!(d.version, 3);
    assert!(d.deleted_at.is_some());

    let changes = s.changes_after(0, 100).await.unwrap();
    assert_eq!(changes.len(), 3);
    let ops: Vec<_> = changes.iter().map(|c| (c.op, c.version, c.origin.as_str())).collect();
    assert_eq!(ops, vec![(Op::Upsert, 1, "api"), (Op::Upsert, 2, "api"), (Op::Delete, 3, "api")]);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(changes[1].snapshot["name"], "Ada L.");
    assert_eq!(changes[1].snapshot["object"], "customer");
    assert_eq!(changes[2].snapshot["deleted_at"], json!(d.deleted_at));

    // A tombstone is still readable, but no longer updatable.
    assert!(s.get(&CUSTOMER, &c.id).await.unwrap().unwrap().deleted_at.is_some());
    assert!(matches!(
        s.update(&CUSTOMER, &c.id, &obj(json!({"name": "x"})), None, "api").await,
        Err(StoreError::NotFound)
    ));
}

async fn failed_writes_leave_no_trace(t: TestStore) {
    let s = &t.store;
    let err = s.create(&CUSTOMER, &obj(json!({"email": "bad"})), "api").await.unwrap_err();
    let StoreError::Invalid(fields) = err else { panic!("expected Invalid, got {err:?}") };
    let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(names, vec!["name", "email"]);
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Bo"})), "api").await.unwrap();
    let err = s.update(&CUSTOMER, &c.id, &obj(json!({"email": "nope"})), None, "api").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    assert!(matches!(
        s.update(&CUSTOMER, "cust_unknown", &obj(json!({"name": "x"})), None, "api").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.get(&CUSTOMER, &c.id).await.unwrap().unwrap().version, 1);
    assert_eq!(s.changes_after(0, 100).await.unwrap().len(), 1);
    assert_eq!(s.count(&CUSTOMER).await.unwrap(), 1);
}

async fn stale_version_is_refused(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Cy"})), "api").await.unwrap();
    s.update(&CUSTOMER, &c.id, &obj(json!({"name": "Cy 2"})), Some(1), "api").await.unwrap();
    let err = s.update(&CUSTOMER, &c.id, &obj(json!({"name": "Cy 3"})), Some(1), "api").await.unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { current: 2 }), "{err:?}");
    let err = s.delete(&CUSTOMER, &c.id, Some(1), "api").await.unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { current: 2 }), "{err:?}");
    assert_eq!(s.get(&CUSTOMER, &c.id).await.unwrap().unwrap().fields["name"], "Cy 2");
    assert_eq!(s.changes_after(0, 100).await.unwrap().len(), 2);
}

async fn invoice_requires_live_customer(t: TestStore) {
    let s = &t.store;
    let body =
        |cid: &str| obj(json!({"customer_id": cid, "amount": 1250, "currency": "EUR", "due_date": "2026-12-31"}));
    let err = s.create(&INVOICE, &body("cust_nobody"), "api").await.unwrap_err();
    let StoreError::Invalid(fields) = err else { panic!("expected Invalid") };
    assert_eq!(fields[0].field, "customer_id");

    let c = s.create(&CUSTOMER, &obj(json!({"name": "Di"})), "api").await.unwrap();
    let inv = s.create(&INVOICE, &body(&c.id), "api").await.unwrap();
    assert_eq!(inv.fields["currency"], "eur");
    assert_eq!(inv.fields["due_date"], "2026-12-31");
    assert_eq!(inv.fields["status"], "draft");
    let paid = s.update(&INVOICE, &inv.id, &obj(json!({"status": "paid"})), None, "api").await.unwrap();
    assert_eq!(paid.fields["amount"], 1250);

    s.delete(&CUSTOMER, &c.id, None, "api").await.unwrap();
    assert!(matches!(s.create(&INVOICE, &body(&c.id), "api").await, Err(StoreError::Invalid(_))));
    assert_eq!(s.count(&INVOICE).await.unwrap(), 1);
}

async fn noop_patch_writes_nothing(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Ed", "metadata": {"k": "v"}})), "api").await.unwrap();
    let same =
        s.update(&CUSTOMER, &c.id, &obj(json!({"name": "Ed", "metadata": {"k": "v"}})), None, "api").await.unwrap();
    assert_eq!(same.version, 1);
    assert_eq!(s.changes_after(0, 100).await.unwrap().len(), 1);
}

async fn list_pages_and_filters_by_email(t: TestStore) {
    let s = &t.store;
    let mut ids = Vec::new();
    for i in 0..7 {
        let email = format!("user{}@Example.com", i % 3);
        let c = s.create(&CUSTOMER, &obj(json!({"name": format!("U{i}"), "email": email})), "api").await.unwrap();
        ids.push(c.id);
    }
    s.delete(&CUSTOMER, &ids[6], None, "api").await.unwrap();

    let mut seen = Vec::new();
    let mut q = ListQuery { limit: 2, ..Default::default() };
    loop {
        let page = s.list(&CUSTOMER, &q).await.unwrap();
        seen.extend(page.data.iter().map(|r| r.id.clone()));
        if !page.has_more {
            break;
        }
        q.after = page.data.last().map(|r| r.id.clone());
    }
    assert_eq!(seen, ids[..6].to_vec());

    let q = ListQuery { limit: 50, filters: vec![("email", "USER1@example.com".into())], ..Default::default() };
    let found: Vec<_> = s.list(&CUSTOMER, &q).await.unwrap().data.into_iter().map(|r| r.id).collect();
    assert_eq!(found, vec![ids[1].clone(), ids[4].clone()]);

    let q = ListQuery { limit: 50, include_deleted: true, ..Default::default() };
    assert_eq!(s.list(&CUSTOMER, &q).await.unwrap().data.len(), 7);
}

async fn changes_page_in_order(t: TestStore) {
    let s = &t.store;
    for i in 0..25 {
        s.create(&CUSTOMER, &obj(json!({"name": format!("N{i}")})), "api").await.unwrap();
    }
    let mut after = 0;
    let mut names = Vec::new();
    loop {
        let page = s.changes_after(after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().seq;
        names.extend(page.into_iter().map(|c| c.snapshot["name"].as_str().unwrap().to_string()));
    }
    assert_eq!(names, (0..25).map(|i| format!("N{i}")).collect::<Vec<_>>());
    assert_eq!(s.head_seq().await.unwrap(), after);
    let one = s.change(after).await.unwrap().unwrap();
    assert_eq!(one.snapshot["name"], "N24");
}

async fn migrations_are_idempotent(t: TestStore) {
    t.store.create(&CUSTOMER, &obj(json!({"name": "Fay"})), "api").await.unwrap();
    // Opening the same database again re-runs the migrator, which must be a no-op.
    let again = syncflow_store::Store::open(&t.url).await.unwrap();
    assert_eq!(again.count(&CUSTOMER).await.unwrap(), 1);
    again.close().await;
}
