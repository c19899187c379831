//! Operator experience over HTTP (`oneshot`, both backends): links on records, a
//! record's history, `record_id` on the change log, lists in both orders,
//! tombstones on request, idempotent writes, and dispatch lag.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::SystemConfig;
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryStatus, Finish, LinkUpdate, Route, Store};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, headers, body }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, "GET", uri, &[], None).await
}

fn system(name: &str, entities: &str) -> SystemConfig {
    let text = format!("name = \"{name}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\nentities = {entities}");
    SystemConfig::from_table(toml::from_str(&text).unwrap()).unwrap()
}

fn open_app(store: &Store) -> Router {
    router(AppState::new(store.clone(), ApiTokens::default()))
}

/// Delivers every pending delivery of `system`, linking each record to `ext_<n>`.
async fn deliver_all(store: &Store, system: &str) -> Vec<String> {
    let routes = [Route { system: system.into(), entities: vec!["customer".into()] }];
    store.dispatch(&routes, 1000).await.unwrap();
    let mut linked = Vec::new();
    for (n, c) in store.claim(system, "n", 100, 60_000, &[]).await.unwrap().into_iter().enumerate() {
        let ext = format!("cus_{n}");
        let f = Finish {
            status: DeliveryStatus::Delivered,
            next_attempt_at: None,
            http_status: Some(200),
            external_id: Some(ext.clone()),
            remarks: None,
            duration_ms: 1,
            link: Some(LinkUpdate {
                external_id: ext.clone(),
                synced_version: c.change.version,
                fingerprint: None,
                snapshot: None,
            }),
            callback_to: None,
        };
        assert!(store.finish(&c.delivery, "n", &f).await.unwrap());
        linked.push(ext);
    }
    linked
}

backend_tests!(
    records_carry_their_links_in_get_and_list,
    history_and_changes_by_record,
    lists_run_both_ways_and_deliveries_newest_first,
    include_deleted_shows_the_tombstone,
    idempotency_key_replays_and_refuses_reuse,
    concurrent_requests_with_one_key_create_one_record,
    dispatch_lag_is_zero_when_nothing_will_be_dispatched,
);

async fn records_carry_their_links_in_get_and_list(t: TestStore) {
    let app = open_app(&t.store);
    let a = send(&app, "POST", "/v1/customers", &[], Some(json!({"name": "Ada"}))).await.body;
    deliver_all(&t.store, "stripe").await;
    let b = send(&app, "POST", "/v1/customers", &[], Some(json!({"name": "Bob"}))).await.body;

    let one = get(&app, &format!("/v1/customers/{}", a["id"].as_str().unwrap())).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["links"]["stripe"]["id"], "cus_0");
    assert_eq!(one.body["links"]["stripe"]["synced_version"], 1);
    assert!(one.body["links"]["stripe"]["synced_at"].is_string());
    assert_eq!(one.headers["etag"], "\"1\"");

    let list = get(&app, "/v1/customers").await.body;
    assert_eq!(list["data"][0]["links"]["stripe"]["id"], "cus_0");
    assert_eq!(list["data"][1]["id"], b["id"]);
    assert_eq!(list["data"][1]["links"], json!({}), "no links yet is an empty object");
}

