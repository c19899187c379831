//! Operator reads: a record's history, batched links, the change log in both
//! orders and by record, dispatch lag, idempotency keys — on SQLite and PostgreSQL.

use serde_json::{json, Map, Value};
use syncflow_core::sync::{MergePolicy, NewConflict};
use syncflow_core::{CUSTOMER, INVOICE};
use syncflow_store::testing::TestStore;
use syncflow_store::{
    backend_tests, ChangeQuery, DeliveryStatus, Finish, InboxOutcome, InwardOp, InwardWrite, KeyClaim, LinkUpdate,
    ListQuery, NewInboxEvent, Route, StoredResponse,
};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn finish(status: DeliveryStatus, http: u16, remarks: Option<&str>, link: Option<LinkUpdate>) -> Finish {
    Finish {
        status,
        next_attempt_at: Some(0),
        http_status: Some(http),
        external_id: link.as_ref().map(|l| l.external_id.clone()),
        remarks: remarks.map(str::to_string),
        duration_ms: 3,
        link,
        callback_to: None,
    }
}

fn stripe_route() -> Vec<Route> {
    vec![Route { system: "stripe".into(), entities: vec!["customer".into()] }]
}

backend_tests!(
    history_tells_a_records_story_in_time_order,
    links_of_a_page_come_in_one_read,
    changes_list_by_record_in_both_orders,
    dispatch_lag_counts_only_what_would_be_delivered,
    catalog_lists_page_both_ways,
    idempotency_keys_run_once_and_replay,
);

