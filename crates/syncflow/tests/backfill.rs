//! `syncflow backfill` as a user runs it, against the in-repo Stripe sandbox.

mod common;

use std::process::Command;

use common::{temp_dir, Hub, BIN};
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

    // No hub running: the export is enqueued, and the command says who delivers it.
    let (ok, stdout, stderr) = backfill(&dir, &["--system", "stripe"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("import: 2 seen, 2 created, 0 linked"), "{stdout}");
    assert!(stdout.contains("export: 3 seen, 1 enqueued, 2 already linked, 0 left to live delivery"), "{stdout}");
    assert!(stdout.contains("no hub node is running; `syncflow serve` delivers the 1 enqueued export(s)"), "{stdout}");
    assert_eq!(sandbox.stats().customers, 2, "the CLI itself pushes nothing");

    // The hub's engine delivers it (bulk lane) and the delivery writes the link.
    let hub = Hub::start(
        &dir,
        &["--config", "syncflow.toml", "--database-url", "sqlite:hub.db"],
        &[("STRIPE_SECRET_KEY", "sk_test_cli")],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sandbox.stats().customers < 3 {
        assert!(std::time::Instant::now() < deadline, "the hub did not deliver the enqueued export");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // With a hub running the command waits for its deliveries and reports them.
    let store = syncflow_store::Store::open(&format!("sqlite:{}", dir.join("hub.db").display())).await.unwrap();
    // Written as the hub's own (origin `stripe`): not routed to Stripe by live sync.
    let body = json!({"name": "Hub Later"}).as_object().unwrap().clone();
    store.create(&syncflow_core::CUSTOMER, &body, "stripe").await.unwrap();
    store.close().await;
    let (ok, stdout, stderr) = backfill(&dir, &["--system", "stripe", "--direction", "export"]);
    assert!(ok, "{stderr}");
    // Resumed from where the last run stopped: only the new record is seen.
    assert!(stdout.contains("export: 1 seen, 1 enqueued, 0 already linked"), "{stdout}");
    assert!(stdout.contains("export: 1 delivered, 0 dead"), "{stdout}");
    assert_eq!(sandbox.stats().customers, 4);

    let (ok, stdout, _) = backfill(&dir, &["--system", "stripe", "--restart"]);
    assert!(ok);
    assert!(stdout.contains("import: 4 seen, 0 created, 0 linked, 4 already linked"), "{stdout}");
    assert!(stdout.contains("export: 4 seen, 0 enqueued"), "{stdout}");
    assert_eq!(sandbox.stats().customers, 4);
    drop(hub);

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
