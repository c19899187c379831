//! `POST /v1/sync` end to end through the router: convergence of simulated
//! clients (one offline), conflict reporting, bad input, and per-client access.
//! Every test runs on SQLite and PostgreSQL.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::{client, App, ADMIN};
use serde_json::{json, Value};
use syncflow_server::ClientSpec;
use syncflow_store::backend_tests;
use syncflow_store::testing::TestStore;

/// A client app's local replica: records by (entity, id), a queue of edits made
/// since the last sync, and the cursor the hub gave it.
struct SimClient {
    token: String,
    cursor: Option<String>,
    records: BTreeMap<(String, String), Value>,
    pending: Vec<Value>,
    /// Conflicts the hub reported to this client (losing values, to show a user).
    conflicts: Vec<Value>,
}

impl SimClient {
    fn new(token: &str) -> Self {
        Self { token: token.into(), cursor: None, records: BTreeMap::new(), pending: Vec::new(), conflicts: Vec::new() }
    }

    fn edit(&mut self, change: Value) {
        self.pending.push(change);
    }

    fn store(&mut self, entity: &str, record: &Value) {
        let key = (entity.to_string(), record["id"].as_str().unwrap().to_string());
        if record["deleted_at"].is_string() {
            self.records.remove(&key);
        } else {
            self.records.insert(key, record.clone());
        }
    }

    /// One round trip: push pending edits, apply results and pulled changes.
    async fn sync(&mut self, app: &App) -> Value {
        let mut body = json!({"changes": self.pending});
        if let Some(c) = &self.cursor {
            body["cursor"] = json!(c);
        }
        let (status, resp) = app.post("/v1/sync", Some(&self.token), &body).await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        self.pending.clear();
        for r in resp["results"].as_array().unwrap() {
            if r["record"].is_object() {
                self.store(r["entity"].as_str().unwrap(), &r["record"]);
            }
            if r["conflict"].is_object() {
                self.conflicts.push(r["conflict"].clone());
            }
        }
        for c in resp["changes"].as_array().unwrap() {
            self.store(c["entity"].as_str().unwrap(), &c["record"]);
        }
        self.cursor = Some(resp["cursor"].as_str().unwrap().to_string());
        if resp["has_more"] == json!(true) {
            return Box::pin(self.sync(app)).await;
        }
        resp
    }

    /// Live customers by id → (name, email, version).
    fn customers(&self) -> BTreeMap<String, (Value, Value, Value)> {
        self.records
            .iter()
            .filter(|((e, _), _)| e == "customer")
            .map(|((_, id), r)| (id.clone(), (r["name"].clone(), r["email"].clone(), r["version"].clone())))
            .collect()
    }
}

fn two_clients(t: TestStore) -> App {
    App::new(t, vec![client("phone-a", "tok-a", None), client("phone-b", "tok-b", Some(&["customer"]))])
}

backend_tests!(
    offline_client_converges_with_late_write_and_delete,
    own_writes_are_not_echoed_and_cursor_is_stable,
    bad_input_is_refused_and_changes_nothing,
    tokens_are_limited_to_their_entities,
    reject_stale_per_request_and_per_client,
    a_cursor_older_than_retention_is_gone_and_a_full_resync_works,
);

