//! The operator dashboard in a real browser: `syncflow serve` as a child process,
//! sandbox receivers in the test process, headless Chromium driven over WebDriver
//! (chromedriver on a free loopback port).
//!
//! Without Chromium these tests print SKIPPED and pass, unless
//! `SYNCFLOW_REQUIRE_BROWSER=1` (set by scripts/test), which makes them fail.
//! On failure each test saves a screenshot and prints its path.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Hub};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use syncflow_sandbox::receiver::Reply;
use syncflow_sandbox::Receiver;

type Result<T = (), E = String> = std::result::Result<T, E>;

const TOKEN: &str = "dash-test-token";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n))).find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` (after saying so) when the test must skip.
fn browser_programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find_program(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var("SYNCFLOW_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "SYNCFLOW_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed \
                 (apt-get install chromium chromium-driver)"
            );
            syncflow_store::testing::skipped(
                &format!("the browser scenario `{test}`"),
                "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One browser at a time: Chromium is heavy for a 2-core machine that also runs the
/// rest of the suite.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium session; the driver process and profile go with it.
struct Browser {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    client: Client,
    driver: Child,
    profile: PathBuf,
    test: String,
}

impl Browser {
    async fn start(test: &str) -> Option<Browser> {
        let (chromium, chromedriver) = browser_programs(test)?;
        let turn = ONE_BROWSER.lock().await;
        let port = free_port();
        // Its own process group, so that Chromium (its child) can be stopped with it
        // even when a test panics before closing the session.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = temp_dir();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start a session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Some(Browser { _turn: turn, client, driver, profile, test: test.to_string() })
    }

    /// Runs a scenario, then ends the browser session (chromedriver closes Chromium;
    /// killing the driver alone would leave it running). On failure saves a
    /// screenshot first and panics with its path.
    async fn run<F: std::future::Future<Output = Result>>(&self, scenario: F) {
        let outcome = scenario.await;
        let mut failure = None;
        if let Err(e) = outcome {
            let path = std::env::temp_dir().join(format!("syncflow-dashboard-{}.png", self.test));
            let saved = match self.client.screenshot().await {
                Ok(png) => std::fs::write(&path, png).map(|_| format!("screenshot: {}", path.display())),
                Err(se) => Ok(format!("no screenshot: {se}")),
            }
            .unwrap_or_else(|we| format!("no screenshot: {we}"));
            let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            failure = Some(format!("{}: {e}\n  at {url}\n  {saved}", self.test));
        }
        let _ = self.client.clone().close().await;
        if let Some(message) = failure {
            panic!("{message}");
        }
    }

    async fn goto(&self, url: &str) -> Result {
        self.client.goto(url).await.map_err(|e| format!("goto {url}: {e}"))
    }

    async fn text(&self, css: &str) -> Result<String> {
        let el = self.client.find(Locator::Css(css)).await.map_err(|e| format!("no `{css}`: {e}"))?;
        el.text().await.map_err(|e| format!("text of `{css}`: {e}"))
    }

    async fn click(&self, css: &str) -> Result {
        let el = self.client.find(Locator::Css(css)).await.map_err(|e| format!("no `{css}`: {e}"))?;
        el.click().await.map_err(|e| format!("click `{css}`: {e}"))
    }

    /// Polls (30 s at most) until the text of `css` satisfies `pred`.
    async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Ok(t) = self.text(css).await {
                if pred(&t) {
                    return Ok(t);
                }
                last = t;
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what} in `{css}`; last text: {last:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, script: &str) -> Result<Value> {
        self.client.execute(script, vec![]).await.map_err(|e| format!("script failed: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A hub with two plain-HTTP systems, `crm` and `warehouse`, each with its receiver.
fn start_hub(dir: &Path, crm: &Receiver, warehouse: &Receiver, envs: &[(&str, &str)]) -> Hub {
    let mut text = String::new();
    for (name, r) in [("crm", crm), ("warehouse", warehouse)] {
        text.push_str(&format!(
            "[[systems]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\nmax_attempts = 3\n\
             backoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n",
            r.url(&format!("/{name}"))
        ));
    }
    std::fs::write(dir.join("syncflow.toml"), text).unwrap();
    Hub::start(dir, &["--config", "syncflow.toml"], envs)
}

async fn create_customer(hub: &Hub, name: &str, token: Option<&str>) -> String {
    create(hub, json!({"name": name}), token).await
}

async fn create(hub: &Hub, body: Value, token: Option<&str>) -> String {
    let mut req = reqwest::Client::new().post(hub.url("/v1/customers")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// Polls the API (20 s at most) until `record`'s delivery to `system` has `status`.
async fn wait_delivery(hub: &Hub, system: &str, record: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page: Value = reqwest::get(hub.url(&format!("/v1/deliveries?system={system}&record_id={record}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(d) = page["data"].as_array().and_then(|a| a.iter().find(|d| d["status"] == status)) {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "no {status} delivery of {record} to {system}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_shows_a_new_customer_without_reload_and_says_when_stale() {
    let Some(browser) = Browser::start("overview_live").await else { return };
    let (crm, warehouse) = (Receiver::start(None, Duration::ZERO).await, Receiver::start(None, Duration::ZERO).await);
    let dir = temp_dir();
    let mut hub = start_hub(&dir, &crm, &warehouse, &[]);
    browser
        .run(async {
            browser.goto(&hub.url("/")).await?;
            browser.wait_text("#systems", "both systems", |t| t.contains("crm") && t.contains("warehouse")).await?;
            // A marker that a reload would wipe out.
            browser.js("window.__stillHere = true;").await?;
            let id = create_customer(&hub, "Ada Live", None).await;
            browser.wait_text("#changes", "the new customer", |t| t.contains(&id)).await?;
            browser.wait_text("[data-entity=customers]", "the customer count", |t| t.starts_with('1')).await?;
            browser.wait_text("tr[data-system=crm] .dead", "dead letters", |t| t.trim() == "0").await?;
            if browser.js("return window.__stillHere === true;").await? != json!(true) {
                return Err("the page was reloaded; it should update in place".into());
            }
            if browser.js("return document.getElementById('stale').hidden;").await? != json!(true) {
                return Err("the stale banner shows while the hub is up".into());
            }
            // The hub goes away: the page says since when its data is stale.
            hub.signal("-KILL");
            hub.wait_exit();
            let deadline = Instant::now() + Duration::from_secs(20);
            while browser.js("return document.getElementById('stale').hidden;").await? != json!(false) {
                if Instant::now() > deadline {
                    return Err("no stale banner after the hub stopped".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let banner = browser.text("#stale").await?;
            if !banner.contains("UTC") {
                return Err(format!("the stale banner does not say since when: {banner:?}"));
            }
            Ok(())
        })
        .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_is_replayed_from_the_page_once_the_receiver_is_fixed() {
    let Some(browser) = Browser::start("replay").await else { return };
    let (crm, warehouse) = (Receiver::start(None, Duration::ZERO).await, Receiver::start(None, Duration::ZERO).await);
    crm.set_fallback(Some(Reply::error(400, "email domain not allowed")));
    let dir = temp_dir();
    let hub = start_hub(&dir, &crm, &warehouse, &[]);
    browser
        .run(async {
            let first = create_customer(&hub, "Bo Dead", None).await;
            let second = create_customer(&hub, "Cy Dead", None).await;
            let dead = wait_delivery(&hub, "crm", &first, "dead").await;
            wait_delivery(&hub, "crm", &second, "dead").await;
            let id = dead["id"].as_i64().unwrap();

            browser.goto(&hub.url("/ui/deliveries?system=crm&status=dead")).await?;
            let row = format!("tr[data-delivery='{id}']");
            browser
                .wait_text(&row, "the dead delivery and its remarks", |t| t.contains("email domain not allowed"))
                .await?;
            browser
                .wait_text("#replay-all", "the replay-all count", |t| t.contains("Replay all 2 dead letters of crm"))
                .await?;

            // Fixed: the receiver accepts again. Replay one from its own page.
            crm.set_fallback(None);
            browser.goto(&hub.url(&format!("/ui/deliveries/{id}"))).await?;
            browser.wait_text("#attempts", "the failed attempt", |t| t.contains("400")).await?;
            browser.click("button[data-action=retry]").await?;
            browser.wait_text("main", "the delivery delivered", |t| t.contains("delivered")).await?;
            wait_delivery(&hub, "crm", &first, "delivered").await;

            // The rest in one go: the button now counts one.
            browser.goto(&hub.url("/ui/deliveries?system=crm&status=dead")).await?;
            browser.wait_text("#replay-all", "one left", |t| t.contains("Replay all 1 dead letters of crm")).await?;
            browser.click("#replay-all").await?;
            wait_delivery(&hub, "crm", &second, "delivered").await;
            browser.wait_text("main", "no dead letters left", |t| t.contains("No deliveries match.")).await?;
            if crm.applied().len() != 2 {
                return Err(format!("the receiver applied {} effects, not 2", crm.applied().len()));
            }
            Ok(())
        })
        .await;
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_dashboard_needs_a_login() {
    let Some(browser) = Browser::start("login").await else { return };
    let (crm, warehouse) = (Receiver::start(None, Duration::ZERO).await, Receiver::start(None, Duration::ZERO).await);
    let dir = temp_dir();
    let hub = start_hub(&dir, &crm, &warehouse, &[("SYNCFLOW_API_TOKENS", TOKEN)]);
    browser
        .run(async {
            browser.goto(&hub.url("/ui/deliveries")).await?;
            browser.wait_text("main", "the login form", |t| t.contains("API token")).await?;
            if !browser.client.current_url().await.map_err(|e| e.to_string())?.path().starts_with("/ui/login") {
                return Err("not sent to the login page".into());
            }
            // A wrong token is refused.
            browser
                .client
                .find(Locator::Css("#token"))
                .await
                .map_err(|e| e.to_string())?
                .send_keys("wrong")
                .await
                .map_err(|e| e.to_string())?;
            browser.click("button[type=submit]").await?;
            browser.wait_text("#login-error", "the refusal", |t| t.contains("not valid")).await?;
            browser.goto(&hub.url("/")).await?;
            browser.wait_text("main", "the login form again", |t| t.contains("API token")).await?;

            // The right one lets the operator in, back where they were going.
            browser.goto(&hub.url("/ui/login?next=%2Fui%2Fdeliveries")).await?;
            browser
                .client
                .find(Locator::Css("#token"))
                .await
                .map_err(|e| e.to_string())?
                .send_keys(TOKEN)
                .await
                .map_err(|e| e.to_string())?;
            browser.click("button[type=submit]").await?;
            browser.wait_text("h1", "the deliveries page", |t| t == "Deliveries").await?;
            let id = create_customer(&hub, "Di Token", Some(TOKEN)).await;
            browser.goto(&hub.url("/")).await?;
            browser.wait_text("#changes", "the new customer", |t| t.contains(&id)).await?;
            // The session cookie is out of the page's reach, and the token is nowhere in it.
            if browser.js("return document.cookie;").await? != json!("") {
                return Err("the session cookie is readable by scripts".into());
            }
            let source = browser.client.source().await.map_err(|e| e.to_string())?;
            if source.contains(TOKEN) {
                return Err("the token is rendered in the page".into());
            }
            // Logging out ends the session.
            browser.click("header button[type=submit]").await?;
            browser.goto(&hub.url("/")).await?;
            browser.wait_text("main", "the login form after logout", |t| t.contains("API token")).await?;
            Ok(())
        })
        .await;
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_path_is_followed_across_two_systems() {
    let Some(browser) = Browser::start("record_path").await else { return };
    let (crm, warehouse) = (Receiver::start(None, Duration::ZERO).await, Receiver::start(None, Duration::ZERO).await);
    // The CRM stumbles once, then accepts.
    crm.script([Reply::error(503, "crm is restarting")]);
    let dir = temp_dir();
    let hub = start_hub(&dir, &crm, &warehouse, &[]);
    browser
        .run(async {
            let id = create(&hub, json!({"name": "Path Finder", "email": "path@example.com"}), None).await;
            wait_delivery(&hub, "crm", &id, "delivered").await;
            wait_delivery(&hub, "warehouse", &id, "delivered").await;

            // From the overview's newest changes to the record's path.
            browser.goto(&hub.url("/")).await?;
            browser.wait_text("#changes", "the customer", |t| t.contains(&id)).await?;
            browser.click(&format!("#changes a[href$='{id}']")).await?;
            browser.wait_text("#record", "the record", |t| t.contains(&id) && t.contains("path@example.com")).await?;
            let crm_row = browser.text("#links tr[data-system=crm]").await?;
            let wh_row = browser.text("#links tr[data-system=warehouse]").await?;
            if !crm_row.contains(&format!("ext_{id}")) || !wh_row.contains(&format!("ext_{id}")) {
                return Err(format!("links missing: {crm_row:?} / {wh_row:?}"));
            }
            let crm_deliveries = browser.text(".system-deliveries[data-system=crm]").await?;
            if !(crm_deliveries.contains("delivered") && crm_deliveries.contains("retrying (503)")) {
                return Err(format!("crm's delivery should show the 503 and the success: {crm_deliveries:?}"));
            }
            let wh_deliveries = browser.text(".system-deliveries[data-system=warehouse]").await?;
            if !wh_deliveries.contains("delivered") {
                return Err(format!("warehouse delivery: {wh_deliveries:?}"));
            }
            let changes = browser.text("#record-changes").await?;
            if !changes.contains("api") {
                return Err(format!("the change's origin is missing: {changes:?}"));
            }

            // The same record by e-mail, and by an external id.
            for term in ["path@example.com".to_string(), format!("ext_{id}")] {
                browser.goto(&hub.url("/ui/records")).await?;
                let input = browser.client.find(Locator::Css("#record-search")).await.map_err(|e| e.to_string())?;
                input.send_keys(&term).await.map_err(|e| e.to_string())?;
                browser.click("form.filters button[type=submit]").await?;
                browser.wait_text("#record", &format!("the record found by {term}"), |t| t.contains(&id)).await?;
            }
            browser.goto(&hub.url("/ui/records?q=nobody%40example.com")).await?;
            browser.wait_text("#no-record", "no match", |t| t.contains("nobody@example.com")).await?;
            Ok(())
        })
        .await;
    drop(hub);
    let _ = std::fs::remove_dir_all(dir);
}
