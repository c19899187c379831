//! The REST API driven in-process with `oneshot`, on SQLite and PostgreSQL.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, Store};
use tower::ServiceExt;

struct Api {
    app: Router,
    store: Store,
    token: Option<&'static str>,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    fn new(t: &TestStore) -> Self {
        Self { app: router(AppState::new(t.store.clone(), ApiTokens::default())), store: t.store.clone(), token: None }
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    async fn json(&self, method: &str, uri: &str, body: Value) -> Reply {
        self.send(method, uri, &[("content-type", "application/json")], Some(&body.to_string())).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, &[], None).await
    }
}

backend_tests!(
    customer_lifecycle_with_etags,
    bad_input_gets_clear_errors_and_writes_nothing,
    invoices_reference_customers,
    lists_page_and_filter,
    changes_endpoint_pages_the_log,
    tokens_guard_v1_but_not_operations,
    metrics_count_requests_and_changes,
    nodes_lists_heart_beating_engines,
);

async fn nodes_lists_heart_beating_engines(t: TestStore) {
    let api = Api::new(&t);
    assert_eq!(api.get("/v1/nodes").await.body["data"], json!([]));
    let node = syncflow_store::Node {
        id: "n1".into(),
        host: "box".into(),
        version: "1.0".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        last_seen_ms: 0,
    };
    t.store.heartbeat(&node, 10_000).await.unwrap();
    let r = api.get("/v1/nodes").await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = &r.body["data"][0];
    assert_eq!((listed["id"].as_str(), listed["host"].as_str()), (Some("n1"), Some("box")));
    assert!(listed["seen_ms_ago"].as_i64().unwrap() < 10_000, "{listed}");
}