async fn offline_client_converges_with_late_write_and_delete(t: TestStore) {
    let app = two_clients(t);
    // The office creates three customers; both phones sync them.
    let mut ids = Vec::new();
    for name in ["Ada", "Bo", "Cy"] {
        let (s, r) = app.post("/v1/customers", Some(ADMIN), &json!({"name": name})).await;
        assert_eq!(s, StatusCode::CREATED);
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let (ada, bo, cy) = (&ids[0], &ids[1], &ids[2]);
    let mut a = SimClient::new("tok-a");
    let mut b = SimClient::new("tok-b");
    a.sync(&app).await;
    b.sync(&app).await;
    assert_eq!(a.customers().len(), 3);
    assert_eq!(a.customers(), b.customers());

    // Edit times on the clients' clocks, seconds after the office's writes.
    let start = chrono::Utc::now();
    let t = |secs: i64| (start + chrono::Duration::seconds(secs)).to_rfc3339();

    // Phone A goes offline and edits: Ada (which B will also edit, later), Cy
    // (nobody else touches it), and creates a customer of its own.
    a.edit(json!({"entity": "customer", "id": ada, "fields": {"name": "Ada (A, offline)"},
        "updated_at": t(10), "base_version": 1}));
    a.edit(json!({"entity": "customer", "id": cy, "fields": {"email": "cy@example.com"},
        "updated_at": t(20), "base_version": 1}));
    a.edit(json!({"entity": "customer", "client_ref": "a-local-1", "fields": {"name": "Dee"},
        "updated_at": t(30)}));

    // Phone B, online, edits Ada later, deletes Bo, and syncs — twice, so its
    // cursor is past A's edit times by any clock.
    b.edit(json!({"entity": "customer", "id": ada, "fields": {"name": "Ada (B)"},
        "updated_at": t(60), "base_version": 1}));
    b.edit(json!({"entity": "customer", "id": bo, "op": "delete", "updated_at": t(61)}));
    let first = b.sync(&app).await;
    b.sync(&app).await;
    assert_eq!(first["results"][1]["status"], "deleted", "{first}");
    assert!(!b.customers().contains_key(bo.as_str()));

    // A comes back and pushes its edits, made hours before B's.
    let resp = a.sync(&app).await;
    let results = resp["results"].as_array().unwrap();
    // Ada: B's later edit wins; A is told, with its own losing value to show.
    assert_eq!(results[0]["status"], "conflict", "{resp}");
    assert_eq!(results[0]["conflict"]["winner"], "hub");
    assert_eq!(results[0]["conflict"]["losing"]["value"]["name"], "Ada (A, offline)");
    assert_eq!(results[0]["record"]["name"], "Ada (B)");
    // Cy: A's late write with an old timestamp applies (nobody wrote it since).
    assert_eq!(results[1]["status"], "updated");
    assert_eq!(results[2]["status"], "created");
    assert_eq!(results[2]["client_ref"], "a-local-1");
    // A learns of B's delete as a tombstone.
    let pulled: Vec<(&str, &str)> = resp["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["op"].as_str().unwrap()))
        .collect();
    assert!(pulled.contains(&(bo.as_str(), "delete")), "{pulled:?}");
    assert!(pulled.contains(&(ada.as_str(), "upsert")), "{pulled:?}");

    // B syncs with its cursor (past 10:01 by timestamps) and still gets A's late
    // edit of Cy and A's new customer: the cursor is the hub's sequence.
    let resp = b.sync(&app).await;
    let got: Vec<&str> = resp["changes"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(got.contains(&cy.as_str()), "late write must reach B: {resp}");
    assert_eq!(got.len(), 2, "Cy and Dee, not Ada (B has it): {resp}");
    a.sync(&app).await;

    // Everyone agrees, with each other and with the hub.
    assert_eq!(a.customers(), b.customers());
    let (_, list) = app.get("/v1/customers?limit=50", Some(ADMIN)).await;
    let hub: BTreeMap<String, (Value, Value, Value)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), (r["name"].clone(), r["email"].clone(), r["version"].clone())))
        .collect();
    assert_eq!(a.customers(), hub);
    assert_eq!(hub.len(), 3);
    assert_eq!(hub[cy.as_str()].1, "cy@example.com");
    assert_eq!(hub[ada.as_str()].0, "Ada (B)");
    assert!(!hub.contains_key(bo.as_str()));
    assert_eq!(a.conflicts.len(), 1);
    // Client writes are ordinary changes, with their origin, for fan-out.
    let (_, changes) = app.get("/v1/changes?limit=100", Some(ADMIN)).await;
    let origins: Vec<&str> =
        changes["data"].as_array().unwrap().iter().map(|c| c["origin"].as_str().unwrap()).collect();
    assert_eq!(
        origins,
        vec!["api", "api", "api", "client:phone-b", "client:phone-b", "client:phone-a", "client:phone-a"]
    );
}

async fn own_writes_are_not_echoed_and_cursor_is_stable(t: TestStore) {
    let app = two_clients(t);
    let mut a = SimClient::new("tok-a");
    a.edit(json!({"entity": "customer", "client_ref": "x", "fields": {"name": "Mine"}}));
    let resp = a.sync(&app).await;
    assert_eq!(resp["results"][0]["status"], "created");
    assert_eq!(resp["changes"], json!([]), "own write echoed: {resp}");
    assert_eq!(resp["client_id"], "phone-a");
    // Nothing new: same cursor back, nothing pulled.
    let cursor = a.cursor.clone();
    let resp = a.sync(&app).await;
    assert_eq!(resp["changes"], json!([]));
    assert_eq!(a.cursor, cursor);
    // A first sync (no cursor) by another client gets everything.
    let mut b = SimClient::new("tok-b");
    let resp = b.sync(&app).await;
    assert_eq!(resp["changes"].as_array().unwrap().len(), 1);
    // Paging with a small limit still delivers everything.
    for i in 0..5 {
        app.post("/v1/customers", Some(ADMIN), &json!({"name": format!("n{i}")})).await;
    }
    let (s, page) = app.post("/v1/sync", Some("tok-b"), &json!({"cursor": b.cursor, "limit": 2})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["changes"].as_array().unwrap().len(), 2);
    b.sync(&app).await;
    assert_eq!(b.customers().len(), 6);
}

