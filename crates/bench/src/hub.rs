//! A `syncflow serve` child process with its own database and config, plus an HTTP
//! client pointed at it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Where a scenario runs: a fresh directory and database.
pub struct Env {
    pub hub_bin: PathBuf,
    pub dir: PathBuf,
    pub database_url: String,
}

impl Env {
    pub async fn new(hub_bin: &Path, backend: &str, postgres_url: Option<&str>) -> Result<Env> {
        let tag = format!("{}{}", std::process::id(), chrono::Utc::now().timestamp_micros());
        let dir = std::env::temp_dir().join(format!("syncflow-bench-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let database_url = match backend {
            "sqlite" => format!("sqlite:{}", dir.join("bench.db").display()),
            "postgres" => {
                let base = postgres_url.ok_or_else(|| anyhow!("no PostgreSQL URL"))?;
                let name = format!("syncflow_bench_{tag}");
                let admin = sqlx::PgPool::connect(base).await.context("connecting to PostgreSQL")?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
                admin.close().await;
                let (prefix, _) = base.rsplit_once('/').ok_or_else(|| anyhow!("database URL without a path"))?;
                format!("{prefix}/{name}")
            }
            other => bail!("unknown backend {other}"),
        };
        Ok(Env { hub_bin: hub_bin.to_path_buf(), dir, database_url })
    }

    /// Starts the hub with `config` (TOML) and waits until it serves.
    pub fn start(&self, config: &str) -> Result<Hub> {
        std::fs::write(self.dir.join("syncflow.toml"), config)?;
        let mut child = Command::new(&self.hub_bin)
            .current_dir(&self.dir)
            .args(["--log-format", "json", "--config", "syncflow.toml", "serve", "--listen", "127.0.0.1:0"])
            .env("SYNCFLOW_DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn,syncflow=info")
            .env_remove("SYNCFLOW_API_TOKENS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.hub_bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "syncflow serving" {
                        let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).context("hub did not start")?;
        Ok(Hub { child, base: format!("http://{addr}"), client: client() })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client")
}

pub struct Hub {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Hub {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now and its peak so far, in MiB, from /proc.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self.client.get(self.url(path)).send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// POSTs `body` as JSON; `Value::Null` sends no body (operator actions such as
    /// pause and resume take none).
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let req = self.client.post(self.url(path));
        let req = if body.is_null() { req } else { req.json(body) };
        let r = req.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // SIGTERM, then SIGKILL if it lingers: this is our own child process.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percentile (0–100) of a sorted slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
