//! kill -9 of the hub while it publishes to Kafka (librdkafka's mock cluster in the
//! test process): after a restart every change is on the topic, and a repeat carries
//! the same `id` header and value as the first copy.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{temp_dir, Hub};
use serde_json::{json, Value};
use syncflow_sandbox::KafkaSandbox;

const N: usize = 600;

async fn depth(hub: &Hub) -> i64 {
    let v: Value = reqwest::get(hub.url("/v1/systems")).await.unwrap().json().await.unwrap();
    v["data"][0]["queue"]["depth"].as_i64().unwrap() + v["dispatch"]["lag"].as_i64().unwrap()
}

async fn kill_mid_publish(database_env: &[(&str, &str)]) {
    let kafka = KafkaSandbox::start(1).unwrap();
    kafka.create_topic("syncflow.changes", 3).unwrap();
    let dir = temp_dir();
    // Slow batches (linger) and one at a time, so the kill lands between them; a
    // short message timeout allows a short lease (it must outlast a push).
    let config = format!(
        "[[systems]]\nname = \"bus\"\nkind = \"kafka\"\nbrokers = \"{}\"\nlease = \"7s\"\nconcurrency = 1\n\
         [systems.librdkafka]\n\"linger.ms\" = 200\n\"message.timeout.ms\" = 1000\n",
        kafka.bootstrap()
    );
    std::fs::write(Path::new(&dir).join("syncflow.toml"), config).unwrap();
    let mut first = Hub::start(&dir, &["--config", "syncflow.toml"], database_env);
    let client = reqwest::Client::new();
    client.post(first.url("/v1/systems/bus/pause")).send().await.unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..N {
        let r = client.post(first.url("/v1/customers")).json(&json!({"name": format!("k{i}")})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        ids.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    client.post(first.url("/v1/systems/bus/resume")).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let d = depth(&first).await;
        if d < N as i64 {
            break d;
        }
        assert!(Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.signal("-KILL");
    first.wait_exit();
    assert!(left > 0, "killed too late to prove anything");

    let second = Hub::start(&dir, &["--config", "syncflow.toml"], database_env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&second).await > 0 {
        assert!(Instant::now() < deadline, "backlog not drained after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: BTreeSet<String> = ids.iter().map(|id| format!("customer/{id}")).collect();
    let messages = kafka
        .read("syncflow.changes", Duration::from_secs(60), |m| {
            m.iter().filter_map(|m| m.key.clone()).collect::<BTreeSet<_>>() == keys
        })
        .await;
    let seen: BTreeSet<String> = messages.iter().filter_map(|m| m.key.clone()).collect();
    assert_eq!(seen, keys, "every change is on the topic");
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for m in &messages {
        let id = m.headers["id"].clone();
        if let Some(first_copy) = by_id.insert(id.clone(), &m.value) {
            assert_eq!(first_copy, &m.value, "a repeat of change {id} differs from the first copy");
        }
    }
    assert_eq!(by_id.len(), N, "one change per customer");
    eprintln!("{} messages for {N} changes ({} repeated after the kill)", messages.len(), messages.len() - N);
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_publish_on_sqlite_loses_nothing() {
    kill_mid_publish(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_publish_on_postgres_loses_nothing() {
    let Some(url) = syncflow_store::testing::postgres_url().await else { return };
    kill_mid_publish(&[("SYNCFLOW_DATABASE_URL", &url)]).await;
}