async fn bad_input_is_refused_and_changes_nothing(t: TestStore) {
    let app = two_clients(t);
    let head = app.head_seq().await;
    // Malformed JSON: 400.
    let (s, r) =
        app.send(axum::http::Method::POST, "/v1/sync", Some("tok-a"), Some("{\"changes\": [ {\"entity\": ")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert_eq!(r["error"]["code"], "bad_request");
    // Invalid items: 422 listing each with its index; the valid first item is not
    // applied either.
    let body = json!({"changes": [
        {"entity": "customer", "fields": {"name": "Valid"}},
        {"entity": "customer", "fields": {"email": "nope"}},
        {"entity": "widget", "fields": {}},
        {"entity": "customer", "fields": {"name": "x"}, "updated_at": "yesterday", "colour": 1},
        {"entity": "customer", "fields": {"name": "Future"}, "updated_at": "2999-01-01T00:00:00Z"},
    ]});
    let (s, r) = app.post("/v1/sync", Some("tok-a"), &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r["error"]["code"], "validation_failed");
    let fields: Vec<(i64, &str)> = r["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["index"].as_i64().unwrap(), f["field"].as_str().unwrap()))
        .collect();
    for want in
        [(2, "changes[2].entity"), (3, "changes[3].colour"), (3, "changes[3].updated_at"), (4, "changes[4].updated_at")]
    {
        assert!(fields.contains(&want), "{want:?} missing from {fields:?}");
    }
    assert_eq!(app.head_seq().await, head, "change log moved");
    // Envelope problems found before items (store-level checks) are listed too.
    let (s, r) = app
        .post(
            "/v1/sync",
            Some("tok-a"),
            &json!({"changes": [
                {"entity": "customer", "fields": {"name": "Valid"}},
                {"entity": "customer", "fields": {"email": "nope"}},
                {"entity": "invoice", "fields": {"customer_id": "cust_none", "amount": 1, "currency": "eur"}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    let fields: Vec<&str> =
        r["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["changes[1].fields.name", "changes[1].fields.email", "changes[2].fields.customer_id"]);
    assert_eq!(r["error"]["fields"][2]["index"], 2);
    assert_eq!(app.head_seq().await, head, "change log moved");
    let (_, list) = app.get("/v1/customers", Some(ADMIN)).await;
    assert_eq!(list["data"], json!([]));
    // A cursor the hub never issued, and one from the future: 400 invalid_cursor.
    for cursor in ["garbage", &syncflow_server::encode_cursor(999)] {
        let (s, r) = app.post("/v1/sync", Some("tok-a"), &json!({"cursor": cursor})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
        assert_eq!(r["error"]["code"], "invalid_cursor");
    }
    // The seed's fields on the new endpoint get a hint.
    let (s, r) = app.post("/v1/sync", Some("tok-a"), &json!({"last_sync_date": "2021-10-10T10:40:10"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r["error"]["fields"][0]["message"].as_str().unwrap().contains("/v1/sync/"));
}

async fn tokens_are_limited_to_their_entities(t: TestStore) {
    let app = two_clients(t);
    let head = app.head_seq().await;
    // No token, wrong token: 401.
    let (s, _) = app.post("/v1/sync", None, &json!({})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.post("/v1/sync", Some("tok-wrong"), &json!({})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // phone-b may only touch customers: an invoice in its batch is a 403, and the
    // customer in the same batch is not applied.
    let (s, r) = app
        .post(
            "/v1/sync",
            Some("tok-b"),
            &json!({"changes": [
                {"entity": "customer", "fields": {"name": "ok"}},
                {"entity": "invoice", "fields": {"customer_id": "x", "amount": 1, "currency": "eur"}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{r}");
    assert_eq!(r["error"]["code"], "forbidden");
    assert_eq!(app.head_seq().await, head);
    // Nor may it read invoices: REST, change feed, stream, seed readings.
    for path in ["/v1/invoices", "/v1/changes?entity=invoice", "/v1/stream?entity=invoice", "/v1/readings/"] {
        let (s, r) = app.get(path, Some("tok-b")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {r}");
    }
    let (s, _) = app.get("/v1/customers", Some("tok-b")).await;
    assert_eq!(s, StatusCode::OK);
    // Its pulls and change feed never include invoices.
    let (_, c) = app.post("/v1/customers", Some(ADMIN), &json!({"name": "C"})).await;
    app.post("/v1/invoices", Some(ADMIN), &json!({"customer_id": c["id"], "amount": 10, "currency": "eur"})).await;
    let (_, r) = app.post("/v1/sync", Some("tok-b"), &json!({})).await;
    let entities: Vec<&str> = r["changes"].as_array().unwrap().iter().map(|c| c["entity"].as_str().unwrap()).collect();
    assert_eq!(entities, vec!["customer"]);
    let (_, r) = app.get("/v1/changes", Some("tok-b")).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    assert_eq!(r["next_after"], 2);
    // The full-access token keeps working everywhere.
    let (s, r) = app.get("/v1/changes", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
}

async fn reject_stale_per_request_and_per_client(t: TestStore) {
    let app = App::new(
        t,
        vec![
            client("lax", "tok-lax", None),
            ClientSpec { conflict_policy: Some("reject_stale".into()), ..client("strict", "tok-strict", None) },
        ],
    );
    let (_, c) = app.post("/v1/customers", Some(ADMIN), &json!({"name": "v1"})).await;
    let id = c["id"].as_str().unwrap();
    app.send(axum::http::Method::PATCH, &format!("/v1/customers/{id}"), Some(ADMIN), Some(r#"{"name": "v2"}"#)).await;
    let stale = json!({"entity": "customer", "id": id, "fields": {"name": "mine"}, "base_version": 1});
    // The strict client's default refuses a stale base and shows the hub's value.
    let (_, r) = app.post("/v1/sync", Some("tok-strict"), &json!({"changes": [stale]})).await;
    assert_eq!(r["conflict_policy"], "reject_stale");
    assert_eq!(r["results"][0]["status"], "conflict");
    assert_eq!(r["results"][0]["record"]["name"], "v2");
    assert_eq!(r["results"][0]["conflict"]["losing"]["value"]["name"], "mine");
    // The lax client may ask for the same per request.
    let (_, r) =
        app.post("/v1/sync", Some("tok-lax"), &json!({"changes": [stale], "conflict_policy": "reject_stale"})).await;
    assert_eq!(r["results"][0]["status"], "conflict");
    // By default it wins by clock (its edit is "now") and learns what it overwrote.
    let (_, r) = app.post("/v1/sync", Some("tok-lax"), &json!({"changes": [stale]})).await;
    assert_eq!(r["conflict_policy"], "last_writer_wins");
    assert_eq!(r["results"][0]["status"], "updated");
    assert_eq!(r["results"][0]["conflict"]["winner"], "client");
    assert_eq!(r["results"][0]["conflict"]["losing"]["value"]["name"], "v2");
    let (s, r) = app.post("/v1/sync", Some("tok-lax"), &json!({"conflict_policy": "coin_toss"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
}

/// Retention pruned changes after a client's cursor: its next sync is `410
/// cursor_expired` (reading on would silently skip what was pruned); a sync
/// without a cursor is the full resync, and cursors at or above the horizon read on.
async fn a_cursor_older_than_retention_is_gone_and_a_full_resync_works(t: TestStore) {
    let app = two_clients(t);
    let store = app.state.store.clone();
    let (_, x) = app.post("/v1/customers", Some(ADMIN), &json!({"name": "x1"})).await;
    let path = format!("/v1/customers/{}", x["id"].as_str().unwrap());
    let mut b = SimClient::new("tok-b");
    b.sync(&app).await;
    let old_cursor = b.cursor.clone().unwrap();
    for name in ["x2", "x3"] {
        let body = json!({"name": name}).to_string();
        assert_eq!(app.send(axum::http::Method::PATCH, &path, Some(ADMIN), Some(&body)).await.0, StatusCode::OK);
    }
    let mut a = SimClient::new("tok-a");
    a.sync(&app).await;
    store.dispatch(&[], 100).await.unwrap();
    let start = syncflow_store::now_ms();
    while syncflow_store::now_ms() <= start {
        tokio::task::yield_now().await;
    }
    let pruned = store.prune(&syncflow_store::Retention::older_than(std::time::Duration::ZERO)).await.unwrap();
    assert_eq!(pruned.changes, 2, "x v1 and v2: {pruned:?}");

    let (status, body) = app.post("/v1/sync", Some("tok-b"), &json!({"cursor": old_cursor})).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["error"]["code"], "cursor_expired");
    assert!(body["error"]["message"].as_str().unwrap().contains("full resync"), "{body}");
    let (status, _) = app.get("/v1/changes?after=1", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::GONE);
    let (status, _) = app.get("/v1/stream?after=1", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::GONE);

    // The full resync: no cursor, every record's current state.
    let mut fresh = SimClient::new("tok-b");
    fresh.sync(&app).await;
    let names: Vec<Value> = fresh.customers().values().map(|(name, _, _)| name.clone()).collect();
    assert_eq!(names, vec![json!("x3")]);
    // A client whose cursor is past the horizon reads on as before.
    let (status, body) = app.post("/v1/sync", Some("tok-a"), &json!({"cursor": a.cursor})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.get("/v1/changes?after=0", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
}
