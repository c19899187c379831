//! `syncflow sandbox <system>` as a process: its first line of output is the address,
//! and a plain HTTP client can use the stand-in there.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::BIN;

/// Starts `syncflow sandbox <args>` on a free port and returns the child and the
/// address it printed first.
fn sandbox(args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .arg("sandbox")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn syncflow sandbox");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    (child, first.trim().to_string())
}

#[tokio::test]
async fn the_sandboxes_run_as_processes() {
    let http = reqwest::Client::new();
    let (mut stripe, url) = sandbox(&["stripe"]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let cus: serde_json::Value = http
        .post(format!("{url}/v1/customers"))
        .bearer_auth("sk_test_cli")
        .form(&[("name", "Cli")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cus["id"].as_str().unwrap().starts_with("cus_"), "{cus}");
    stripe.kill().unwrap();
    stripe.wait().unwrap();

    let (mut sf, url) = sandbox(&["salesforce", "--client-id", "cli", "--client-secret", "cli-secret"]);
    let token: serde_json::Value = http
        .post(format!("{url}/services/oauth2/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "cli"), ("client_secret", "cli-secret")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["instance_url"], url.as_str(), "{token}");
    sf.kill().unwrap();
    sf.wait().unwrap();

    let (mut receiver, url) = sandbox(&["receiver"]);
    let status = http.post(format!("{url}/hook")).json(&serde_json::json!({"x": 1})).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    receiver.kill().unwrap();
    receiver.wait().unwrap();
}
