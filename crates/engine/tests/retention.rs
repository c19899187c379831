//! Retention seen from the engine, on SQLite and PostgreSQL: a webhook re-delivered
//! after its inbox row was pruned is still refused by the stale yardstick (never
//! re-applied), and the engine's retention loop prunes on its interval.

use std::time::{Duration, Instant};

use serde_json::Value;
use syncflow_connectors::stripe::inward::parse_event;
use syncflow_core::sync::InboxOutcome;
use syncflow_core::CUSTOMER;
use syncflow_engine::{Engine, RetentionSettings, SystemConfig};
use syncflow_sandbox::{StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, now_ms, NewInboxEvent, Retention};

const KEY: &str = "sk_test_retention";

backend_tests!(a_webhook_redelivered_after_pruning_is_still_stale, the_engine_prunes_on_its_interval);

async fn a_webhook_redelivered_after_pruning_is_still_stale(t: TestStore) {
    let s = &t.store;
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let text = format!(
        "name = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{KEY}\"\napi_rate_limit = 1000\n",
        sandbox.url()
    );
    let config = SystemConfig::from_table(toml::from_str(&text).unwrap()).unwrap();
    let engine = Engine::new(s.clone(), vec![config]).unwrap();
    let pipeline = engine.pipelines().remove("stripe").unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", sandbox.url());
    let created: Value = http
        .post(url("/v1/customers"))
        .bearer_auth(KEY)
        .form(&[("name", "Ada"), ("email", "ada@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cus = created["id"].as_str().unwrap().to_string();
    http.post(url(&format!("/v1/customers/{cus}"))).bearer_auth(KEY).form(&[("name", "Ada L")]).send().await.unwrap();
    let page: Value = http.get(url("/v1/events?limit=10")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    let mut events = page["data"].as_array().unwrap().clone();
    events.reverse();
    assert_eq!(events.len(), 2, "created, then updated");
    // The sandbox stamps whole seconds; put the first event clearly before the second.
    let mut first = events[0].clone();
    first["created"] = (events[1]["created"].as_i64().unwrap() - 100).into();
    let second = events[1].clone();
    let receive = |event: Value| {
        let pipeline = pipeline.clone();
        async move {
            let parsed = parse_event(&event).unwrap();
            pipeline.receive(&parsed, event.to_string(), "webhook").await.unwrap()
        }
    };
    assert_eq!(receive(first.clone()).await.0.outcome, InboxOutcome::Applied);
    assert_eq!(receive(second.clone()).await.0.outcome, InboxOutcome::Applied);
    let kept = s.inbox_event("stripe", second["id"].as_str().unwrap()).await.unwrap().unwrap();
    let record_id = s.link_by_external_id("stripe", "customer", &cus).await.unwrap().unwrap().record_id;

    let cutoff = tick().await;
    let p = s.prune(&Retention { cutoff_ms: cutoff, ..Retention::older_than(Duration::ZERO) }).await.unwrap();
    assert_eq!((p.inbox, p.inbox_payloads), (1, 1), "the first row went, the yardstick stayed: {p:?}");

    // Stripe re-delivers the first event: recorded anew, but older than the kept
    // yardstick, so it settles stale and the hub keeps the newer name.
    let (again, duplicate) = receive(first).await;
    assert!(!duplicate, "its row was pruned, so it is recorded again");
    assert_eq!(again.outcome, InboxOutcome::Stale, "{:?}", again.remarks);
    assert_eq!(s.get(&CUSTOMER, &record_id).await.unwrap().unwrap().fields["name"], "Ada L");
    // The second is still a duplicate of its kept row.
    let (dup, duplicate) = receive(second).await;
    assert!(duplicate && dup.id == kept.id && dup.outcome == InboxOutcome::Applied);
}

async fn the_engine_prunes_on_its_interval(t: TestStore) {
    let s = &t.store;
    for i in 0..3 {
        let e = NewInboxEvent {
            system: "stripe".into(),
            event_id: format!("evt_{i}"),
            event_type: "ping".into(),
            entity: None,
            external_id: None,
            event_created: 1,
            source: "webhook".into(),
            payload: "{}".into(),
        };
        let (row, _) = s.inbox_receive(&e, 60_000).await.unwrap();
        s.inbox_settle(row.id, InboxOutcome::Ignored, None, None).await.unwrap();
    }
    tick().await;
    let settings = RetentionSettings {
        age: Some(Duration::from_millis(1)),
        interval: Duration::from_millis(20),
        ..RetentionSettings::default()
    };
    let engine = std::sync::Arc::new(Engine::new(s.clone(), Vec::new()).unwrap().with_retention(settings));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = engine.spawn(stopped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.inbox("stripe", 0, 10).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the retention loop never pruned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.metrics().value("syncflow_retention_pruned_total", &[("table", "inbox")]), 3.0);
    stop.send(true).unwrap();
    while tasks.join_next().await.is_some() {}
}

/// Waits until the clock (ms) has moved past everything written so far.
async fn tick() -> i64 {
    let start = now_ms();
    while now_ms() <= start {
        tokio::task::yield_now().await;
    }
    now_ms()
}
