//! The delivery engine against real HTTP receivers, on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::{Engine, SystemConfig};
use syncflow_sandbox::{Receiver, Reply};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, Delivery, DeliveryFilter, DeliveryStatus, Store};
use tokio::sync::watch;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A running engine over `store` with systems from TOML `[[systems]]` blocks.
struct Running {
    store: Store,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    fn start(store: &Store, systems_toml: &str) -> Running {
        #[derive(serde::Deserialize)]
        struct File {
            systems: Vec<toml::Table>,
        }
        let file: File = toml::from_str(systems_toml).unwrap();
        let configs = file.systems.into_iter().map(|t| SystemConfig::from_table(t).unwrap()).collect();
        let engine = Arc::new(Engine::new(store.clone(), configs).unwrap());
        let (stop, rx) = watch::channel(false);
        let tasks = engine.spawn(rx);
        Running { store: store.clone(), stop, tasks }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Polls until `pred` holds for the deliveries matching `filter` (20 s at most).
    async fn wait_for(&self, filter: DeliveryFilter, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.store.deliveries(&DeliveryFilter { limit: 1000, ..filter.clone() }).await.unwrap();
            if pred(&list) {
                return list;
            }
            assert!(Instant::now() < deadline, "condition not reached; deliveries: {list:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn system(name: &str, receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[systems]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\nsecret = \"shh\"\n\
         backoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{extra}\n",
        receiver.url(&format!("/{name}"))
    )
}

fn all_final(list: &[Delivery]) -> bool {
    !list.is_empty() && list.iter().all(|d| d.status.is_final())
}

backend_tests!(
    transient_failures_then_success_keep_history,
    retry_after_is_honoured,
    client_error_is_dead_at_once_and_replayable,
    outage_delivers_in_order_or_coalesced,
    change_never_goes_back_to_its_origin,
    final_outcome_is_called_back_to_the_origin,
    rate_limit_spaces_requests,
    paused_system_holds_deliveries_until_resumed,
);

async fn transient_failures_then_success_keep_history(t: TestStore) {
    let rx = Receiver::start(Some("shh"), Duration::ZERO).await;
    rx.script([Reply::error(500, "database on fire"), Reply::status(502)]);
    let run = Running::start(&t.store, &system("crm", &rx, ""));
    let c = t.store.create(&CUSTOMER, &obj(json!({"name": "Ada"})), "api").await.unwrap();
    let list = run.wait_for(DeliveryFilter { system: Some("crm".into()), ..Default::default() }, all_final).await;
    let d = &list[0];
    assert_eq!((d.status, d.attempts, d.record_id.as_str()), (DeliveryStatus::Delivered, 3, c.id.as_str()));
    assert_eq!(d.external_id.as_deref(), Some(format!("ext_{}", c.id).as_str()));
    let history = t.store.attempts(d.id).await.unwrap();
    let outcomes: Vec<_> = history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["retrying", "retrying", "delivered"]);
    assert_eq!(history[0].remarks.as_deref(), Some("HTTP 500 from crm: database on fire"));
    assert_eq!(history[1].http_status, Some(502));
    // The link was stored with the receiver's id.
    let link = t.store.link("customer", &c.id, "crm").await.unwrap().unwrap();
    assert_eq!(link.external_id, format!("ext_{}", c.id));
    // Signed, with one idempotency key for all three attempts.
    let got = rx.received();
    assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    assert!(got.iter().all(|r| r.idempotency_key == got[0].idempotency_key));
    assert_eq!(rx.applied().len(), 1);
    run.stop().await;
}

async fn retry_after_is_honoured(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    rx.script([Reply::too_many(2)]);
    let run = Running::start(&t.store, &system("crm", &rx, ""));
    t.store.create(&CUSTOMER, &obj(json!({"name": "Bo"})), "api").await.unwrap();
    let list = run.wait_for(DeliveryFilter::default(), all_final).await;
    let got = rx.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, before Retry-After");
    let history = t.store.attempts(list[0].id).await.unwrap();
    assert_eq!(history[0].remarks.as_deref(), Some("HTTP 429 from crm: slow down, retry after 2s"));
    run.stop().await;
}

async fn client_error_is_dead_at_once_and_replayable(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    rx.set_fallback(Some(Reply::error(400, "email invalid")));
    let run = Running::start(&t.store, &system("crm", &rx, ""));
    t.store.create(&CUSTOMER, &obj(json!({"name": "Cy"})), "api").await.unwrap();
    let list = run.wait_for(DeliveryFilter::default(), all_final).await;
    let d = &list[0];
    assert_eq!((d.status, d.attempts, d.http_status), (DeliveryStatus::Dead, 1, Some(400)));
    assert_eq!(d.remarks.as_deref(), Some("HTTP 400 from crm: email invalid — not retried"));

    // The receiver is fixed; replaying the dead letter delivers it.
    rx.set_fallback(None);
    assert!(t.store.retry_delivery(d.id).await.unwrap().is_some());
    let list = run.wait_for(DeliveryFilter::default(), |l| l[0].status == DeliveryStatus::Delivered).await;
    assert_eq!(list[0].attempts, 1, "replay starts a fresh attempt budget");
    assert_eq!(t.store.attempts(d.id).await.unwrap().len(), 2, "history keeps the failed try");
    assert!(t.store.retry_delivery(d.id).await.unwrap().is_none(), "only dead deliveries replay");
    run.stop().await;
}

async fn outage_delivers_in_order_or_coalesced(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    rx.set_fallback(Some(Reply::status(503)));
    let run = Running::start(&t.store, &system("crm", &rx, "concurrency = 16\nmax_attempts = 1000"));
    let c = t.store.create(&CUSTOMER, &obj(json!({"name": "v1"})), "api").await.unwrap();
    for i in 2..=201 {
        t.store.update(&CUSTOMER, &c.id, &obj(json!({"name": format!("v{i}")})), None, "api").await.unwrap();
    }
    // Down: the record's queue head keeps failing; the rest queue behind it.
    run.wait_for(DeliveryFilter::default(), |l| l.len() == 201 && rx.received().len() >= 3).await;
    rx.set_fallback(None);
    let list = run.wait_for(DeliveryFilter::default(), |l| l.len() == 201 && all_final(l)).await;
    let applied: Vec<i64> = rx.applied().iter().map(|b| b["change"]["version"].as_i64().unwrap()).collect();
    assert!(applied.windows(2).all(|w| w[0] < w[1]), "older after newer: {applied:?}");
    assert_eq!(applied.last(), Some(&201), "the latest state arrives");
    assert!(applied.len() < 50, "queued updates were coalesced, sent {}", applied.len());
    let skipped = list.iter().filter(|d| d.status == DeliveryStatus::Skipped).count();
    assert_eq!(skipped + applied.len(), 201);
    assert!(list.iter().filter(|d| d.status == DeliveryStatus::Skipped).all(|d| d
        .remarks
        .as_deref()
        .unwrap()
        .starts_with("superseded by change")));
    assert_eq!(rx.max_concurrent_per_record(), 1);
    run.stop().await;
}

async fn change_never_goes_back_to_its_origin(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    let systems = format!("{}{}", system("crm", &rx, ""), system("erp", &rx, ""));
    let run = Running::start(&t.store, &systems);
    t.store.create(&CUSTOMER, &obj(json!({"name": "From CRM"})), "crm").await.unwrap();
    t.store.create(&CUSTOMER, &obj(json!({"name": "From API"})), "api").await.unwrap();
    let list = run.wait_for(DeliveryFilter::default(), |l| l.len() == 3 && all_final(l)).await;
    let routes: Vec<(i64, &str)> = list.iter().map(|d| (d.change_seq, d.system.as_str())).collect();
    assert_eq!(routes, vec![(1, "erp"), (2, "crm"), (2, "erp")]);
    assert!(rx.received().iter().all(|r| !(r.path == "/crm" && r.body["change"]["origin"] == "crm")));
    run.stop().await;
}

async fn final_outcome_is_called_back_to_the_origin(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    let callbacks = Receiver::start(Some("cb-secret"), Duration::ZERO).await;
    rx.script([Reply::error(422, "no such country")]);
    let shop = format!(
        "[[systems]]\nname = \"shop\"\nkind = \"http\"\nurl = \"{}\"\ncallback_url = \"{}\"\ncallback_secret = \"cb-secret\"\n",
        rx.url("/shop"),
        callbacks.url("/status")
    );
    let run = Running::start(&t.store, &format!("{shop}{}", system("crm", &rx, "")));
    let dead = t.store.create(&CUSTOMER, &obj(json!({"name": "Bad"})), "shop").await.unwrap();
    run.wait_for(DeliveryFilter { system: Some("crm".into()), ..Default::default() }, all_final).await;
    let good = t.store.create(&CUSTOMER, &obj(json!({"name": "Good"})), "shop").await.unwrap();
    run.wait_for(DeliveryFilter { system: Some("shop".into()), ..Default::default() }, |l| {
        l.len() == 2 && all_final(l)
    })
    .await;
    let mut got: Vec<(String, String, String)> = callbacks
        .applied()
        .iter()
        .map(|b| {
            (
                b["change"]["record_id"].as_str().unwrap().to_string(),
                b["type"].as_str().unwrap().to_string(),
                b["delivery"]["system"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (dead.id.clone(), "delivery.dead".to_string(), "crm".to_string()),
        (good.id.clone(), "delivery.delivered".to_string(), "crm".to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(callbacks.received().iter().all(|r| r.signature_ok == Some(true)));
    let dead_cb = callbacks.applied().into_iter().find(|b| b["type"] == "delivery.dead").unwrap();
    assert!(dead_cb["delivery"]["remarks"].as_str().unwrap().contains("no such country"));
    run.stop().await;
}

async fn rate_limit_spaces_requests(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    let run = Running::start(&t.store, &system("crm", &rx, "rate_limit = 20\nburst = 1\nconcurrency = 8"));
    for i in 0..21 {
        t.store.create(&CUSTOMER, &obj(json!({"name": format!("R{i}")})), "api").await.unwrap();
    }
    run.wait_for(DeliveryFilter::default(), |l| l.len() == 21 && all_final(l)).await;
    let got = rx.received();
    let span = got.last().unwrap().at - got[0].at;
    // 21 requests at 20/s with a burst of 1 need at least 1 s.
    assert!(span >= Duration::from_millis(950), "21 requests took only {span:?}");
    run.stop().await;
}

async fn paused_system_holds_deliveries_until_resumed(t: TestStore) {
    let rx = Receiver::start(None, Duration::ZERO).await;
    t.store.set_paused("crm", true).await.unwrap();
    let run = Running::start(&t.store, &system("crm", &rx, ""));
    t.store.create(&CUSTOMER, &obj(json!({"name": "Wait"})), "api").await.unwrap();
    run.wait_for(DeliveryFilter::default(), |l| l.len() == 1).await;
    // Held: still pending after the dispatcher created it and workers looked twice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        t.store.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap()[0].status,
        DeliveryStatus::Pending
    );
    assert!(rx.received().is_empty());
    t.store.set_paused("crm", false).await.unwrap();
    run.wait_for(DeliveryFilter::default(), all_final).await;
    assert_eq!(rx.applied().len(), 1);
    run.stop().await;
}
