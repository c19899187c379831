//! The real binary as a user runs it: a separate process, real HTTP, real signals.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{temp_dir, Hub, BIN};
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn serve_defaults_to_sqlite_file_in_working_dir() {
    let dir = temp_dir();
    let hub = Hub::start(&dir, &[], &[]);
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &hub.url("/v1/customers"), json!({"name": "Ada"})).await;
    assert_eq!(status, 201, "{body}");
    let ready: Value = client.get(hub.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["database"], "sqlite");
    assert!(dir.join("syncflow.db").exists());
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}

/// A request that is mid-upload when SIGTERM arrives still completes and is
/// committed; then the process exits 0 and the database is closed cleanly.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let dir = temp_dir();
    let mut hub = Hub::start(&dir, &[], &[]);
    let body = r#"{"name":"In flight"}"#;
    let mut conn = TcpStream::connect(&hub.addr).unwrap();
    // `Expect: 100-continue` makes the server say when the handler starts reading the
    // body: from then on the request is certainly in flight, not an idle connection.
    write!(
        conn,
        "POST /v1/customers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len(),
    )
    .unwrap();
    conn.flush().unwrap();
    let mut interim = [0u8; 25];
    conn.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(&body.as_bytes()[..5]).unwrap();
    hub.signal("-TERM");
    hub.wait_log(|l| l["message"] == "SIGTERM received, shutting down");
    conn.write_all(&body.as_bytes()[5..]).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(hub.wait_exit().success());
    // New connections are refused once it has stopped.
    assert!(TcpStream::connect(&hub.addr).is_err());

    let store = syncflow_store::Store::open(&format!("sqlite:{}", dir.join("syncflow.db").display())).await.unwrap();
    let changes = store.changes_after(0, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].snapshot["name"], "In flight");
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refuses_public_address_without_tokens() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", "sqlite::memory:"])
        .env_remove("SYNCFLOW_API_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0 without API tokens"), "{err}");
}

#[tokio::test]
async fn init_writes_a_config_that_serve_loads() {
    let dir = temp_dir();
    let out = Command::new(BIN).current_dir(&dir).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = Command::new(BIN).current_dir(&dir).arg("init").output().unwrap();
    assert!(!again.status.success(), "init must not overwrite");

    // Point the starter at another database file and require a token from the env.
    let text = std::fs::read_to_string(dir.join("syncflow.toml")).unwrap();
    let text = text
        .replace("database_url = \"sqlite:syncflow.db\"", "database_url = \"sqlite:from-config.db\"")
        .replace("# api_tokens = [\"${SYNCFLOW_TOKEN}\"]", "api_tokens = [\"${SYNCFLOW_TOKEN}\"]");
    std::fs::write(dir.join("syncflow.toml"), text).unwrap();
    let hub = Hub::start(&dir, &["--config", "syncflow.toml"], &[("SYNCFLOW_TOKEN", "t0ken")]);
    let client = reqwest::Client::new();
    assert_eq!(client.get(hub.url("/v1/customers")).send().await.unwrap().status(), 401);
    let r = client.get(hub.url("/v1/customers")).bearer_auth("t0ken").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.join("from-config.db").exists());
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serve_on_postgres_via_database_url() {
    let Some(url) = syncflow_store::testing::postgres_url().await else {
        return;
    };
    let dir = temp_dir();
    let hub = Hub::start(&dir, &[], &[("SYNCFLOW_DATABASE_URL", &url)]);
    let client = reqwest::Client::new();
    let ready: Value = client.get(hub.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["database"], "postgres");
    let (status, _) = post(&client, &hub.url("/v1/customers"), json!({"name": "Pg"})).await;
    assert_eq!(status, 201);
    let changes: Value = client.get(hub.url("/v1/changes")).send().await.unwrap().json().await.unwrap();
    assert_eq!(changes["data"][0]["snapshot"]["name"], "Pg");
    assert!(!dir.join("syncflow.db").exists());
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}