async fn history_and_changes_by_record(t: TestStore) {
    let app = open_app(&t.store);
    let a = send(&app, "POST", "/v1/customers", &[], Some(json!({"name": "Ada"}))).await.body;
    let id = a["id"].as_str().unwrap().to_string();
    send(&app, "POST", "/v1/customers", &[], Some(json!({"name": "Other"}))).await;
    deliver_all(&t.store, "stripe").await;
    // The timeline orders by time (ms for attempts): let the clock move.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    send(&app, "PATCH", &format!("/v1/customers/{id}"), &[], Some(json!({"name": "Ada L."}))).await;

    let h = get(&app, &format!("/v1/customers/{id}/history")).await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.body);
    assert_eq!(h.body["record_id"], id.as_str());
    assert_eq!(h.body["links"]["stripe"]["id"], "cus_0");
    let changes: Vec<(&str, i64)> = h.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["origin"].as_str().unwrap(), c["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(changes, [("api", 1), ("api", 2)]);
    assert_eq!(h.body["deliveries"]["stripe"][0]["status"], "delivered");
    assert_eq!(h.body["deliveries"]["stripe"][0]["history"][0]["outcome"], "delivered");
    assert_eq!(h.body["conflicts"], json!([]));
    let kinds: Vec<&str> = h.body["timeline"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["change", "delivery", "change"]);
    assert_eq!(get(&app, "/v1/customers/cust_nope/history").await.status, StatusCode::NOT_FOUND);

    // The change log, filtered to this record, in both orders.
    let mine = get(&app, &format!("/v1/changes?record_id={id}")).await.body;
    let versions: Vec<i64> = mine["data"].as_array().unwrap().iter().map(|c| c["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2]);
    assert!(mine["data"].as_array().unwrap().iter().all(|c| c["record_id"] == id.as_str()));
    let newest = get(&app, &format!("/v1/changes?record_id={id}&order=desc&limit=1")).await.body;
    assert_eq!((newest["data"][0]["version"].as_i64(), newest["has_more"].as_bool()), (Some(2), Some(true)));
    let after = newest["next_after"].as_i64().unwrap();
    let older = get(&app, &format!("/v1/changes?record_id={id}&order=desc&limit=1&after={after}")).await.body;
    assert_eq!((older["data"][0]["version"].as_i64(), older["next_after"].as_i64()), (Some(1), None));
    assert_eq!(get(&app, "/v1/changes?order=sideways").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&app, "/v1/changes?order=desc&wait=1s").await.status, StatusCode::BAD_REQUEST);
    let all_desc = get(&app, "/v1/changes?order=desc").await.body;
    assert_eq!(all_desc["data"][0]["seq"], 3);

    // The OpenAPI document describes the new route and parameters.
    let doc = get(&app, "/openapi.json").await.body;
    assert!(doc["paths"]["/v1/customers/{id}/history"]["get"].is_object());
    let names = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p["name"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    assert!(names("/v1/changes", "get").contains(&"record_id".to_string()));
    assert!(names("/v1/deliveries", "get").contains(&"order".to_string()));
    assert!(names("/v1/customers", "post").contains(&"Idempotency-Key".to_string()));
    assert!(names("/v1/customers/{id}", "get").contains(&"include_deleted".to_string()));
}

async fn lists_run_both_ways_and_deliveries_newest_first(t: TestStore) {
    let app = open_app(&t.store);
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = send(&app, "POST", "/v1/customers", &[], Some(json!({"name": format!("C{n}")}))).await;
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // Customers newest first, two at a time, following next_after.
    let mut seen = Vec::new();
    let mut uri = "/v1/customers?order=desc&limit=2".to_string();
    loop {
        let page = get(&app, &uri).await.body;
        seen.extend(page["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match page["next_after"].as_str() {
            Some(after) => uri = format!("/v1/customers?order=desc&limit=2&after={after}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    assert_eq!(get(&app, "/v1/customers?order=up").await.status, StatusCode::BAD_REQUEST);

    let routes = [Route { system: "crm".into(), entities: vec!["customer".into()] }];
    t.store.dispatch(&routes, 100).await.unwrap();
    let newest = get(&app, "/v1/deliveries?limit=2").await.body;
    let seqs: Vec<i64> = newest["data"].as_array().unwrap().iter().map(|d| d["change_seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [5, 4], "deliveries are newest first by default");
    let next = newest["next_after"].as_i64().unwrap();
    let older = get(&app, &format!("/v1/deliveries?limit=2&after={next}")).await.body;
    let seqs: Vec<i64> = older["data"].as_array().unwrap().iter().map(|d| d["change_seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [3, 2]);
    let oldest = get(&app, "/v1/deliveries?order=asc&limit=2").await.body;
    assert_eq!(oldest["data"][0]["change_seq"], 1);
}

async fn include_deleted_shows_the_tombstone(t: TestStore) {
    let app = open_app(&t.store);
    let id = send(&app, "POST", "/v1/customers", &[], Some(json!({"name": "Gone"}))).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(send(&app, "DELETE", &format!("/v1/customers/{id}"), &[], None).await.status, StatusCode::OK);
    assert_eq!(get(&app, &format!("/v1/customers/{id}")).await.status, StatusCode::NOT_FOUND);
    let tomb = get(&app, &format!("/v1/customers/{id}?include_deleted=true")).await;
    assert_eq!(tomb.status, StatusCode::OK);
    assert!(tomb.body["deleted_at"].is_string(), "{}", tomb.body);
    assert_eq!(tomb.headers["etag"], "\"2\"");
    assert_eq!(get(&app, "/v1/customers/cust_nope?include_deleted=true").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, &format!("/v1/customers/{id}?include_deleted=maybe")).await.status, StatusCode::BAD_REQUEST);
}

async fn idempotency_key_replays_and_refuses_reuse(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::parse("tok-a,tok-b")));
    let a = [("authorization", "Bearer tok-a"), ("idempotency-key", "k-1")];
    let body = json!({"name": "Once"});
    let first = send(&app, "POST", "/v1/customers", &a, Some(body.clone())).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = send(&app, "POST", "/v1/customers", &a, Some(body.clone())).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the first response, replayed");
    assert_eq!(again.headers["etag"], first.headers["etag"]);
    assert_eq!(again.headers["location"], first.headers["location"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), 1);

    // Same key, another body: refused, nothing written.
    let reused = send(&app, "POST", "/v1/customers", &a, Some(json!({"name": "Twice"}))).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), 1);

    // Keys are per token: another token's k-1 is its own.
    let b = [("authorization", "Bearer tok-b"), ("idempotency-key", "k-1")];
    assert_eq!(send(&app, "POST", "/v1/customers", &b, Some(body.clone())).await.status, StatusCode::CREATED);
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), 2);

    // PATCH and DELETE replay too: the retried DELETE gets the tombstone, not a 404.
    let id = first.body["id"].as_str().unwrap();
    let p = [("authorization", "Bearer tok-a"), ("idempotency-key", "k-2")];
    let patched = send(&app, "PATCH", &format!("/v1/customers/{id}"), &p, Some(json!({"name": "Patched"}))).await;
    let repeat = send(&app, "PATCH", &format!("/v1/customers/{id}"), &p, Some(json!({"name": "Patched"}))).await;
    assert_eq!((patched.body["version"].as_i64(), repeat.body["version"].as_i64()), (Some(2), Some(2)));
    let d = [("authorization", "Bearer tok-a"), ("idempotency-key", "k-3")];
    let deleted = send(&app, "DELETE", &format!("/v1/customers/{id}"), &d, None).await;
    let repeat = send(&app, "DELETE", &format!("/v1/customers/{id}"), &d, None).await;
    assert_eq!((deleted.status, repeat.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(repeat.body, deleted.body);
    // A client error is remembered like any other answer.
    let bad = [("authorization", "Bearer tok-a"), ("idempotency-key", "k-4")];
    let invalid = send(&app, "POST", "/v1/customers", &bad, Some(json!({"email": "nope"}))).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    let again = send(&app, "POST", "/v1/customers", &bad, Some(json!({"email": "nope"}))).await;
    assert_eq!((again.status, again.headers.get("idempotent-replayed").is_some()), (invalid.status, true));
    // A malformed key is a 400.
    let long = "x".repeat(300);
    let k = [("authorization", "Bearer tok-a"), ("idempotency-key", long.as_str())];
    assert_eq!(send(&app, "POST", "/v1/customers", &k, Some(body)).await.status, StatusCode::BAD_REQUEST);
}

async fn concurrent_requests_with_one_key_create_one_record(t: TestStore) {
    let app = open_app(&t.store);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let h = [("idempotency-key", "same")];
            send(&app, "POST", "/v1/customers", &h, Some(json!({"name": "Racer"}))).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every duplicate got the first response");
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), 1);
}

async fn dispatch_lag_is_zero_when_nothing_will_be_dispatched(t: TestStore) {
    let store = &t.store;
    let none = open_app(store);
    send(&none, "POST", "/v1/customers", &[], Some(json!({"name": "A"}))).await;
    send(&none, "POST", "/v1/customers", &[], Some(json!({"name": "B"}))).await;
    let body = get(&none, "/v1/systems").await.body;
    assert_eq!(body["dispatch"]["lag"], 0, "no systems: nothing lags: {body}");
    assert_eq!(body["dispatch"]["head"], 2);

    // A system that takes only invoices: customer changes never lag.
    let books =
        router(AppState::new(store.clone(), ApiTokens::default()).with_systems(vec![system("books", "[\"invoice\"]")]));
    assert_eq!(get(&books, "/v1/systems").await.body["dispatch"]["lag"], 0);

    // A customer subscriber: both lag until dispatched, then none.
    let crm =
        router(AppState::new(store.clone(), ApiTokens::default()).with_systems(vec![system("crm", "[\"customer\"]")]));
    assert_eq!(get(&crm, "/v1/systems").await.body["dispatch"]["lag"], 2);
    let routes = [Route { system: "crm".into(), entities: vec!["customer".into()] }];
    store.dispatch(&routes, 100).await.unwrap();
    assert_eq!(get(&crm, "/v1/systems").await.body["dispatch"]["lag"], 0);
}