async fn history_tells_a_records_story_in_time_order(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Ada"})), "api").await.unwrap();
    let other = s.create(&CUSTOMER, &obj(json!({"name": "Other"})), "api").await.unwrap();
    s.dispatch(&stripe_route(), 100).await.unwrap();
    // First attempt: a 503, retried; second: delivered, linked to cus_1.
    let claimed = s.claim("stripe", "n", 1, 60_000, &[]).await.unwrap();
    assert_eq!(claimed[0].delivery.record_id, c.id);
    let retry = finish(DeliveryStatus::Retrying, 503, Some("HTTP 503 from stripe"), None);
    assert!(s.finish(&claimed[0].delivery, "n", &retry).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let claimed = s.claim("stripe", "n", 10, 60_000, &[]).await.unwrap();
    let mine = claimed.iter().find(|c2| c2.delivery.record_id == c.id).expect("retry is due");
    let link = LinkUpdate { external_id: "cus_1".into(), synced_version: 1, fingerprint: None, snapshot: None };
    assert!(s.finish(&mine.delivery, "n", &finish(DeliveryStatus::Delivered, 200, None, Some(link))).await.unwrap());
    // Timelines are ordered by time (ms for attempts and events): let the clock move.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    // An edit made in Stripe comes back in.
    let event = NewInboxEvent {
        system: "stripe".into(),
        event_id: "evt_1".into(),
        event_type: "customer.updated".into(),
        entity: Some("customer".into()),
        external_id: Some("cus_1".into()),
        event_created: 1,
        source: "webhook".into(),
        payload: "{}".into(),
    };
    let (row, _) = s.inbox_receive(&event, 60_000).await.unwrap();
    let write = InwardWrite {
        system: "stripe".into(),
        inbox: Some((
            syncflow_store::InboxRef::Id(row.id),
            InboxOutcome::Applied,
            Some("name changed in stripe".into()),
        )),
        link: Some(LinkUpdate { external_id: "cus_1".into(), synced_version: 0, fingerprint: None, snapshot: None }),
        conflicts: vec![NewConflict {
            field: "name".into(),
            hub_value: json!("Ada (hub edit)"),
            external_value: json!("Ada L."),
            policy: MergePolicy::ExternalWins,
            winner: Some("external"),
        }],
        resync: false,
    };
    let patch = obj(json!({"name": "Ada L."}));
    s.apply_inward(&CUSTOMER, InwardOp::Update { id: &c.id, patch: &patch, expected_version: None }, &write)
        .await
        .unwrap();

    let h = s.record_history(&CUSTOMER, &c.id).await.unwrap().expect("known record");
    let origins: Vec<&str> = h.changes.iter().map(|c| c.origin.as_str()).collect();
    assert_eq!(origins, ["api", "stripe"]);
    assert_eq!(h.deliveries.len(), 1, "only this record's deliveries");
    let outcomes: Vec<&str> = h.deliveries[0].attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retrying", "delivered"]);
    assert_eq!(h.deliveries[0].attempts[0].remarks.as_deref(), Some("HTTP 503 from stripe"));
    assert_eq!(h.inward.len(), 1);
    assert_eq!(h.inward[0].outcome, InboxOutcome::Applied);
    assert_eq!(h.links_json()["stripe"]["id"], "cus_1");
    assert_eq!(h.links_json()["stripe"]["synced_version"], 2, "the inward write's version");
    assert_eq!(h.conflicts.len(), 1);
    assert_eq!(h.conflicts[0]["field"], "name");

    let timeline: Vec<(&str, String)> = h.timeline().iter().map(|e| (e.kind, e.outcome.clone())).collect();
    let expected: Vec<(&str, String)> = vec![
        ("change", "upsert v1".into()),
        ("delivery", "retrying".into()),
        ("delivery", "delivered".into()),
        ("change", "upsert v2".into()),
        ("inward", "applied".into()),
        ("conflict", "external won".into()),
    ];
    assert_eq!(timeline, expected);
    let json = h.to_json();
    assert_eq!(json["deliveries"]["stripe"][0]["history"][1]["outcome"], "delivered");
    assert_eq!(json["record"]["name"], "Ada L.");

    // The other record's history holds only its own rows; an unknown id has none.
    let o = s.record_history(&CUSTOMER, &other.id).await.unwrap().unwrap();
    assert!(o.inward.is_empty() && o.links.is_empty() && o.conflicts.is_empty());
    // Claimed with the retry and not finished: in flight, shown by its current state.
    assert_eq!(o.deliveries[0].delivery.status, DeliveryStatus::InFlight);
    assert_eq!(o.timeline().last().map(|e| e.outcome.as_str()), Some("in_flight"));
    assert!(s.record_history(&CUSTOMER, "cust_nope").await.unwrap().is_none());
}

async fn links_of_a_page_come_in_one_read(t: TestStore) {
    let s = &t.store;
    let a = s.create(&CUSTOMER, &obj(json!({"name": "A"})), "api").await.unwrap();
    let b = s.create(&CUSTOMER, &obj(json!({"name": "B"})), "api").await.unwrap();
    s.dispatch(&stripe_route(), 100).await.unwrap();
    let claimed = s.claim("stripe", "n", 10, 60_000, &[]).await.unwrap();
    let link = LinkUpdate { external_id: "cus_a".into(), synced_version: 1, fingerprint: None, snapshot: None };
    let ca = claimed.iter().find(|c| c.delivery.record_id == a.id).unwrap();
    s.finish(&ca.delivery, "n", &finish(DeliveryStatus::Delivered, 200, None, Some(link))).await.unwrap();
    let links = s.links_of(&CUSTOMER, &[a.id.clone(), b.id.clone()]).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[&a.id][0].external_id, "cus_a");
    assert!(!links.contains_key(&b.id));
    assert!(s.links_of(&INVOICE, std::slice::from_ref(&a.id)).await.unwrap().is_empty(), "links are per entity");
}

