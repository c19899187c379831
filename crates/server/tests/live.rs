//! Live changes over real loopback sockets: the SSE stream (resume with
//! `Last-Event-ID`, entity filter, keep-alives, shutdown) and long-polling on
//! `/v1/changes`. Nothing here sleeps to wait: every read polls with a deadline.
//! Every test runs on SQLite and PostgreSQL; one more, PostgreSQL only, wakes a
//! second node through LISTEN/NOTIFY.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{client, serve, App, ADMIN};
use serde_json::{json, Value};
use syncflow_server::LiveSettings;
use syncflow_store::backend_tests;
use syncflow_store::testing::TestStore;

const DEADLINE: Duration = Duration::from_secs(10);

/// Reads server-sent events from a streaming response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug, PartialEq)]
enum Block {
    Change { id: i64, event: String, data: Value },
    Comment(String),
}

impl SseReader {
    async fn open(url: &str, token: &str, last_event_id: Option<i64>) -> SseReader {
        let mut req = reqwest::Client::new().get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("connect");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(resp.headers()["content-type"].to_str().unwrap(), "text/event-stream");
        SseReader { resp, buf: String::new() }
    }

    /// The next event or comment block; `None` when the server ended the stream.
    async fn next_block(&mut self) -> Option<Block> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                return Some(parse_block(block.trim_end()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => panic!("stream failed: {e}"),
                Err(_) => panic!("no event within {DEADLINE:?}; buffered: {:?}", self.buf),
            }
        }
    }

    /// The next change event, skipping comments.
    async fn next_change(&mut self) -> (i64, Value) {
        loop {
            match self.next_block().await.expect("stream ended") {
                Block::Change { id, event, data } => {
                    assert_eq!(event, "change");
                    assert_eq!(data["seq"], json!(id), "event id is the change seq");
                    return (id, data);
                }
                Block::Comment(_) => continue,
            }
        }
    }
}

fn parse_block(block: &str) -> Block {
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            return Block::Comment(c.trim().to_string());
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let v = v.strip_prefix(' ').unwrap_or(v);
        match k {
            "id" => id = v.parse().ok(),
            "event" => event = v.to_string(),
            "data" => data.push_str(v),
            _ => {}
        }
    }
    Block::Change { id: id.expect("event has an id"), event, data: serde_json::from_str(&data).expect("data is JSON") }
}

fn live(keep_alive_ms: u64, fallback_s: u64) -> LiveSettings {
    LiveSettings {
        keep_alive: Duration::from_millis(keep_alive_ms),
        fallback_poll: Duration::from_secs(fallback_s),
        max_wait: Duration::from_secs(60),
    }
}

async fn create_customer(app: &App, name: &str) -> String {
    let (s, r) = app.post("/v1/customers", Some(ADMIN), &json!({"name": name})).await;
    assert_eq!(s, StatusCode::CREATED);
    r["id"].as_str().unwrap().to_string()
}

/// Polls until `store` has more waiters than `before` (a long-poll or stream has
/// subscribed), with a deadline.
async fn wait_for_waiter(store: &syncflow_store::Store, before: usize) {
    let deadline = Instant::now() + DEADLINE;
    while store.waiters() <= before {
        assert!(Instant::now() < deadline, "the long-poll never started waiting");
        tokio::task::yield_now().await;
    }
}

backend_tests!(
    sse_resumes_with_last_event_id_missing_nothing,
    sse_filters_by_entity_and_keeps_alive,
    sse_streams_end_on_shutdown,
    long_poll_wakes_on_commit,
    long_poll_times_out_empty,
);

