//! Conflicts and the inbox through the operator API, on both backends: a conflict
//! recorded by an inward apply is listed, resolved once (the resolution is an
//! ordinary change), and bad requests change nothing.

mod common;

use serde_json::json;
use syncflow_core::sync::{InboxOutcome, MergePolicy, NewConflict};
use syncflow_core::CUSTOMER;
use syncflow_engine::SystemConfig;
use syncflow_server::{ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, InwardOp, InwardWrite, NewInboxEvent};

backend_tests!(conflicts_are_listed_and_resolved_once, inbox_lists_events_and_replays_dead_ones);

fn app(t: &TestStore) -> common::App {
    let stripe = SystemConfig::from_table(
        toml::from_str(
            "name = \"stripe\"\nkind = \"stripe\"\nsecret_key = \"sk_test_x\"\napi_base = \"http://127.0.0.1:9\"",
        )
        .unwrap(),
    )
    .unwrap();
    let state = AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![stripe]);
    common::App::from_state(state)
}

async fn conflicts_are_listed_and_resolved_once(t: TestStore) {
    let app = app(&t);
    let s = &t.store;
    let rec = s.create(&CUSTOMER, json!({"name": "Hub name"}).as_object().unwrap(), "api").await.unwrap();
    let held = NewConflict {
        field: "name".into(),
        hub_value: json!("Hub name"),
        external_value: json!("Stripe name"),
        policy: MergePolicy::Manual,
        winner: None,
    };
    let write = InwardWrite { system: "stripe".into(), inbox: None, link: None, conflicts: vec![held], resync: false };
    let empty = serde_json::Map::new();
    let op = InwardOp::Update { id: &rec.id, patch: &empty, expected_version: None };
    s.apply_inward(&CUSTOMER, op, &write).await.unwrap();

    let (status, list) = app.get("/v1/conflicts?status=open", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let c = &list["data"][0];
    assert_eq!(
        (c["field"].as_str(), c["policy"].as_str(), c["status"].as_str()),
        (Some("name"), Some("manual"), Some("open"))
    );
    let id = c["id"].as_i64().unwrap();
    let (status, _) = app.get(&format!("/v1/conflicts?record_id={}", rec.id), None).await;
    assert_eq!(status, 200);

    let head = app.head_seq().await;
    let (status, err) = app.post(&format!("/v1/conflicts/{id}/resolve"), None, &json!({"keep": "sometimes"})).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = app.get("/v1/conflicts?status=maybe", None).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(app.head_seq().await, head, "a refused request writes nothing");

    let (status, err) =
        app.post(&format!("/v1/conflicts/{id}/resolve"), None, &json!({"keep": "value", "value": null})).await;
    assert_eq!(status, 422, "the hub requires a name: {err}");
    assert_eq!(app.head_seq().await, head, "a refused resolution writes nothing");
    let (_, still) = app.get(&format!("/v1/conflicts/{id}"), None).await;
    assert_eq!(still["status"], "open", "and leaves the conflict open");

    let (status, done) = app.post(&format!("/v1/conflicts/{id}/resolve"), None, &json!({"keep": "external"})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["conflict"]["status"], "resolved");
    assert_eq!(done["conflict"]["winner"], "external");
    assert_eq!(done["record"]["name"], "Stripe name");
    let changes = s.changes_of_record("customer", &rec.id).await.unwrap();
    assert_eq!(changes.last().unwrap().origin, "api", "the resolution flows out as an ordinary change");
    let (status, _) = app.post(&format!("/v1/conflicts/{id}/resolve"), None, &json!({"keep": "hub"})).await;
    assert_eq!(status, 409, "resolved once");
    let (status, _) = app.get("/v1/conflicts/999999", None).await;
    assert_eq!(status, 404);
}

async fn inbox_lists_events_and_replays_dead_ones(t: TestStore) {
    let app = app(&t);
    let s = &t.store;
    let new = NewInboxEvent {
        system: "stripe".into(),
        event_id: "evt_1".into(),
        event_type: "invoice.created".into(),
        entity: Some("invoice".into()),
        external_id: Some("in_1".into()),
        event_created: 1,
        source: "webhook".into(),
        payload: "{}".into(),
    };
    let (row, _) = s.inbox_receive(&new, 60_000).await.unwrap();
    s.inbox_settle(row.id, InboxOutcome::Dead, None, Some("customer not linked — gave up after 10 attempts"))
        .await
        .unwrap();
    let (status, list) = app.get("/v1/inbox?system=stripe&outcome=dead", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["event_id"], "evt_1");
    assert_eq!(app.get("/v1/inbox?system=nope", None).await.0, 404);
    assert_eq!(app.get("/v1/inbox?system=stripe&outcome=bogus", None).await.0, 400);
    let (status, replayed) = app.send(axum::http::Method::POST, "/v1/systems/stripe/inbox/replay", None, None).await;
    assert_eq!((status.as_u16(), replayed["requeued"].as_i64()), (200, Some(1)), "{replayed}");
    assert_eq!(s.inbox_event("stripe", "evt_1").await.unwrap().unwrap().outcome, InboxOutcome::Received);
}
