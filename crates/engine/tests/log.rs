//! The delivery log a person reads: a retried failure, a success after retries and a
//! dead letter each get one line with system, record, attempt and remarks; a
//! first-try success gets none.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::{Engine, SystemConfig};
use syncflow_sandbox::{Receiver, Reply};
use syncflow_store::{DeliveryFilter, DeliveryStatus};

/// Collects the JSON log lines written while it is the default subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn delivery_lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "delivery")
            .collect()
    }
}

// One thread, so the thread-local subscriber sees the engine's tasks too.
#[tokio::test(flavor = "current_thread")]
async fn failures_retries_and_dead_letters_are_logged_once_each() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let t = syncflow_store::testing::sqlite().await;
    let rx = Receiver::start(None, Duration::ZERO).await;
    let table: toml::Table = toml::from_str(&format!(
        "name = \"crm\"\nkind = \"http\"\nurl = \"{}\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"",
        rx.url("/crm")
    ))
    .unwrap();
    let engine = Arc::new(Engine::new(t.store.clone(), vec![SystemConfig::from_table(table).unwrap()]).unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = engine.spawn(stopped);

    let wait_final = |n: usize| {
        let store = t.store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let f = DeliveryFilter { limit: 100, ..Default::default() };
                let list = store.deliveries(&f).await.unwrap();
                if list.len() == n && list.iter().all(|d| d.status.is_final()) {
                    return list;
                }
                assert!(Instant::now() < deadline, "deliveries not final: {list:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A first-try success: no line.
    t.store.create(&CUSTOMER, json!({"name": "Quiet"}).as_object().unwrap(), "api").await.unwrap();
    wait_final(1).await;
    // A 503, then success.
    rx.script([Reply::error(503, "down for a moment")]);
    let a = t.store.create(&CUSTOMER, json!({"name": "Ada"}).as_object().unwrap(), "api").await.unwrap();
    wait_final(2).await;
    // A 400: dead at once.
    rx.script([Reply::error(400, "email invalid")]);
    let b = t.store.create(&CUSTOMER, json!({"name": "Bob"}).as_object().unwrap(), "api").await.unwrap();
    let list = wait_final(3).await;
    assert!(list.iter().any(|d| d.status == DeliveryStatus::Dead));
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}

    let got = lines.delivery_lines();
    let summary: Vec<(String, String, i64)> = got
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap_or("").to_string(),
                l["record"].as_str().unwrap_or("").to_string(),
                l["attempt"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("WARN".to_string(), format!("customer/{}", a.id), 1),
            ("INFO".to_string(), format!("customer/{}", a.id), 2),
            ("WARN".to_string(), format!("customer/{}", b.id), 1),
        ],
        "{got:#?}"
    );
    assert_eq!(got[0]["message"], "delivery failed; will retry");
    assert_eq!(got[0]["system"], "crm");
    assert_eq!(got[0]["remarks"], "HTTP 503 from crm: down for a moment");
    assert!(got[0]["retry_in"].is_string());
    assert_eq!(got[1]["message"], "delivered after 2 attempts");
    assert!(got[2]["message"].as_str().unwrap().starts_with("delivery is dead"));
    assert!(got[2]["remarks"].as_str().unwrap().contains("email invalid"));
}