async fn sse_resumes_with_last_event_id_missing_nothing(t: TestStore) {
    // A fallback poll far beyond the deadline: only commit wake-ups can deliver.
    let app = App::with_live(t, vec![client("till", "tok", None)], live(15_000, 600));
    let base = serve(app.router.clone()).await;
    let url = format!("{base}/v1/stream?after=0");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create_customer(&app, &format!("c{i}")).await);
    }
    let mut sse = SseReader::open(&url, "tok", None).await;
    let mut last = 0;
    for want in 1..=3 {
        let (id, change) = sse.next_change().await;
        assert_eq!(id, want);
        assert_eq!(change["record_id"], json!(ids[want as usize - 1]));
        last = id;
    }
    // Live: a commit while connected arrives at once.
    create_customer(&app, "live").await;
    last = {
        let (id, _) = sse.next_change().await;
        assert_eq!(id, last + 1);
        id
    };
    drop(sse);

    // Disconnected: N changes of several kinds happen.
    const N: i64 = 6;
    for id in &ids {
        let path = format!("/v1/customers/{id}");
        app.send(axum::http::Method::PATCH, &path, Some(ADMIN), Some(r#"{"email": "x@example.com"}"#)).await;
    }
    app.send(axum::http::Method::DELETE, &format!("/v1/customers/{}", ids[0]), Some(ADMIN), None).await;
    let (s, _) = app
        .post(
            "/v1/sync",
            Some("tok"),
            &json!({"changes": [{"entity": "customer", "fields": {"name": "from sync"}},
                                {"entity": "customer", "id": ids[1], "op": "delete"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.head_seq().await, last + N);

    // Reconnect with Last-Event-ID (which wins over ?after=0): exactly those N, in
    // order, then the next live change — nothing repeated, nothing skipped.
    let mut sse = SseReader::open(&url, "tok", Some(last)).await;
    let mut got = Vec::new();
    for _ in 0..N {
        let (id, change) = sse.next_change().await;
        got.push((id, change["op"].as_str().unwrap().to_string()));
    }
    let want: Vec<(i64, String)> = (last + 1..=last + N)
        .zip(["upsert", "upsert", "upsert", "delete", "upsert", "delete"])
        .map(|(id, op)| (id, op.to_string()))
        .collect();
    assert_eq!(got, want);
    create_customer(&app, "after").await;
    assert_eq!(sse.next_change().await.0, last + N + 1);
    // Without a position, a stream starts at the head: only new changes.
    let mut fresh = SseReader::open(&format!("{base}/v1/stream"), "tok", None).await;
    create_customer(&app, "newest").await;
    assert_eq!(fresh.next_change().await.0, last + N + 2);
    // A position beyond the log is refused.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/stream"))
        .bearer_auth("tok")
        .header("Last-Event-ID", "999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
}

async fn sse_filters_by_entity_and_keeps_alive(t: TestStore) {
    let app = App::with_live(t, vec![client("billing", "tok-billing", Some(&["invoice"]))], live(100, 600));
    let base = serve(app.router.clone()).await;
    let mut sse = SseReader::open(&format!("{base}/v1/stream?entity=invoice&after=0"), "tok-billing", None).await;
    let customer = create_customer(&app, "C").await;
    let (s, _) = app
        .post("/v1/invoices", Some(ADMIN), &json!({"customer_id": customer, "amount": 100, "currency": "eur"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (id, change) = sse.next_change().await;
    assert_eq!((id, change["entity"].as_str()), (2, Some("invoice")));
    // Idle: keep-alive comments come.
    let mut comments = 0;
    while comments < 2 {
        match sse.next_block().await.expect("stream open") {
            Block::Comment(text) => {
                assert_eq!(text, "keep-alive");
                comments += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The client's own token cannot widen the filter.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/stream?entity=customer"))
        .bearer_auth("tok-billing")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::FORBIDDEN);
    // With no filter it gets its own entities only.
    let mut all = SseReader::open(&format!("{base}/v1/stream?after=0"), "tok-billing", None).await;
    assert_eq!(all.next_change().await.0, 2);
}

async fn sse_streams_end_on_shutdown(t: TestStore) {
    let app = App::with_live(t, vec![client("till", "tok", None)], live(15_000, 600));
    let base = serve(app.router.clone()).await;
    let mut sse = SseReader::open(&format!("{base}/v1/stream"), "tok", None).await;
    let (_, gauge) = app.get("/metrics", None).await;
    assert!(gauge.as_str().unwrap().contains("syncflow_stream_clients 1"), "{gauge}");
    app.state.begin_shutdown();
    // The stream closes by itself, so graceful shutdown is not held open.
    loop {
        match sse.next_block().await {
            None => break,
            Some(Block::Comment(_)) => continue,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

async fn long_poll_wakes_on_commit(t: TestStore) {
    let app = App::with_live(t, vec![client("till", "tok", None)], live(15_000, 600));
    let base = serve(app.router.clone()).await;
    create_customer(&app, "before").await;
    let waiting_before = app.state.store.waiters();
    let started = Instant::now();
    let poll = tokio::spawn(
        reqwest::Client::new()
            .get(format!("{base}/v1/changes?after=1&wait=30s&entity=customer"))
            .bearer_auth("tok")
            .send(),
    );
    // Commit only once the poll is waiting (there is nothing after seq 1 for it).
    wait_for_waiter(&app.state.store, waiting_before).await;
    assert!(!poll.is_finished());
    create_customer(&app, "wake").await;
    let resp = poll.await.unwrap().unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["seq"], 2, "{body}");
    assert_eq!(body["next_after"], 2);
    // Woken by the commit, not by the (600 s) fallback or the 30 s wait.
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
}

async fn long_poll_times_out_empty(t: TestStore) {
    let app = App::with_live(t, vec![], live(15_000, 600));
    create_customer(&app, "only").await;
    let started = Instant::now();
    let (s, body) = app.get("/v1/changes?after=1&wait=300ms", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["next_after"], 1);
    // Bad waits and positions beyond the log are 400s.
    let (s, _) = app.get("/v1/changes?wait=2h", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, r) = app.get("/v1/changes?after=50", Some(ADMIN)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(r["error"]["code"], "invalid_cursor");
}

/// Two nodes on one PostgreSQL database: a long-poll on node 2 is woken by a
/// commit on node 1 through LISTEN/NOTIFY, well before its fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_long_poll_is_woken_by_another_node() {
    let Some(node1) = syncflow_store::testing::postgres().await else {
        return;
    };
    let node2_store = syncflow_store::Store::open(&node1.url).await.unwrap();
    let listener = node2_store.spawn_listener().expect("postgres listens");
    tokio::time::timeout(DEADLINE, node2_store.listening()).await.expect("the listener subscribes");
    let node2 = syncflow_server::router(
        syncflow_server::AppState::new(node2_store.clone(), Default::default()).with_live(live(15_000, 600)),
    );
    let base = serve(node2).await;
    let waiting_before = node2_store.waiters();
    let started = Instant::now();
    let poll = tokio::spawn(reqwest::Client::new().get(format!("{base}/v1/changes?after=0&wait=30s")).send());
    wait_for_waiter(&node2_store, waiting_before).await;
    let body = json!({"name": "from node 1"});
    node1.store.create(&syncflow_core::CUSTOMER, body.as_object().unwrap(), "api").await.unwrap();
    let body: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(body["data"][0]["seq"], 1);
    assert!(started.elapsed() < DEADLINE);
    listener.abort();
    node2_store.close().await;
}
