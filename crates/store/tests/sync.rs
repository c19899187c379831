//! Client sync in the store — atomic batches, conflict policies, client refs,
//! natural keys, tombstones and pulls — run on SQLite and PostgreSQL alike.

use serde_json::{json, Map, Value};
use syncflow_core::{ConflictPolicy, Entity, Op, CUSTOMER, INVOICE, STOCK_READING};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, ItemStatus, StoreError, SyncBatch, SyncItem, Winner};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

/// `2024-01-01T00:00:<s>` in canonical form.
fn at(s: u32) -> String {
    format!("2024-01-01T00:00:{s:02}.000000Z")
}

fn upsert(entity: &'static Entity, fields: Value, edited_at: String) -> SyncItem {
    SyncItem { entity, op: Op::Upsert, id: None, client_ref: None, fields: obj(fields), edited_at, base_version: None }
}

fn with_id(mut item: SyncItem, id: &str) -> SyncItem {
    item.id = Some(id.to_string());
    item
}

fn delete(entity: &'static Entity, id: &str, edited_at: String) -> SyncItem {
    SyncItem {
        entity,
        op: Op::Delete,
        id: Some(id.to_string()),
        client_ref: None,
        fields: Map::new(),
        edited_at,
        base_version: None,
    }
}

fn batch(client: &str, items: Vec<SyncItem>) -> SyncBatch {
    SyncBatch { client_id: client.to_string(), policy: ConflictPolicy::LastWriterWins, items }
}

backend_tests!(
    invalid_item_rolls_back_the_whole_batch,
    last_writer_wins_by_client_clock,
    equal_clocks_break_ties_by_writer_in_any_arrival_order,
    matching_base_version_applies_whatever_the_clock,
    reject_stale_refuses_and_returns_the_hub_value,
    client_refs_are_stable_and_resolve_references,
    natural_key_addresses_one_record,
    deletes_are_final_tombstones,
    pull_returns_what_a_client_lacks_once,
    change_pages_filter_by_entity_without_rescanning,
    concurrent_batches_for_one_natural_key_make_one_record,
);

async fn invalid_item_rolls_back_the_whole_batch(t: TestStore) {
    let s = &t.store;
    let err = s
        .apply_sync_batch(&batch(
            "a",
            vec![
                upsert(&CUSTOMER, json!({"name": "Ok"}), at(1)),
                upsert(&CUSTOMER, json!({"email": "not-an-email"}), at(2)),
                upsert(&INVOICE, json!({"customer_id": "cust_nobody", "amount": 5, "currency": "eur"}), at(3)),
            ],
        ))
        .await
        .unwrap_err();
    let StoreError::InvalidBatch(errors) = err else { panic!("expected InvalidBatch, got {err:?}") };
    let listed: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(listed, vec![(1, "fields.name"), (1, "fields.email"), (2, "fields.customer_id")]);
    // Item 0 was valid and had been written inside the transaction: it is gone too.
    assert_eq!(s.head_seq().await.unwrap(), 0);
    assert_eq!(s.count(&CUSTOMER).await.unwrap(), 0);
}

