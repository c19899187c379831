//! Delivery across process boundaries: the hub as a child process, a receiver in
//! the test process, real HTTP in between. Crash safety (SIGKILL mid-run) and two
//! nodes sharing one PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{temp_dir, Hub};
use serde_json::{json, Value};
use syncflow_sandbox::Receiver;

fn write_config(dir: &Path, receiver: &Receiver) {
    let text = format!(
        "[[systems]]\nname = \"crm\"\nkind = \"http\"\nurl = \"{}\"\nsecret = \"shh\"\nlease = \"2s\"\ntimeout = \"1s\"\n\
         concurrency = 8\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n",
        receiver.url("/crm")
    );
    std::fs::write(dir.join("syncflow.toml"), text).unwrap();
}

async fn create_customers(hub: &Hub, n: usize, prefix: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let r =
            client.post(hub.url("/v1/customers")).json(&json!({"name": format!("{prefix}{i}")})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Polls the hub's deliveries API until every delivery is final (30 s at most).
async fn wait_all_final(hub: &Hub, expected: usize) -> Vec<Value> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page: Value = client
                .get(hub.url(&format!("/v1/deliveries?order=asc&limit=1000&after={after}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let data = page["data"].as_array().unwrap().clone();
            all.extend(data);
            match page["next_after"].as_i64() {
                Some(n) => after = n,
                None => break,
            }
        }
        let finished =
            all.iter().filter(|d| ["delivered", "skipped", "dead"].contains(&d["status"].as_str().unwrap())).count();
        if all.len() == expected && finished == expected {
            return all;
        }
        assert!(Instant::now() < deadline, "{finished}/{} of {expected} deliveries final", all.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each record's effect reached the receiver exactly once.
fn assert_each_effect_once(receiver: &Receiver, ids: &[String]) {
    let mut effects: BTreeMap<String, usize> = BTreeMap::new();
    for body in receiver.applied() {
        *effects.entry(body["change"]["record_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(effects, want);
}

async fn sigkill_mid_run_loses_and_duplicates_nothing(database_env: &[(&str, &str)]) {
    let receiver = Receiver::start(Some("shh"), Duration::from_millis(25)).await;
    let dir = temp_dir();
    write_config(&dir, &receiver);
    let mut first = Hub::start(&dir, &["--config", "syncflow.toml"], database_env);
    let ids = create_customers(&first, 150, "k").await;
    // Kill while deliveries are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.received().len() < 20 {
        assert!(Instant::now() < deadline, "no deliveries started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("-KILL");
    first.wait_exit();
    let delivered_before = receiver.applied().len();
    assert!(delivered_before < ids.len(), "killed too late to prove anything");

    let second = Hub::start(&dir, &["--config", "syncflow.toml"], database_env);
    let all = wait_all_final(&second, ids.len()).await;
    assert!(all.iter().all(|d| d["status"] == "delivered"), "{all:#?}");
    assert_each_effect_once(&receiver, &ids);
    assert!(receiver.received().len() >= ids.len());
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_on_sqlite() {
    sigkill_mid_run_loses_and_duplicates_nothing(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_on_postgres() {
    let Some(url) = syncflow_store::testing::postgres_url().await else { return };
    sigkill_mid_run_loses_and_duplicates_nothing(&[("SYNCFLOW_DATABASE_URL", &url)]).await;
}

/// Two hubs on one PostgreSQL database share the queue: every change is delivered,
/// no record ever has two deliveries in flight at once, and each record's versions
/// arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_work_in_order() {
    let Some(url) = syncflow_store::testing::postgres_url().await else { return };
    let env = [("SYNCFLOW_DATABASE_URL", url.as_str())];
    let receiver = Receiver::start(Some("shh"), Duration::from_millis(15)).await;
    let dir = temp_dir();
    write_config(&dir, &receiver);
    let a = Hub::start(&dir, &["--config", "syncflow.toml"], &env);
    let b = Hub::start(&dir, &["--config", "syncflow.toml"], &env);
    let ids = create_customers(&a, 40, "n").await;
    // Updates through both nodes, interleaved, while deliveries run.
    let client = reqwest::Client::new();
    for round in 1..=3 {
        for (i, id) in ids.iter().enumerate() {
            let hub = if i % 2 == 0 { &a } else { &b };
            let r = client
                .patch(hub.url(&format!("/v1/customers/{id}")))
                .json(&json!({"name": format!("n{i} r{round}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let all = wait_all_final(&b, ids.len() * 4).await;
    assert!(all.iter().all(|d| d["status"] == "delivered" || d["status"] == "skipped"));
    assert_eq!(receiver.max_concurrent_per_record(), 1, "a record had two deliveries in flight");
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for body in receiver.applied() {
        versions
            .entry(body["change"]["record_id"].as_str().unwrap().into())
            .or_default()
            .push(body["change"]["version"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), ids.len());
    for (id, v) in &versions {
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{id}: {v:?}");
        assert_eq!(v.last(), Some(&4), "{id} ends at its latest version");
    }
    // Both processes performed deliveries (their own counters say so).
    for hub in [&a, &b] {
        let text = client.get(hub.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line =
            text.lines().find(|l| l.starts_with(r#"syncflow_deliveries_total{system="crm",outcome="delivered"}"#));
        let n: f64 = line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        assert!(n > 0.0, "node {} delivered nothing", hub.addr);
    }
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}
