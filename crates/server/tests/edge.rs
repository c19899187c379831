//! The HTTP edge (issue 10): text a backend cannot store is refused the same way on
//! SQLite and PostgreSQL and writes nothing; authentication before routing; body
//! limits; request ids, the request log line, time limits and compression.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{App, ADMIN};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, ListQuery};
use tower::ServiceExt;

backend_tests!(nul_is_refused_everywhere_with_its_field_and_writes_nothing, oversized_and_unwanted_bodies_are_413);

async fn customers(app: &App) -> usize {
    let q = ListQuery { limit: 1000, include_deleted: true, ..Default::default() };
    app.state.store.list(&syncflow_core::CUSTOMER, &q).await.unwrap().data.len()
}

fn field_names(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_array()
        .map_or_else(Vec::new, |l| l.iter().map(|f| f["field"].as_str().unwrap_or_default().to_string()).collect())
}

async fn nul_is_refused_everywhere_with_its_field_and_writes_nothing(t: TestStore) {
    let app = App::new(t, vec![]);
    let (s, c) = app.post("/v1/customers", Some(ADMIN), &json!({"name": "Ada"})).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let head = app.state.store.head_seq().await.unwrap();
    let count = customers(&app).await;
    let nul = "a\u{0}b";

    // Bodies: 422 naming the field.
    let bodies: Vec<(Method, String, Value, &str)> = vec![
        (Method::POST, "/v1/customers".into(), json!({"name": nul}), "name"),
        (Method::POST, "/v1/customers".into(), json!({"name": "x", "email": "a\u{0}@b.co"}), "email"),
        (Method::POST, "/v1/customers".into(), json!({"name": "x", "metadata": {"k\u{0}": "v"}}), "metadata"),
        (Method::POST, "/v1/customers".into(), json!({"name": "x", "metadata": {"k": nul}}), "metadata.k"),
        (Method::PATCH, format!("/v1/customers/{id}"), json!({"name": nul}), "name"),
        (
            Method::POST,
            "/v1/invoices".into(),
            json!({"customer_id": nul, "amount": 1, "currency": "eur"}),
            "customer_id",
        ),
        (
            Method::POST,
            "/v1/sync".into(),
            json!({"changes": [{"entity": "customer", "fields": {"name": nul}}]}),
            "changes[0].fields.name",
        ),
        (
            Method::POST,
            "/v1/sync".into(),
            json!({"changes": [{"entity": "customer", "client_ref": nul, "fields": {"name": "x"}}]}),
            "changes[0].client_ref",
        ),
        (
            Method::POST,
            "/v1/sync/".into(),
            json!({"last_sync_date": "2021-01-01T00:00:00", "newly_created_records": [
                {"gtin": nul, "updated_at": "2021-01-01T00:00:00", "expiration_date": "2022-01-01T00:00:00"}]}),
            "newly_created_records[0].gtin",
        ),
    ];
    for (method, uri, body, field) in bodies {
        let (s, r) = app.send(method.clone(), &uri, Some(ADMIN), Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{method} {uri}: {r}");
        assert!(field_names(&r).contains(&field.to_string()), "{method} {uri}: want {field} in {r}");
    }

    // Query parameters and path ids: 400 naming the parameter or the path.
    let uris = [
        ("/v1/customers?after=%00", "`after`"),
        ("/v1/customers?email=%00", "`email`"),
        ("/v1/customers?name=a%00b", "`name`"),
        ("/v1/deliveries?record_id=%00", "`record_id`"),
        ("/v1/changes?entity=customer%00", "`entity`"),
        ("/v1/customers/%00", "path"),
        ("/v1/customers/cust_%00x", "path"),
    ];
    for (uri, named) in uris {
        let (s, r) = app.send(Method::GET, uri, Some(ADMIN), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(named), "{uri}: {r}");
    }
    for method in [Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"name": "x"}).to_string());
        let (s, r) = app.send(method.clone(), "/v1/customers/%00", Some(ADMIN), body.as_deref()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method}: {r}");
    }

    assert_eq!(app.state.store.head_seq().await.unwrap(), head, "a refused request wrote a change");
    assert_eq!(customers(&app).await, count);
    let (s, r) = app.send(Method::GET, &format!("/v1/customers/{id}"), Some(ADMIN), None).await;
    assert_eq!((s, r["name"].as_str()), (StatusCode::OK, Some("Ada")));
}

