//! The `001` seed's protocol served by syncflow: its README's curl examples, the
//! behaviours its README (and its own test-suite) describe, and the offline
//! late write the seed gets wrong. Every test runs on SQLite and PostgreSQL.

mod common;

use axum::http::StatusCode;
use chrono::{Duration, Utc};
use common::{client, App};
use serde_json::{json, Value};
use syncflow_server::ClientSpec;
use syncflow_store::backend_tests;
use syncflow_store::testing::TestStore;

/// A time `days` from now, as the seed's clients write it (naive, no zone).
fn days(days: i64) -> String {
    (Utc::now() + Duration::days(days)).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// The seed's display of a naive time: UTC with `Z`.
fn shown(naive: &str) -> String {
    format!("{}Z", naive.trim_end_matches(".000000"))
}

fn reading(gtin: &str, updated_at: &str, expiration: &str) -> Value {
    json!({"gtin": gtin, "updated_at": updated_at, "expiration_date": expiration})
}

/// Two shops' tills with their own tokens, limited to stock readings.
fn shops(t: TestStore) -> App {
    App::new(
        t,
        vec![client("shop-a", "tok-a", Some(&["stock_reading"])), client("shop-b", "tok-b", Some(&["stock_reading"]))],
    )
}

async fn seed_sync(app: &App, token: Option<&str>, last_sync_date: &str, records: Vec<Value>) -> Vec<Value> {
    let (status, body) = app
        .post("/v1/sync/", token, &json!({"last_sync_date": last_sync_date, "newly_created_records": records}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().expect("data array").clone()
}

async fn readings(app: &App, token: Option<&str>) -> Vec<Value> {
    let (status, body) = app.get("/v1/readings/", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn gtins(list: &[Value]) -> Vec<&str> {
    list.iter().map(|r| r["gtin"].as_str().unwrap()).collect()
}

backend_tests!(
    readme_curl_examples,
    readme_examples_with_an_anonymous_client,
    pull_since_a_date,
    partial_pull,
    client_write_overrides_an_older_row,
    write_then_pull,
    new_gtin_and_older_client_write,
    offline_late_write_reaches_other_clients,
    bad_records_are_refused_and_nothing_applied,
);

/// The README's two curl examples, byte for byte, against an open hub (the seed
/// has no auth): the sync answers with what the client lacks (nothing: it sent the
/// only reading), the readings list has the new reading in the seed's shape.
async fn readme_curl_examples(t: TestStore) {
    let app = App::open(t);
    let (status, body) = app
        .send(
            axum::http::Method::POST,
            "/v1/sync/",
            None,
            Some(
                r#"{
    "last_sync_date": "2021-10-10T10:40:10",
    "newly_created_records": [{"gtin": "test_4", "updated_at": "2021-11-12T01:11:00", "expiration_date": "2022-05-01T01:11:00"}]
}"#,
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"data": []}));
    let (status, body) = app.get("/v1/readings/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": [{"gtin": "test_4", "updated_at": "2021-11-12T01:11:00Z",
            "expiration_date": "2022-05-01T01:11:00Z"}]})
    );
    // Another client that last synced before it gets it from the same endpoint.
    let (_, body) = app.post("/v1/sync/", None, &json!({"last_sync_date": "2021-10-10T10:40:10"})).await;
    assert_eq!(gtins(body["data"].as_array().unwrap()), vec!["test_4"]);
    // And the reading is an ordinary record and change of the hub.
    let (_, list) = app.get("/v1/stock_readings", None).await;
    assert_eq!(list["data"][0]["gtin"], "test_4");
    let (_, changes) = app.get("/v1/changes", None).await;
    assert_eq!(changes["data"][0]["entity"], "stock_reading");
    assert_eq!(changes["data"][0]["origin"], "client:default");
}

/// On a hub with tokens, seed clients (which send none) can be let in as one
/// named client, limited to readings.
async fn readme_examples_with_an_anonymous_client(t: TestStore) {
    let app = App::new(
        t,
        vec![ClientSpec {
            id: "seed-shop".into(),
            anonymous: true,
            entities: Some(vec!["stock_reading".into()]),
            ..Default::default()
        }],
    );
    let data = seed_sync(
        &app,
        None,
        "2021-10-10T10:40:10",
        vec![reading("test_4", "2021-11-12T01:11:00", "2022-05-01T01:11:00")],
    )
    .await;
    assert!(data.is_empty());
    assert_eq!(gtins(&readings(&app, None).await), vec!["test_4"]);
    let (_, changes) = app.get("/v1/changes", Some(common::ADMIN)).await;
    assert_eq!(changes["data"][0]["origin"], "client:seed-shop");
    // Anonymous access is limited to the client's entities, and a wrong token is
    // still refused.
    let (s, _) = app.get("/v1/customers", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.get("/v1/readings/", Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Seed: "the client sends the last_sync_date, the app responds with the records
/// that get updated since this time".
async fn pull_since_a_date(t: TestStore) {
    let app = shops(t);
    let five: Vec<Value> = (0..5).map(|i| reading(&format!("g{i}"), &days(0), &days(30))).collect();
    assert!(seed_sync(&app, Some("tok-b"), &days(-10), five).await.is_empty());
    let data = seed_sync(&app, Some("tok-a"), &days(-5), vec![]).await;
    assert_eq!(data.len(), 5);
}

/// Seed: only what changed after the client's last sync comes back.
async fn partial_pull(t: TestStore) {
    let app = shops(t);
    seed_sync(
        &app,
        Some("tok-b"),
        &days(-10),
        vec![reading("old-1", &days(-6), &days(30)), reading("old-2", &days(-5), &days(30))],
    )
    .await;
    // Shop A syncs now; then shop B adds one more reading.
    let last_sync = days(0);
    seed_sync(&app, Some("tok-b"), &days(-10), vec![reading("new", &days(0), &days(30))]).await;
    let data = seed_sync(&app, Some("tok-a"), &last_sync, vec![]).await;
    assert_eq!(gtins(&data), vec!["new"]);
}

/// Seed: a client's newer write overrides the hub's older row, and is not sent
/// back to it.
async fn client_write_overrides_an_older_row(t: TestStore) {
    let app = shops(t);
    seed_sync(
        &app,
        Some("tok-b"),
        &days(-10),
        vec![reading("r1", &days(-6), &days(30)), reading("r2", &days(-7), &days(30))],
    )
    .await;
    let last_sync = days(0);
    let generated_at = days(0);
    let expiration = days(-1);
    let data = seed_sync(&app, Some("tok-a"), &last_sync, vec![reading("r1", &generated_at, &expiration)]).await;
    assert!(data.is_empty(), "{data:?}");
    let all = readings(&app, Some("tok-a")).await;
    let r1 = all.iter().find(|r| r["gtin"] == "r1").unwrap();
    assert_eq!(r1["updated_at"], shown(&generated_at));
    assert_eq!(r1["expiration_date"], shown(&expiration));
    assert_eq!(all.len(), 2);
}

/// Seed: a client that writes also gets what others wrote since its last sync.
async fn write_then_pull(t: TestStore) {
    let app = shops(t);
    seed_sync(
        &app,
        Some("tok-b"),
        &days(-10),
        vec![reading("r1", &days(-6), &days(30)), reading("r2", &days(-7), &days(30))],
    )
    .await;
    let last_sync = days(0);
    seed_sync(&app, Some("tok-b"), &days(-10), vec![reading("r3", &days(0), &days(30))]).await;
    let generated_at = days(0);
    let data = seed_sync(&app, Some("tok-a"), &last_sync, vec![reading("r1", &generated_at, &days(-1))]).await;
    assert_eq!(gtins(&data), vec!["r3"]);
    let all = readings(&app, Some("tok-a")).await;
    let r1 = all.iter().find(|r| r["gtin"] == "r1").unwrap();
    assert_eq!(r1["updated_at"], shown(&generated_at));
}

/// Seed: a new gtin creates a reading; a client write older than the hub's row
/// loses, and the hub's row is sent back so the client can correct itself.
async fn new_gtin_and_older_client_write(t: TestStore) {
    let app = shops(t);
    let generated_at = days(0);
    let expiration = days(30);
    seed_sync(&app, Some("tok-b"), &days(-10), vec![reading("r1", &generated_at, &expiration)]).await;
    let data = seed_sync(
        &app,
        Some("tok-a"),
        &days(0),
        vec![reading("r1", &days(-5), &days(-1)), reading("new_gtin", &generated_at, &days(-1))],
    )
    .await;
    assert_eq!(gtins(&data), vec!["r1"]);
    assert_eq!(data[0]["updated_at"], shown(&generated_at));
    assert_eq!(data[0]["expiration_date"], shown(&expiration));
    let all = readings(&app, Some("tok-a")).await;
    assert_eq!(all.len(), 2);
    let r1 = all.iter().find(|r| r["gtin"] == "r1").unwrap();
    assert_eq!(r1["updated_at"], shown(&generated_at));
}

/// What the seed gets wrong: shop A edits a reading while offline; shop B syncs
/// after that edit time; A comes online and pushes its (older-stamped) edit. The
/// seed filters by the client's `updated_at`, so B never sees it. Syncflow judges
/// "since" by when the hub received the change, so B gets it on its next sync.
async fn offline_late_write_reaches_other_clients(t: TestStore) {
    let app = shops(t);
    seed_sync(&app, Some("tok-b"), &days(-10), vec![reading("milk", &days(-3), &days(5))]).await;
    // Both shops are in sync.
    assert_eq!(seed_sync(&app, Some("tok-a"), &days(-10), vec![]).await.len(), 1);
    // A, offline, edits milk (edit time `offline_edit`).
    let offline_edit = days(0);
    // B syncs afterwards (nothing is new for it) and records its sync time, which
    // is later than A's edit.
    assert!(seed_sync(&app, Some("tok-b"), &days(0), vec![]).await.is_empty());
    let b_last_sync = days(0);
    assert!(b_last_sync > offline_edit);
    // A comes back online and pushes its edit, stamped before B's last sync.
    let new_expiry = days(9);
    let data = seed_sync(&app, Some("tok-a"), &days(-2), vec![reading("milk", &offline_edit, &new_expiry)]).await;
    assert!(data.is_empty(), "A's edit wins (it is the newest): {data:?}");
    // B's next sync carries A's edit although its updated_at < B's last sync.
    let data = seed_sync(&app, Some("tok-b"), &b_last_sync, vec![]).await;
    assert_eq!(gtins(&data), vec!["milk"], "the late write was lost");
    assert_eq!(data[0]["expiration_date"], shown(&new_expiry));
    assert_eq!(data[0]["updated_at"], shown(&offline_edit));
}

async fn bad_records_are_refused_and_nothing_applied(t: TestStore) {
    let app = shops(t);
    let head = app.head_seq().await;
    let (s, body) = app
        .post(
            "/v1/sync/",
            Some("tok-a"),
            &json!({"last_sync_date": "2021-10-10T10:40:10", "newly_created_records": [
                {"gtin": "ok", "updated_at": "2021-11-12T01:11:00", "expiration_date": "2022-05-01T01:11:00"},
                {"gtin": "bad", "updated_at": "last tuesday", "expiration_date": "2022-05-01T01:11:00"},
                {"updated_at": "2021-11-12T01:11:00"}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<(i64, &str)> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["index"].as_i64().unwrap(), f["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (1, "newly_created_records[1].updated_at"),
            (2, "newly_created_records[2].gtin"),
            (2, "newly_created_records[2].expiration_date"),
        ]
    );
    // Field values the entity rejects are reported the same way.
    let (s, body) = app
        .post(
            "/v1/sync/",
            Some("tok-a"),
            &json!({"last_sync_date": "2021-10-10T10:40:10", "newly_created_records": [
                {"gtin": "ok", "updated_at": "2021-11-12T01:11:00", "expiration_date": "2022-05-01T01:11:00"},
                {"gtin": "", "updated_at": "2021-11-12T01:11:00", "expiration_date": "soon"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "newly_created_records[1].gtin");
    assert_eq!(body["error"]["fields"][1]["field"], "newly_created_records[1].expiration_date");
    // Missing last_sync_date.
    let (s, body) = app.post("/v1/sync/", Some("tok-a"), &json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"][0]["field"], "last_sync_date");
    assert_eq!(app.head_seq().await, head, "change log moved");
    assert!(readings(&app, Some("tok-a")).await.is_empty());
}