/// The README's demo command: the hub with sandbox systems, where a customer created
/// in the hub shows up at the sandbox warehouse, and whose banner names the seeded
/// customers by their real hub and Stripe ids (pasteable curl lines, no placeholders).
#[tokio::test]
async fn demo_runs_and_syncs_a_new_customer() {
    use std::io::BufRead;
    let dir = temp_dir();
    let mut child = Command::new(BIN)
        .current_dir(&dir)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut hub, mut warehouse) = (None, None);
    let mut banner = String::new();
    loop {
        let line = lines.next().expect("demo printed its banner").unwrap();
        banner.push_str(&line);
        banner.push('\n');
        let url = line.split_whitespace().last().unwrap_or("").to_string();
        if line.trim_start().starts_with("hub API") {
            hub = Some(url);
        } else if line.trim_start().starts_with("warehouse") {
            warehouse = Some(url);
        } else if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let (hub, warehouse) = (hub.unwrap(), warehouse.unwrap());
    let client = reqwest::Client::new();

    // The banner names each seeded customer with its hub and Stripe ids, and the
    // Stripe edit line uses Ada's real cus_ id.
    let list: Value = client.get(format!("{hub}/v1/customers")).send().await.unwrap().json().await.unwrap();
    let rows = list["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{list}");
    for row in rows {
        let (id, cus) = (row["id"].as_str().unwrap(), row["links"]["stripe"]["id"].as_str().unwrap());
        let line = banner.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} not in banner:\n{banner}"));
        assert!(line.contains(cus), "{line}");
    }
    let ada = rows.iter().find(|r| r["name"] == "Ada Lovelace").unwrap();
    let edit = banner.lines().find(|l| l.contains("name='Ada King'")).expect("a Stripe edit line");
    assert!(edit.contains(&format!("/v1/customers/{}", ada["links"]["stripe"]["id"].as_str().unwrap())), "{edit}");
    assert!(!banner.contains("cus_…"), "no placeholder ids:\n{banner}");
    assert!(banner.contains(&format!("{hub}/v1/customers/{}/history", ada["id"].as_str().unwrap())));
    assert!(banner.find("1. ").unwrap() < banner.find("2. ").unwrap(), "reads top to bottom");

    let (status, created) = post(&client, &format!("{hub}/v1/customers"), json!({"name": "Katherine Johnson"})).await;
    assert_eq!(status, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen: Value = client.get(&warehouse).send().await.unwrap().json().await.unwrap();
        if seen["recent"].as_array().unwrap().iter().any(|b| b["data"]["id"] == created["id"]) {
            assert_eq!(seen["applied"], 4, "three seeded customers and ours");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new customer never reached the warehouse: {seen}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Deliveries are newest first: ours comes before the seeded ones.
    let deliveries: Value =
        client.get(format!("{hub}/v1/deliveries?limit=10")).send().await.unwrap().json().await.unwrap();
    let first = deliveries["data"][0]["change_seq"].as_i64().unwrap();
    assert!(deliveries["data"].as_array().unwrap().iter().all(|d| d["change_seq"].as_i64().unwrap() <= first));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

fn run_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("SYNCFLOW_DATABASE_URL")
        .env_remove("SYNCFLOW_CONFIG")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Commands that read an existing hub never create a database; an unknown system
/// is an error naming the known ones; backfill without a config says so.
#[tokio::test]
async fn reading_commands_refuse_to_create_a_hub_and_check_names() {
    let dir = temp_dir();
    for args in [
        &["deliveries"][..],
        &["replay", "--system", "stripe"],
        &["history", "cust_x"],
        &["prune", "--older-than", "7d"],
    ] {
        let (ok, _, err) = run_in(&dir, args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains("no hub database at syncflow.db") && err.contains("--database-url"), "{args:?}: {err}");
        assert!(!dir.join("syncflow.db").exists(), "{args:?} created a database");
    }
    let (ok, _, err) = run_in(&dir, &["backfill", "--system", "stripe"]);
    assert!(!ok && err.contains("no config file loaded (--config)"), "{err}");
    assert!(!dir.join("syncflow.db").exists());

    // A real hub database with one system in its transaction table.
    let url = format!("sqlite:{}", dir.join("hub.db").display());
    let store = syncflow_store::Store::open(&url).await.unwrap();
    let c = store.create(&syncflow_core::CUSTOMER, json!({"name": "Ada"}).as_object().unwrap(), "api").await.unwrap();
    let routes = [syncflow_store::Route { system: "crm".into(), entities: vec!["customer".into()] }];
    store.dispatch(&routes, 10).await.unwrap();
    store.close().await;

    let (ok, _, err) = run_in(&dir, &["replay", "--system", "stripe", "--database-url", &url]);
    assert!(!ok && err.contains("unknown system `stripe`; known systems: crm"), "{err}");
    let (ok, out, _) = run_in(&dir, &["replay", "--system", "crm", "--database-url", &url]);
    assert!(ok && out.contains("requeued 0 dead deliveries of crm"), "{out}");
    let (ok, _, err) = run_in(&dir, &["deliveries", "--system", "nope", "--database-url", &url]);
    assert!(!ok && err.contains("known systems: crm"), "{err}");
    let (ok, out, err) = run_in(&dir, &["deliveries", "--database-url", &url]);
    assert!(ok && out.contains(&c.id) && out.contains("pending"), "{out}{err}");
    let (ok, out, err) = run_in(&dir, &["history", &c.id, "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("upsert v1") && out.contains("crm") && out.contains("pending"), "{out}");
    let (ok, _, err) = run_in(&dir, &["history", "cust_unknown", "--database-url", &url]);
    assert!(!ok && err.contains("no customer with id `cust_unknown`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `syncflow prune --older-than AGE` runs one retention pass on an existing hub
/// and prints what each table lost.
#[tokio::test]
async fn prune_runs_one_pass_and_prints_counts() {
    let dir = temp_dir();
    let url = format!("sqlite:{}", dir.join("hub.db").display());
    let store = syncflow_store::Store::open(&url).await.unwrap();
    let c = store.create(&syncflow_core::CUSTOMER, json!({"name": "v1"}).as_object().unwrap(), "api").await.unwrap();
    for name in ["v2", "v3"] {
        store
            .update(&syncflow_core::CUSTOMER, &c.id, json!({"name": name}).as_object().unwrap(), None, "api")
            .await
            .unwrap();
    }
    store.dispatch(&[], 10).await.unwrap();
    store.close().await;

    let (ok, _, err) = run_in(&dir, &["prune", "--older-than", "off", "--database-url", &url]);
    assert!(!ok && err.contains("--older-than"), "{err}");
    let (ok, out, _) = run_in(&dir, &["prune", "--older-than", "7d", "--database-url", &url]);
    assert!(ok && out.contains("older than 7d") && out.contains("0 rows"), "nothing is a week old: {out}");
    // The process starts well over a millisecond after those writes.
    let (ok, out, err) = run_in(&dir, &["prune", "--older-than", "1ms", "--database-url", &url]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.trim_start().starts_with("changes")).unwrap_or_default().to_string();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["changes", "2"], "{out}");
    assert!(out.contains("horizon: seq 2"), "{out}");
    let (ok, out, _) = run_in(&dir, &["history", &c.id, "--database-url", &url]);
    assert!(ok && out.contains("upsert v3") && !out.contains("upsert v1"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