async fn customer_lifecycle_with_etags(t: TestStore) {
    let api = Api::new(&t);
    let r = api
        .json("POST", "/v1/customers", json!({"name": "Ada", "email": "ada@example.com", "metadata": {"tier": "gold"}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.headers["etag"], "\"1\"");
    assert_eq!(r.headers["location"], format!("/v1/customers/{id}").as_str());
    assert_eq!(r.body["object"], "customer");

    let r = api.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["metadata"]["tier"], "gold");

    let r = api
        .send(
            "PATCH",
            &format!("/v1/customers/{id}"),
            &[("content-type", "application/json"), ("if-match", "\"1\"")],
            Some(r#"{"name":"Ada L."}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.headers["etag"], "\"2\"");

    let r = api.send("DELETE", &format!("/v1/customers/{id}"), &[("if-match", "2")], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["deleted_at"].is_string());
    assert_eq!(api.get(&format!("/v1/customers/{id}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.store.head_seq().await.unwrap(), 3);
}

async fn bad_input_gets_clear_errors_and_writes_nothing(t: TestStore) {
    let api = Api::new(&t);
    let r = api.json("POST", "/v1/customers", json!({"name": "Bo"})).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/customers/{id}");
    let head = api.store.head_seq().await.unwrap();
    let ct = ("content-type", "application/json");

    // Malformed JSON, wrong JSON shape, missing content type.
    let r = api.send("POST", "/v1/customers", &[ct], Some(r#"{"name": "#)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("malformed JSON"));
    let r = api.send("POST", "/v1/customers", &[ct], Some("[1,2]")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.send("POST", "/v1/customers", &[], Some(r#"{"name":"x"}"#)).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Invalid fields: every one listed.
    let r = api.json("POST", "/v1/customers", json!({"email": "not-an-email", "version": 9, "nickname": "x"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["code"], "validation_failed");
    let mut fields: Vec<&str> =
        r.body["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, vec!["email", "name", "nickname", "version"]);
    let r = api.json("PATCH", &path, json!({"name": null})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api.json("PATCH", &path, json!({"metadata": {"k": 5}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Unknown ids.
    for (method, body) in [("GET", None), ("PATCH", Some(r#"{"name":"x"}"#)), ("DELETE", None)] {
        let r = api.send(method, "/v1/customers/cust_nope", &[ct], body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(r.body["error"]["code"], "not_found");
    }

    // Version preconditions.
    let r = api.send("PATCH", &path, &[ct, ("if-match", "\"7\"")], Some(r#"{"name":"x"}"#)).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.body["error"]["current_version"], 1);
    let r = api.send("DELETE", &path, &[("if-match", "7")], None).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = api.send("PATCH", &path, &[ct, ("if-match", "soon")], Some(r#"{"name":"x"}"#)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Bad query strings.
    for uri in [
        "/v1/customers?limit=0",
        "/v1/customers?limit=x",
        "/v1/customers?colour=red",
        "/v1/changes?after=-1",
        "/v1/changes?since=1",
    ] {
        assert_eq!(api.get(uri).await.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    assert_eq!(api.get("/v1/nothing").await.status, StatusCode::NOT_FOUND);

    // None of it wrote anything.
    assert_eq!(api.store.head_seq().await.unwrap(), head);
    let r = api.get(&path).await;
    assert_eq!((r.body["name"].as_str(), r.body["version"].as_i64()), (Some("Bo"), Some(1)));
}

async fn invoices_reference_customers(t: TestStore) {
    let api = Api::new(&t);
    let head = api.store.head_seq().await.unwrap();
    let r =
        api.json("POST", "/v1/invoices", json!({"customer_id": "cust_ghost", "amount": 500, "currency": "usd"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["fields"][0]["field"], "customer_id");
    assert_eq!(api.store.head_seq().await.unwrap(), head);

    let cid = api.json("POST", "/v1/customers", json!({"name": "Cy"})).await.body["id"].as_str().unwrap().to_string();
    let r = api
        .json(
            "POST",
            "/v1/invoices",
            json!({"customer_id": cid, "amount": 500, "currency": "USD", "due_date": "2027-01-31"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["id"].as_str().unwrap().starts_with("invc_"));
    assert_eq!(r.body["currency"], "usd");
    let iid = r.body["id"].as_str().unwrap().to_string();
    let r = api.json("PATCH", &format!("/v1/invoices/{iid}"), json!({"status": "paid"})).await;
    assert_eq!(r.body["status"], "paid");
    let r = api.json("PATCH", &format!("/v1/invoices/{iid}"), json!({"status": "lost", "amount": -3})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["fields"].as_array().unwrap().len(), 2);
    let r = api.get(&format!("/v1/invoices?customer_id={cid}")).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
}

async fn lists_page_and_filter(t: TestStore) {
    let api = Api::new(&t);
    for i in 0..5 {
        api.json("POST", "/v1/customers", json!({"name": format!("P{i}"), "email": format!("p{}@example.com", i % 2)}))
            .await;
    }
    let first = api.get("/v1/customers?limit=2").await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["has_more"], true);
    let after = first.body["next_after"].as_str().unwrap();
    let rest = api.get(&format!("/v1/customers?limit=10&after={after}")).await;
    let names: Vec<&str> = rest.body["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["P2", "P3", "P4"]);
    assert_eq!(rest.body["has_more"], false);
    assert!(rest.body["next_after"].is_null());
    let by_email = api.get("/v1/customers?email=P1@EXAMPLE.com").await;
    let names: Vec<&str> =
        by_email.body["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["P1", "P3"]);
}

async fn changes_endpoint_pages_the_log(t: TestStore) {
    let api = Api::new(&t);
    for i in 0..5 {
        api.json("POST", "/v1/customers", json!({"name": format!("C{i}")})).await;
    }
    let r = api.get("/v1/changes?after=0&limit=3").await;
    let seqs: Vec<i64> = r.body["data"].as_array().unwrap().iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(r.body["next_after"], 3);
    assert_eq!(r.body["data"][0]["origin"], "api");
    assert_eq!(r.body["data"][0]["snapshot"]["name"], "C0");
    let r = api.get("/v1/changes?after=3").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let r = api.get("/v1/changes?after=5").await;
    assert_eq!((r.body["data"].as_array().unwrap().len(), r.body["next_after"].as_i64()), (0, Some(5)));
}

async fn tokens_guard_v1_but_not_operations(t: TestStore) {
    let mut api = Api::new(&t);
    api.app = router(AppState::new(t.store.clone(), ApiTokens::parse("s3cret,other")));
    let r = api.get("/v1/customers").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let r = api.send("GET", "/v1/customers", &[("authorization", "Bearer wrong")], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api.json("POST", "/v1/customers", json!({"name": "Sneaky"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.store.head_seq().await.unwrap(), 0);
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(api.get(open).await.status, StatusCode::OK, "{open}");
    }
    api.token = Some("other");
    assert_eq!(api.get("/v1/customers").await.status, StatusCode::OK);
}

async fn metrics_count_requests_and_changes(t: TestStore) {
    let api = Api::new(&t);
    api.json("POST", "/v1/customers", json!({"name": "M"})).await;
    api.json("POST", "/v1/customers", json!({})).await;
    let r = api.send("GET", "/metrics", &[], None).await;
    let text = r.body.as_str().unwrap();
    assert!(
        text.contains(r#"syncflow_http_requests_total{method="POST",route="/v1/customers",status="201"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"syncflow_http_requests_total{method="POST",route="/v1/customers",status="422"} 1"#));
    assert!(text.contains(r#"syncflow_changes_written_total{entity="customer",origin="api"} 1"#));
    assert!(text.contains("syncflow_change_log_head 1"));
    let r = api.get("/readyz").await;
    assert_eq!(r.body["database"], api.store.backend_name());
}

#[tokio::test]
async fn openapi_describes_every_entity_route() {
    let t = syncflow_store::testing::sqlite().await;
    let api = Api::new(&t);
    let doc = api.get("/openapi.json").await.body;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in ["/v1/customers", "/v1/customers/{id}", "/v1/invoices", "/v1/invoices/{id}", "/v1/changes"] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert_eq!(doc["components"]["schemas"]["CustomerInput"]["required"], json!(["name"]));
    assert_eq!(doc["components"]["schemas"]["Invoice"]["properties"]["status"]["enum"][0], "draft");
}

/// Every literal route the router declares (in `src/`) is described in
/// `/openapi.json`, with each of its methods. Entity routes are generated from the
/// descriptors and checked by `openapi_describes_every_entity_route`.
#[test]
fn openapi_describes_every_served_route() {
    fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut files = Vec::new();
    sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let doc = syncflow_server::openapi_document();
    let mut checked = 0;
    for text in &files {
        for (i, _) in text.match_indices(".route(\"") {
            let rest = &text[i + 8..];
            let path = &rest[..rest.find('"').unwrap()];
            let api = ["/v1", "/webhooks", "/healthz", "/readyz", "/metrics", "/openapi.json"];
            if !api.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) || path == "/openapi.json" {
                continue;
            }
            let handlers = &rest[path.len()..rest.find(")\n").unwrap_or(rest.len()).min(rest.len())];
            let described = &doc["paths"][path];
            assert!(described.is_object(), "route {path} is not in /openapi.json");
            for method in ["get", "post", "patch", "delete", "put"] {
                if handlers.contains(&format!("{method}(")) {
                    assert!(described[method].is_object(), "{} {path} is not in /openapi.json", method.to_uppercase());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "found only {checked} routes: is the scan still reading the router?");
}
