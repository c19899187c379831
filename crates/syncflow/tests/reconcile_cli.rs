//! `syncflow reconcile` as a user runs it, against the in-repo Stripe sandbox: it
//! reports drift with a failing exit status, heals it with `--repair`, and then
//! reports a clean system.

mod common;

use std::process::Command;

use common::{temp_dir, BIN};
use syncflow_sandbox::{StripeOptions, StripeSandbox};

fn syncflow(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["--config", "syncflow.toml"])
        .args(args)
        .args(["--database-url", "sqlite:hub.db"])
        .env("STRIPE_SECRET_KEY", "sk_test_cli")
        .env_remove("SYNCFLOW_DATABASE_URL")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

// Two workers: the sandbox serves while the test waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_drift_and_repairs_it() {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/v1/customers", sandbox.url()))
        .bearer_auth("sk_test_cli")
        .form(&[("name", "Rita Recon"), ("email", "rita@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dir = temp_dir();
    std::fs::write(
        dir.join("syncflow.toml"),
        format!(
            "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"${{STRIPE_SECRET_KEY}}\"\n\
             reconcile_grace = \"0s\"\n",
            sandbox.url()
        ),
    )
    .unwrap();
    let store = syncflow_store::Store::open(&format!("sqlite:{}", dir.join("hub.db").display())).await.unwrap();
    store.close().await;
    let (ok, _, stderr) = syncflow(&dir, &["backfill", "--system", "stripe", "--direction", "import"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = syncflow(&dir, &["reconcile", "--system", "stripe"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 checked") && stdout.contains("field_drift 0"), "{stdout}");

    // Edited in Stripe behind the hub's back.
    let id = created["id"].as_str().unwrap();
    http.post(format!("{}/v1/customers/{id}", sandbox.url()))
        .bearer_auth("sk_test_cli")
        .form(&[("name", "Rita Reconciled")])
        .send()
        .await
        .unwrap();
    let (ok, stdout, stderr) = syncflow(&dir, &["reconcile", "--system", "stripe"]);
    assert!(!ok, "drift left is a failing status: {stdout}");
    assert!(stdout.contains("field_drift 1") && stdout.contains("\"fields\":[\"name\"]"), "{stdout}");
    assert!(stderr.contains("1 record(s) drift (rerun with --repair to heal)"), "{stderr}");

    let (ok, stdout, stderr) = syncflow(&dir, &["reconcile", "--system", "stripe", "--repair"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("repaired 1, repair failed 0"), "{stdout}");
    let (ok, stdout, _) = syncflow(&dir, &["reconcile", "--system", "stripe"]);
    assert!(ok && stdout.contains("field_drift 0"), "{stdout}");
    let store = syncflow_store::Store::open(&format!("sqlite:{}", dir.join("hub.db").display())).await.unwrap();
    let runs = store.reconcile_runs(Some("stripe"), None, 10).await.unwrap();
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| r.trigger == "cli" && r.status == "completed"));
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