async fn oversized_and_unwanted_bodies_are_413(t: TestStore) {
    let app = App::new(t, vec![]);
    let head = app.state.store.head_seq().await.unwrap();
    let big_name = "x".repeat(300 << 10);
    let cases: Vec<(Method, &str, String, Option<String>)> = vec![
        // Over the 256 KiB limit, without and with a declared length.
        (Method::POST, "/v1/customers", json!({"name": big_name}).to_string(), None),
        (Method::POST, "/v1/customers", json!({"name": big_name}).to_string(), Some((300 << 10).to_string())),
        // Routes that take no body.
        (Method::GET, "/v1/customers", "{}".into(), None),
        (Method::GET, "/v1/stream", "x".into(), None),
        (Method::DELETE, "/v1/customers/cust_x", "{}".into(), None),
        (Method::POST, "/v1/systems/crm/replay", "{}".into(), None),
        (Method::POST, "/v1/deliveries/1/retry", "x".repeat(5 << 20), None),
    ];
    for (method, uri, body, length) in cases {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json");
        if let Some(n) = length {
            req = req.header("content-length", n);
        }
        let resp = app.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {uri}: {v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{method} {uri}");
    }
    // A sync batch may be far larger than a record.
    let changes: Vec<Value> = (0..400)
        .map(|i| {
            let long = "y".repeat(400);
            json!({"entity": "customer", "client_ref": format!("r{i}"),
                       "fields": {"name": "y".repeat(250), "metadata": {"a": long, "b": long}}})
        })
        .collect();
    let (s, r) = app.post("/v1/sync", Some(ADMIN), &json!({"changes": changes})).await;
    assert_eq!(s, StatusCode::OK, "{}", &r.to_string()[..300.min(r.to_string().len())]);
    assert_eq!(app.state.store.head_seq().await.unwrap(), head + 400);
}

async fn app_with_tokens() -> App {
    App::new(syncflow_store::testing::sqlite().await, vec![])
}

#[tokio::test]
async fn unknown_v1_paths_need_a_token_before_they_are_routed() {
    let app = app_with_tokens().await;
    for uri in ["/v1/nope", "/v1/customers/x/y/z", "/v1", "/v1/systems/x/nothing"] {
        let (s, r) = app.send(Method::GET, uri, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}: {r}");
        let (s, _) = app.send(Method::GET, uri, Some("wrong"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
        let (s, r) = app.send(Method::GET, uri, Some(ADMIN), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {r}");
    }
    // Outside /v1 nothing needs a token.
    for (uri, want) in
        [("/healthz", StatusCode::OK), ("/openapi.json", StatusCode::OK), ("/nope", StatusCode::NOT_FOUND)]
    {
        assert_eq!(app.send(Method::GET, uri, None, None).await.0, want, "{uri}");
    }
}

#[tokio::test]
async fn request_ids_are_made_or_echoed() {
    let app = app_with_tokens().await;
    let send = |id: Option<String>| {
        let router = app.router.clone();
        async move {
            let mut req = Request::builder().uri("/healthz");
            if let Some(id) = id {
                req = req.header("x-request-id", id);
            }
            let resp = router.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string())
        }
    };
    let made = send(None).await.expect("a request id is made");
    assert!(made.starts_with("req_"), "{made}");
    assert_ne!(send(None).await.unwrap(), made);
    assert_eq!(send(Some("trace-abc-123".into())).await.as_deref(), Some("trace-abc-123"));
    let long = "a".repeat(500);
    let replaced = send(Some(long.clone())).await.unwrap();
    assert!(replaced.starts_with("req_") && replaced != long);
}

#[tokio::test]
async fn slow_requests_time_out_but_long_polls_do_not() {
    let t = syncflow_store::testing::sqlite().await;
    let state = AppState::new(t.store.clone(), ApiTokens::default()).with_request_timeout(Duration::from_millis(200));
    let app = router(state);
    // A body that never finishes arriving: the handler would wait forever.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let body = Body::from_stream(tokio_stream_from(rx));
    let req = Request::builder()
        .method("POST")
        .uri("/v1/customers")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(req)).await.expect("no hang").unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A long-poll may outlast the request time limit.
    let req = Request::builder().uri("/v1/changes?wait=600ms").body(Body::empty()).unwrap();
    let started = std::time::Instant::now();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(550), "{:?}", started.elapsed());
    drop(t);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn large_json_is_compressed() {
    let app = app_with_tokens().await;
    for i in 0..30 {
        let (s, _) = app.post("/v1/customers", Some(ADMIN), &json!({"name": format!("Customer number {i}")})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let get = |uri: &'static str| {
        let router = app.router.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            resp.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(get("/v1/customers?limit=30").await.as_deref(), Some("gzip"));
    assert_eq!(get("/v1/customers?limit=1").await, None, "small bodies stay plain");
    // Metrics still count by route template.
    let (_, m) = app.send(Method::GET, "/metrics", None, None).await;
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("syncflow_http_requests_total") && m.contains("route=\"/v1/customers\""), "{m}");
}

/// Over a real socket: a body sent to `/v1/stream` gets an answer at once instead
/// of a stream that never reads it.
#[tokio::test]
async fn a_body_sent_to_the_stream_is_refused_without_blocking() {
    let t = syncflow_store::testing::sqlite().await;
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/stream");
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(&url).body("{\"x\": 1}").send())
        .await
        .expect("answered without blocking")
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    // A large one: an answer or a closed connection, never a hang.
    let big = vec![b'x'; 8 << 20];
    let r = tokio::time::timeout(Duration::from_secs(10), client.get(&url).body(big).send()).await;
    match r.expect("no hang") {
        Ok(resp) => assert_eq!(resp.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => eprintln!("connection closed early, as allowed: {e}"),
    }
    server.abort();
}