async fn last_writer_wins_by_client_clock(t: TestStore) {
    let s = &t.store;
    let out = s.apply_sync_batch(&batch("a", vec![upsert(&CUSTOMER, json!({"name": "v1"}), at(10))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Created);
    let id = out[0].record.as_ref().unwrap().id.clone();
    // b edits later (by its clock)…
    let out = s
        .apply_sync_batch(&batch("b", vec![with_id(upsert(&CUSTOMER, json!({"name": "b"}), at(30)), &id)]))
        .await
        .unwrap();
    assert_eq!(out[0].status, ItemStatus::Updated);
    // …so a's edit made earlier but pushed later loses, and a sees both values.
    let out = s
        .apply_sync_batch(&batch("a", vec![with_id(upsert(&CUSTOMER, json!({"name": "a-old"}), at(20)), &id)]))
        .await
        .unwrap();
    assert_eq!(out[0].status, ItemStatus::Conflict);
    let c = out[0].conflict.as_ref().unwrap();
    assert_eq!((c.winner, c.reason), (Winner::Hub, "older_edit"));
    assert_eq!(c.losing.value, json!({"name": "a-old"}));
    assert_eq!(c.losing.clock.edited_at, at(20));
    assert_eq!(out[0].record.as_ref().unwrap().fields["name"], "b");
    // A newer edit from a wins.
    let out = s
        .apply_sync_batch(&batch("a", vec![with_id(upsert(&CUSTOMER, json!({"name": "a-new"}), at(40)), &id)]))
        .await
        .unwrap();
    assert_eq!(out[0].status, ItemStatus::Updated);
    assert_eq!(out[0].record.as_ref().unwrap().version, 3);
    let clock = s.clock_of(&CUSTOMER, &id).await.unwrap().unwrap();
    assert_eq!((clock.edited_at.as_str(), clock.writer.as_str()), (at(40).as_str(), "client:a"));
    // An API write afterwards: the clock becomes the hub's commit time.
    s.update(&CUSTOMER, &id, &obj(json!({"name": "api"})), None, "api").await.unwrap();
    let clock = s.clock_of(&CUSTOMER, &id).await.unwrap().unwrap();
    assert_eq!(clock.writer, "hub");
    assert!(clock.edited_at > at(40));
    let origins: Vec<String> = s.changes_after(0, 100).await.unwrap().into_iter().map(|c| c.origin).collect();
    assert_eq!(origins, vec!["client:a", "client:b", "client:a", "api"]);
}

async fn equal_clocks_break_ties_by_writer_in_any_arrival_order(t: TestStore) {
    let s = &t.store;
    for order in [["a", "b"], ["b", "a"]] {
        let out =
            s.apply_sync_batch(&batch("seed", vec![upsert(&CUSTOMER, json!({"name": "start"}), at(1))])).await.unwrap();
        let id = out[0].record.as_ref().unwrap().id.clone();
        for client in order {
            s.apply_sync_batch(&batch(client, vec![with_id(upsert(&CUSTOMER, json!({"name": client}), at(5)), &id)]))
                .await
                .unwrap();
        }
        let name = s.get(&CUSTOMER, &id).await.unwrap().unwrap().fields["name"].clone();
        assert_eq!(name, "b", "arrival order {order:?}");
    }
}

async fn matching_base_version_applies_whatever_the_clock(t: TestStore) {
    let s = &t.store;
    let out = s.apply_sync_batch(&batch("a", vec![upsert(&CUSTOMER, json!({"name": "v1"}), at(50))])).await.unwrap();
    let id = out[0].record.as_ref().unwrap().id.clone();
    // b's clock runs behind, but b saw version 1: its edit is causally later.
    let mut item = with_id(upsert(&CUSTOMER, json!({"name": "b"}), at(10)), &id);
    item.base_version = Some(1);
    let out = s.apply_sync_batch(&batch("b", vec![item])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Updated);
    assert!(out[0].conflict.is_none());
    // A stale base with a newer clock still wins, and reports what it overwrote.
    let mut item = with_id(upsert(&CUSTOMER, json!({"name": "c"}), at(60)), &id);
    item.base_version = Some(1);
    let out = s.apply_sync_batch(&batch("c", vec![item])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Updated);
    let c = out[0].conflict.as_ref().unwrap();
    assert_eq!((c.winner, c.reason), (Winner::Client, "stale_base_version"));
    assert_eq!(c.losing.value["name"], "b");
    assert_eq!(c.losing.version, Some(2));
}

async fn reject_stale_refuses_and_returns_the_hub_value(t: TestStore) {
    let s = &t.store;
    let strict = |client: &str, items| SyncBatch { policy: ConflictPolicy::RejectStale, ..batch(client, items) };
    let out = s.apply_sync_batch(&strict("a", vec![upsert(&CUSTOMER, json!({"name": "v1"}), at(1))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Created);
    let id = out[0].record.as_ref().unwrap().id.clone();
    let mut ok = with_id(upsert(&CUSTOMER, json!({"name": "v2"}), at(2)), &id);
    ok.base_version = Some(1);
    assert_eq!(s.apply_sync_batch(&strict("a", vec![ok])).await.unwrap()[0].status, ItemStatus::Updated);
    // Based on version 1 although the hub is at 2, even with a newer clock: refused.
    let mut stale = with_id(upsert(&CUSTOMER, json!({"name": "late"}), at(59)), &id);
    stale.base_version = Some(1);
    // No base version on an existing record means "expected none": refused too.
    let blind = with_id(upsert(&CUSTOMER, json!({"name": "blind"}), at(59)), &id);
    let out = s.apply_sync_batch(&strict("b", vec![stale, blind])).await.unwrap();
    for o in &out {
        assert_eq!(o.status, ItemStatus::Conflict);
        let c = o.conflict.as_ref().unwrap();
        assert_eq!((c.winner, c.reason), (Winner::Hub, "stale_base_version"));
        assert_eq!(o.record.as_ref().unwrap().fields["name"], "v2");
        assert_eq!(o.record.as_ref().unwrap().version, 2);
    }
    assert_eq!(out[0].conflict.as_ref().unwrap().losing.value, json!({"name": "late"}));
    assert_eq!(s.head_seq().await.unwrap(), 2);
}

async fn client_refs_are_stable_and_resolve_references(t: TestStore) {
    let s = &t.store;
    let mut customer = upsert(&CUSTOMER, json!({"name": "Offline Ltd"}), at(1));
    customer.client_ref = Some("local-c1".into());
    let mut invoice = upsert(&INVOICE, json!({"customer_id": "local-c1", "amount": 900, "currency": "EUR"}), at(2));
    invoice.client_ref = Some("local-i1".into());
    let out = s.apply_sync_batch(&batch("a", vec![customer.clone(), invoice])).await.unwrap();
    let cust_id = out[0].record.as_ref().unwrap().id.clone();
    assert!(cust_id.starts_with("cust_"));
    assert_eq!(out[1].record.as_ref().unwrap().fields["customer_id"], json!(cust_id));
    // Re-sending (a retry after a lost response) updates the same record.
    customer.fields = obj(json!({"name": "Offline Ltd."}));
    customer.edited_at = at(3);
    let out = s.apply_sync_batch(&batch("a", vec![customer.clone()])).await.unwrap();
    assert_eq!(out[0].record.as_ref().unwrap().id, cust_id);
    assert_eq!(out[0].status, ItemStatus::Updated);
    assert_eq!(s.count(&CUSTOMER).await.unwrap(), 1);
    // Refs are per client: the same ref from b is another record.
    let out = s.apply_sync_batch(&batch("b", vec![customer])).await.unwrap();
    assert_ne!(out[0].record.as_ref().unwrap().id, cust_id);
    assert_eq!(s.count(&CUSTOMER).await.unwrap(), 2);
    // An unknown hub id is an error, not a create.
    let err = s
        .apply_sync_batch(&batch("a", vec![with_id(upsert(&CUSTOMER, json!({"name": "x"}), at(4)), "cust_nope")]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch(ref e) if e[0].field == "id"), "{err:?}");
}

async fn natural_key_addresses_one_record(t: TestStore) {
    let s = &t.store;
    let reading = |exp: &str, ts| upsert(&STOCK_READING, json!({"gtin": "4006381333931", "expiration_date": exp}), ts);
    let out = s.apply_sync_batch(&batch("a", vec![reading("2025-01-01T00:00:00", at(1))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Created);
    assert_eq!(out[0].record.as_ref().unwrap().fields["expiration_date"], "2025-01-01T00:00:00Z");
    let out = s.apply_sync_batch(&batch("b", vec![reading("2025-02-01T00:00:00Z", at(2))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Updated);
    assert_eq!(s.count(&STOCK_READING).await.unwrap(), 1);
    // The REST path enforces the same uniqueness with a field error.
    let err = s
        .create(&STOCK_READING, &obj(json!({"gtin": "4006381333931", "expiration_date": "2025-03-01"})), "api")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(ref f) if f[0].field == "gtin"), "{err:?}");
    // Once the reading is deleted its gtin is free again.
    let id = out[0].record.as_ref().unwrap().id.clone();
    s.delete(&STOCK_READING, &id, None, "api").await.unwrap();
    let fresh = s
        .create(&STOCK_READING, &obj(json!({"gtin": "4006381333931", "expiration_date": "2025-03-01"})), "api")
        .await
        .unwrap();
    assert_ne!(fresh.id, id);
}

async fn deletes_are_final_tombstones(t: TestStore) {
    let s = &t.store;
    let out = s.apply_sync_batch(&batch("a", vec![upsert(&CUSTOMER, json!({"name": "Gone"}), at(1))])).await.unwrap();
    let id = out[0].record.as_ref().unwrap().id.clone();
    let out = s.apply_sync_batch(&batch("a", vec![delete(&CUSTOMER, &id, at(2))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Deleted);
    assert!(out[0].record.as_ref().unwrap().deleted_at.is_some());
    // Another client's pull carries the tombstone.
    let page = s.pull("client:b", 0, 100, &[&CUSTOMER]).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].op, Op::Delete);
    assert!(page.records[0].record["deleted_at"].is_string());
    // Deleting again changes nothing; an edit, even a newer one, cannot resurrect.
    let out = s
        .apply_sync_batch(&batch(
            "b",
            vec![delete(&CUSTOMER, &id, at(3)), with_id(upsert(&CUSTOMER, json!({"name": "Back"}), at(59)), &id)],
        ))
        .await
        .unwrap();
    assert_eq!(out[0].status, ItemStatus::Unchanged);
    assert_eq!(out[1].status, ItemStatus::Conflict);
    assert_eq!(out[1].conflict.as_ref().unwrap().reason, "deleted");
    assert_eq!(s.head_seq().await.unwrap(), 2);
    // A delete older than the last edit loses under last-writer-wins.
    let out = s.apply_sync_batch(&batch("a", vec![upsert(&CUSTOMER, json!({"name": "Kept"}), at(20))])).await.unwrap();
    let kept = out[0].record.as_ref().unwrap().id.clone();
    let out = s.apply_sync_batch(&batch("b", vec![delete(&CUSTOMER, &kept, at(10))])).await.unwrap();
    assert_eq!(out[0].status, ItemStatus::Conflict);
    assert!(s.get(&CUSTOMER, &kept).await.unwrap().unwrap().deleted_at.is_none());
}

async fn pull_returns_what_a_client_lacks_once(t: TestStore) {
    let s = &t.store;
    let mine = s.apply_sync_batch(&batch("a", vec![upsert(&CUSTOMER, json!({"name": "mine"}), at(1))])).await.unwrap()
        [0]
    .record
    .clone()
    .unwrap();
    let theirs = s.create(&CUSTOMER, &obj(json!({"name": "theirs"})), "api").await.unwrap();
    for i in 0..3 {
        s.update(&CUSTOMER, &theirs.id, &obj(json!({"name": format!("theirs {i}")})), None, "api").await.unwrap();
    }
    let page = s.pull("client:a", 0, 100, &[&CUSTOMER, &INVOICE]).await.unwrap();
    // Own write skipped, four changes of one record coalesced into its current state.
    let got: Vec<(&str, i64)> = page.records.iter().map(|r| (r.id.as_str(), r.version)).collect();
    assert_eq!(got, vec![(theirs.id.as_str(), 4)]);
    assert_eq!(page.records[0].record["name"], "theirs 2");
    assert_eq!(page.next_after, 5);
    assert!(!page.has_more);
    // Client b lacks both.
    let page = s.pull("client:b", 0, 100, &[&CUSTOMER]).await.unwrap();
    assert_eq!(page.records.len(), 2);
    assert_eq!(page.records[0].id, mine.id);
    // Paging: at most `limit` changes per page, has_more until the end.
    let first = s.pull("client:b", 0, 2, &[&CUSTOMER]).await.unwrap();
    assert!(first.has_more);
    assert_eq!(first.next_after, 2);
    let rest = s.pull("client:b", first.next_after, 100, &[&CUSTOMER]).await.unwrap();
    assert!(!rest.has_more);
    assert_eq!(rest.records.iter().map(|r| r.version).collect::<Vec<_>>(), vec![4]);
    // Entities the client may not see are not read at all.
    assert!(s.pull("client:b", 0, 100, &[&INVOICE]).await.unwrap().records.is_empty());
    // A cursor beyond the log is refused, not silently empty.
    assert!(matches!(
        s.pull("client:b", 99, 10, &[&CUSTOMER]).await,
        Err(StoreError::CursorAhead { cursor: 99, head: 5 })
    ));
}

async fn change_pages_filter_by_entity_without_rescanning(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "C"})), "api").await.unwrap();
    for i in 0..3 {
        s.create(&INVOICE, &obj(json!({"customer_id": c.id, "amount": i, "currency": "eur"})), "api").await.unwrap();
    }
    let page = s.change_page(0, 10, Some(&[&CUSTOMER])).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.next_after, 4, "scanned to the head, not just the last match");
    let page = s.change_page(0, 2, Some(&[&INVOICE])).await.unwrap();
    assert_eq!(page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(page.next_after, 3);
    let page = s.change_page(3, 2, None).await.unwrap();
    assert_eq!(page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4]);
}

async fn concurrent_batches_for_one_natural_key_make_one_record(t: TestStore) {
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let s = t.store.clone();
        tasks.push(tokio::spawn(async move {
            s.apply_sync_batch(&batch(
                &format!("till-{i}"),
                vec![upsert(
                    &STOCK_READING,
                    json!({"gtin": "race", "expiration_date": format!("2025-01-0{}", i + 1)}),
                    at(i),
                )],
            ))
            .await
        }));
    }
    for task in tasks {
        let out = task.await.unwrap().expect("no batch fails on a natural-key race");
        assert_ne!(out[0].status, ItemStatus::Unchanged);
    }
    assert_eq!(t.store.count(&STOCK_READING).await.unwrap(), 1);
    // The newest edit (till-5, clock :05) holds, whatever order they landed in.
    let page = t.store.pull("client:nobody", 0, 100, &[&STOCK_READING]).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].record["expiration_date"], "2025-01-06T00:00:00Z");
    assert_eq!(page.records[0].clock.writer, "client:till-5");
}