async fn changes_list_by_record_in_both_orders(t: TestStore) {
    let s = &t.store;
    let a = s.create(&CUSTOMER, &obj(json!({"name": "A"})), "api").await.unwrap();
    let b = s.create(&CUSTOMER, &obj(json!({"name": "B"})), "api").await.unwrap();
    for n in 2..=4 {
        s.update(&CUSTOMER, &a.id, &obj(json!({"name": format!("A{n}")})), None, "api").await.unwrap();
    }
    let seqs = |v: &[syncflow_core::Change]| v.iter().map(|c| c.seq).collect::<Vec<_>>();
    let q = ChangeQuery { record_id: Some(a.id.clone()), limit: 2, ..Default::default() };
    let (page, more) = s.change_list(&q).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![1, 3], true));
    let (page, more) = s.change_list(&ChangeQuery { after: Some(3), ..q.clone() }).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![4, 5], false));

    let desc = ChangeQuery { descending: true, ..q.clone() };
    let (page, more) = s.change_list(&desc).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![5, 4], true));
    let (page, more) = s.change_list(&ChangeQuery { after: Some(4), ..desc.clone() }).await.unwrap();
    assert_eq!((seqs(&page), more), (vec![3, 1], false));

    let all_desc = ChangeQuery { descending: true, limit: 10, ..Default::default() };
    assert_eq!(seqs(&s.change_list(&all_desc).await.unwrap().0), vec![5, 4, 3, 2, 1]);
    let only_b = ChangeQuery { record_id: Some(b.id.clone()), limit: 10, ..Default::default() };
    assert_eq!(seqs(&s.change_list(&only_b).await.unwrap().0), vec![2]);
    let invoices = ChangeQuery { entities: Some(vec!["invoice"]), limit: 10, ..Default::default() };
    assert!(s.change_list(&invoices).await.unwrap().0.is_empty());
}

async fn dispatch_lag_counts_only_what_would_be_delivered(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "A"})), "api").await.unwrap();
    s.create(&INVOICE, &obj(json!({"customer_id": c.id, "amount": 1, "currency": "eur"})), "api").await.unwrap();
    s.create(&CUSTOMER, &obj(json!({"name": "From stripe"})), "stripe").await.unwrap();
    // No systems: nothing will ever be dispatched, so nothing lags.
    assert_eq!(s.dispatch_lag(&[]).await.unwrap(), 0);
    // Stripe takes customers, not invoices, and never its own changes: one waits.
    assert_eq!(s.dispatch_lag(&stripe_route()).await.unwrap(), 1);
    s.dispatch(&stripe_route(), 100).await.unwrap();
    assert_eq!(s.dispatch_lag(&stripe_route()).await.unwrap(), 0);
}

async fn catalog_lists_page_both_ways(t: TestStore) {
    let s = &t.store;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(s.create(&CUSTOMER, &obj(json!({"name": format!("C{n}")})), "api").await.unwrap().id);
    }
    let q = ListQuery { limit: 2, descending: true, ..Default::default() };
    let mut seen = Vec::new();
    let mut page = s.list(&CUSTOMER, &q).await.unwrap();
    loop {
        seen.extend(page.data.iter().map(|r| r.id.clone()));
        if !page.has_more {
            break;
        }
        let after = page.data.last().map(|r| r.id.clone());
        page = s.list(&CUSTOMER, &ListQuery { after, ..q.clone() }).await.unwrap();
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
}

async fn idempotency_keys_run_once_and_replay(t: TestStore) {
    let s = &t.store;
    // Many concurrent first requests: exactly one runs.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.idempotency_claim("tok", "k1", "h1").await.unwrap() }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.unwrap());
    }
    assert_eq!(claims.iter().filter(|c| **c == KeyClaim::Run).count(), 1, "{claims:?}");
    assert!(claims.iter().all(|c| matches!(c, KeyClaim::Run | KeyClaim::InProgress)));

    let response = StoredResponse { status: 201, headers: r#"{"etag":"\"1\""}"#.into(), body: r#"{"id":"x"}"#.into() };
    s.idempotency_complete("tok", "k1", &response).await.unwrap();
    assert_eq!(s.idempotency_claim("tok", "k1", "h1").await.unwrap(), KeyClaim::Replay(response));
    assert_eq!(s.idempotency_claim("tok", "k1", "other body").await.unwrap(), KeyClaim::Mismatch);
    // Keys are per scope (token).
    assert_eq!(s.idempotency_claim("other-token", "k1", "h2").await.unwrap(), KeyClaim::Run);
    // A released (failed) claim can run again.
    s.idempotency_release("other-token", "k1").await.unwrap();
    assert_eq!(s.idempotency_claim("other-token", "k1", "h2").await.unwrap(), KeyClaim::Run);
}
