//! The operator API over the transaction table, driven with `oneshot` on both
//! backends. Deliveries are created and finished through the store directly, so
//! these tests need no engine running.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::SystemConfig;
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryStatus, Finish, Route};
use tower::ServiceExt;

async fn call(app: &axum::Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())))
}

backend_tests!(operator_api_inspects_pauses_retries_and_replays);

async fn operator_api_inspects_pauses_retries_and_replays(t: TestStore) {
    let crm = SystemConfig::from_table(
        toml::from_str("name = \"crm\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"").unwrap(),
    )
    .unwrap();
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![crm]));
    let c = t.store.create(&CUSTOMER, json!({"name": "Op"}).as_object().unwrap(), "api").await.unwrap();
    let routes = [Route { system: "crm".into(), entities: vec!["customer".into()] }];
    assert_eq!(t.store.dispatch(&routes, 100).await.unwrap(), (1, 1));

    let (s, body) = call(&app, "GET", "/v1/systems").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"][0]["name"], "crm");
    assert_eq!(body["data"][0]["queue"]["pending"], 1);
    assert_eq!(body["data"][0]["paused"], false);
    assert_eq!(body["dispatch"], json!({"cursor": 1, "head": 1, "lag": 0}));

    assert_eq!(call(&app, "POST", "/v1/systems/nope/pause").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "POST", "/v1/systems/crm/pause").await.1["paused"], true);
    assert_eq!(call(&app, "GET", "/v1/systems").await.1["data"][0]["paused"], true);
    assert_eq!(call(&app, "POST", "/v1/systems/crm/resume").await.1["paused"], false);

    let (_, list) = call(&app, "GET", &format!("/v1/deliveries?system=crm&status=pending&record_id={}", c.id)).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let id = list["data"][0]["id"].as_i64().unwrap();
    assert_eq!(call(&app, "GET", "/v1/deliveries?status=lost").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, "GET", "/v1/deliveries?colour=red").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(call(&app, "GET", "/v1/changes/1/deliveries").await.1["data"][0]["id"], id);
    assert_eq!(call(&app, "GET", "/v1/changes/99/deliveries").await.0, StatusCode::NOT_FOUND);

    // Only dead deliveries can be retried.
    let (s, body) = call(&app, "POST", &format!("/v1/deliveries/{id}/retry")).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    assert_eq!(call(&app, "POST", "/v1/deliveries/999/retry").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "GET", "/v1/deliveries/abc").await.0, StatusCode::NOT_FOUND);

    // Fail it for good, then look at it, retry it, and replay the system.
    let claimed = t.store.claim("crm", "test-node", 10, 60_000, &[]).await.unwrap();
    let finish = Finish {
        status: DeliveryStatus::Dead,
        next_attempt_at: None,
        http_status: Some(400),
        external_id: None,
        remarks: Some("HTTP 400 from crm: email invalid — not retried".into()),
        duration_ms: 12,
        link: None,
        callback_to: None,
    };
    assert!(t.store.finish(&claimed[0].delivery, "test-node", &finish).await.unwrap());
    let (_, shown) = call(&app, "GET", &format!("/v1/deliveries/{id}")).await;
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["history"][0]["remarks"], "HTTP 400 from crm: email invalid — not retried");
    assert_eq!(call(&app, "GET", "/v1/systems").await.1["data"][0]["queue"]["dead"], 1);
    let (s, retried) = call(&app, "POST", &format!("/v1/deliveries/{id}/retry")).await;
    assert_eq!(
        (s, retried["status"].as_str(), retried["attempts"].as_i64()),
        (StatusCode::OK, Some("pending"), Some(0))
    );

    let claimed = t.store.claim("crm", "test-node", 10, 60_000, &[]).await.unwrap();
    assert!(t.store.finish(&claimed[0].delivery, "test-node", &finish).await.unwrap());
    assert_eq!(call(&app, "POST", "/v1/systems/crm/replay").await.1["replayed"], 1);
    assert_eq!(call(&app, "POST", "/v1/systems/crm/replay?status=delivered").await.0, StatusCode::BAD_REQUEST);

    let (_, metrics) = call(&app, "GET", "/metrics").await;
    assert!(metrics.as_str().unwrap().contains("syncflow_queue_depth{system=\"crm\"} 1"), "{metrics}");
}
