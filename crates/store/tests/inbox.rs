//! The inbox and inward writes, on SQLite and PostgreSQL alike.

use serde_json::{json, Map, Value};
use syncflow_core::CUSTOMER;
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, InboxOutcome, InwardOp, InwardWrite, LinkUpdate, NewInboxEvent};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn event(id: &str, created: i64) -> NewInboxEvent {
    NewInboxEvent {
        system: "stripe".into(),
        event_id: id.into(),
        event_type: "customer.updated".into(),
        entity: Some("customer".into()),
        external_id: Some("cus_1".into()),
        event_created: created,
        source: "webhook".into(),
        payload: "{}".into(),
    }
}

fn write(inbox: i64, external_id: &str) -> InwardWrite {
    InwardWrite {
        system: "stripe".into(),
        inbox: Some((syncflow_store::InboxRef::Id(inbox), InboxOutcome::Applied, Some("why".into()))),
        link: Some(LinkUpdate {
            external_id: external_id.into(),
            synced_version: 0,
            fingerprint: Some("fp".into()),
            snapshot: Some("{}".into()),
        }),
        conflicts: Vec::new(),
        resync: false,
    }
}

backend_tests!(an_event_is_recorded_once_and_claimed_by_one, inward_writes_commit_with_link_and_outcome_or_not_at_all);

async fn an_event_is_recorded_once_and_claimed_by_one(t: TestStore) {
    let s = &t.store;
    let (row, inserted) = s.inbox_receive(&event("evt_1", 100), 60_000).await.unwrap();
    assert!(inserted);
    assert_eq!(row.outcome, InboxOutcome::Received);
    let (again, inserted) = s.inbox_receive(&event("evt_1", 100), 60_000).await.unwrap();
    assert!(!inserted, "the same event id is recorded once");
    assert_eq!((again.id, again.event_type.as_str()), (row.id, "customer.updated"));

    // The inserter holds the lease.
    assert!(!s.inbox_claim(row.id, 60_000).await.unwrap(), "a live lease keeps others out");
    assert!(s.inbox_unsettled("stripe", 10).await.unwrap().is_empty(), "leased rows are not up for recovery");
    s.inbox_settle(row.id, InboxOutcome::Echo, Some("cust_1"), Some("ours")).await.unwrap();
    assert!(!s.inbox_claim(row.id, 0).await.unwrap(), "a settled event is never applied again");
    assert_eq!(s.inbox_last_applied("stripe", "cus_1", -1).await.unwrap(), Some(100));
    assert_eq!(s.inbox_last_applied("stripe", "cus_1", row.id).await.unwrap(), None, "excludes the asking row");

    // A lease that ran out makes the row recoverable.
    let (other, _) = s.inbox_receive(&event("evt_2", 90), -1).await.unwrap();
    let unsettled = s.inbox_unsettled("stripe", 10).await.unwrap();
    assert_eq!(unsettled.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), vec!["evt_2"]);
    assert!(s.inbox_claim(other.id, 60_000).await.unwrap());
    let listed = s.inbox("stripe", 0, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].remarks.as_deref(), Some("ours"));
}

async fn inward_writes_commit_with_link_and_outcome_or_not_at_all(t: TestStore) {
    let s = &t.store;
    let taken = s.create(&CUSTOMER, &obj(json!({"name": "Ada"})), "api").await.unwrap();
    let (row, _) = s.inbox_receive(&event("evt_1", 100), 0).await.unwrap();
    s.apply_inward(
        &CUSTOMER,
        InwardOp::Update { id: &taken.id, patch: &Map::new(), expected_version: None },
        &write(row.id, "cus_1"),
    )
    .await
    .unwrap();
    let link = s.link("customer", &taken.id, "stripe").await.unwrap().unwrap();
    assert_eq!((link.external_id.as_str(), link.synced_version), ("cus_1", Some(1)), "an empty patch still links");
    assert_eq!(s.changes_after(0, 10).await.unwrap().len(), 1, "…and writes no change");

    // `cus_1` is linked already: the create fails and leaves no record, change or outcome.
    let (row2, _) = s.inbox_receive(&event("evt_2", 101), 0).await.unwrap();
    let body = obj(json!({"name": "Bo"}));
    assert!(s.apply_inward(&CUSTOMER, InwardOp::Create(&body), &write(row2.id, "cus_1")).await.is_err());
    assert_eq!(s.count(&CUSTOMER).await.unwrap(), 1);
    assert_eq!(s.changes_after(0, 10).await.unwrap().len(), 1);
    assert_eq!(s.inbox_event("stripe", "evt_2").await.unwrap().unwrap().outcome, InboxOutcome::Received);

    let created = s.apply_inward(&CUSTOMER, InwardOp::Create(&body), &write(row2.id, "cus_2")).await.unwrap();
    let change = s.changes_after(0, 10).await.unwrap().pop().unwrap();
    assert_eq!((change.record_id.as_str(), change.origin.as_str()), (created.id.as_str(), "stripe"));
    let settled = s.inbox_event("stripe", "evt_2").await.unwrap().unwrap();
    assert_eq!(settled.outcome, InboxOutcome::Applied);
    assert_eq!(settled.record_id.as_deref(), Some(created.id.as_str()));
    assert_eq!(s.link_by_external_id("stripe", "customer", "cus_2").await.unwrap().unwrap().record_id, created.id);

    // A stale version is refused, and settles nothing.
    let (row3, _) = s.inbox_receive(&event("evt_3", 102), 0).await.unwrap();
    let patch = obj(json!({"name": "Bo B."}));
    let op = InwardOp::Update { id: &created.id, patch: &patch, expected_version: Some(0) };
    assert!(s.apply_inward(&CUSTOMER, op, &write(row3.id, "cus_2")).await.is_err());
    assert_eq!(s.inbox_event("stripe", "evt_3").await.unwrap().unwrap().outcome, InboxOutcome::Received);
    let op = InwardOp::Delete { id: &created.id, expected_version: Some(1) };
    let deleted = s.apply_inward(&CUSTOMER, op, &write(row3.id, "cus_2")).await.unwrap();
    assert!(deleted.deleted_at.is_some());
    assert_eq!(s.link("customer", &created.id, "stripe").await.unwrap().unwrap().synced_version, Some(2));
}
