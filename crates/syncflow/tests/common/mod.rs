//! Shared by the binary's integration tests: run `syncflow serve` as a child
//! process and read its JSON log.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_syncflow");

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("syncflow-cli-{}", syncflow_core::id::new_id("d")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `syncflow serve`, its address read from its JSON log.
pub struct Hub {
    pub child: Child,
    pub addr: String,
    logs: mpsc::Receiver<Value>,
}

impl Hub {
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Hub {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("SYNCFLOW_DATABASE_URL")
            .env_remove("SYNCFLOW_API_TOKENS")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn syncflow");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut hub = Hub { child, addr: String::new(), logs: rx };
        let line = hub.wait_log(|l| l["message"] == "syncflow serving");
        hub.addr = line["listen"].as_str().unwrap().to_string();
        hub
    }

    /// Waits (10 s at most) for a log line matching `pred`.
    pub fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("log line not seen: {e}"),
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "syncflow did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
