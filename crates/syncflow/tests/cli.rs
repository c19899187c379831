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
/// in the hub shows up at the sandbox warehouse.
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
    while hub.is_none() || warehouse.is_none() {
        let line = lines.next().expect("demo printed its URLs").unwrap();
        let url = line.split_whitespace().last().unwrap_or("").to_string();
        if line.trim_start().starts_with("hub API") {
            hub = Some(url);
        } else if line.trim_start().starts_with("warehouse") {
            warehouse = Some(url);
        }
    }
    let (hub, warehouse) = (hub.unwrap(), warehouse.unwrap());
    let client = reqwest::Client::new();
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
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}
