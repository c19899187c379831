//! `syncflow backfill` as a user runs it, against the in-repo Stripe sandbox.

mod common;

use std::process::Command;

use common::{temp_dir, BIN};
use serde_json::{json, Value};
use syncflow_sandbox::{StripeOptions, StripeSandbox};

fn backfill(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["--config", "syncflow.toml", "backfill", "--database-url", "sqlite:hub.db"])
        .args(args)
        .env("STRIPE_SECRET_KEY", "sk_test_cli")
        .env_remove("SYNCFLOW_DATABASE_URL")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

// Two workers: the sandbox serves while the test waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_imports_exports_and_resumes() {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let http = reqwest::Client::new();
    for name in ["Stripe One", "Stripe Two"] {
        let r = http.post(format!("{}/v1/customers", sandbox.url())).bearer_auth("sk_test_cli").form(&[("name", name)]);
        assert!(r.send().await.unwrap().status().is_success());
    }
    let dir = temp_dir();
    std::fs::write(
        dir.join("syncflow.toml"),
        format!(
            "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"${{STRIPE_SECRET_KEY}}\"\n",
            sandbox.url()
        ),
    )
    .unwrap();
    let store = syncflow_store::Store::open(&format!("sqlite:{}", dir.join("hub.db").display())).await.unwrap();
    let body = json!({"name": "Hub Only"}).as_object().unwrap().clone();
    store.create(&syncflow_core::CUSTOMER, &body, "api").await.unwrap();
    store.close().await;

    let (ok, stdout, stderr) = backfill(&dir, &["--system", "stripe"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("import: 2 seen, 2 created, 0 linked"), "{stdout}");
    assert!(
        stdout.contains("export: 3 seen, 1 created, 0 linked, 2 already linked, 0 left to live delivery, 0 failed"),
        "{stdout}"
    );
    assert_eq!(sandbox.stats().customers, 3);

    let (ok, stdout, _) = backfill(&dir, &["--system", "stripe", "--restart"]);
    assert!(ok);
    assert!(stdout.contains("import: 3 seen, 0 created, 0 linked, 3 already linked"), "{stdout}");
    assert!(stdout.contains("export: 3 seen, 0 created"), "{stdout}");
    assert_eq!(sandbox.stats().customers, 3);

    let (ok, _, stderr) = backfill(&dir, &["--system", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("unknown system `nope`; known systems: stripe"), "{stderr}");
    let listed: Value = http
        .get(format!("{}/v1/customers?limit=10", sandbox.url()))
        .bearer_auth("sk_test_cli")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "Hub Only" && c["metadata"]["syncflow_id"].is_string()));
    let _ = std::fs::remove_dir_all(dir);
}
