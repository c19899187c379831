//! Start-up errors never show a secret: values planted in the environment (through
//! `${VAR}` or the binary's own variables) and values under secret keys are
//! grepped for in the stderr of every failing start. Also: a lease shorter than a
//! push is refused at start, naming both settings.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, BIN};

/// Runs `syncflow serve` with `config` and `env`, expects it to fail at start, and
/// returns its stderr.
fn failing_start(config: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let dir = temp_dir();
    std::fs::write(dir.join("syncflow.toml"), config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(&dir).args(["serve", "--config", "syncflow.toml"]);
    // A free port, unless the case is about the listen address.
    if !config.contains("listen") && args.is_empty() {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .env_remove("SYNCFLOW_API_TOKENS")
        .env_remove("SYNCFLOW_DATABASE_URL")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("syncflow started instead of failing with config:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!status.success(), "expected a failed start:\n{config}\n{stderr}");
    let _ = std::fs::remove_dir_all(dir);
    stderr
}

/// A config file, extra environment variables and extra arguments.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, Vec<&'a str>);

#[test]
fn start_up_errors_never_show_planted_secrets() {
    const TOKEN: &str = "tok-planted-5b8e1f";
    const URL: &str = "ht!tp://user:pw-planted-91c2@crm.internal.example/hook-planted-path";
    const STRIPE: &str = "sk_test_planted_4d7a09";
    const DB: &str = "postgres://syncflow:db-planted-0e3f@127.0.0.1:99999/db";
    const DB2: &str = "mysql://syncflow:db-planted-0e3f@127.0.0.1:1/db";
    const LITERAL: &str = "literal-planted-77aa";
    let env = [("TOK", TOKEN), ("CRM_URL", URL), ("STRIPE_KEY", STRIPE), ("DB_URL", DB)];
    let cases: Vec<Case> = vec![
        // A string where a list is expected.
        ("[server]\napi_tokens = \"${TOK}\"\n".into(), vec![], vec![]),
        // The same with the token written in the file.
        (format!("[server]\napi_tokens = \"{LITERAL}\"\n"), vec![], vec![]),
        // A syntax error on a line holding a secret.
        (format!("[server]\napi_tokens = [\"{LITERAL}\"\nlisten = 1\n"), vec![], vec![]),
        // An invalid URL built from the environment.
        ("[[systems]]\nname = \"crm\"\nkind = \"http\"\nurl = \"${CRM_URL}\"\n".into(), vec![], vec![]),
        // A secret where a number is expected, inside a connector's block.
        (
            "[[systems]]\nname = \"s\"\nkind = \"stripe\"\nsecret_key = \"${STRIPE_KEY}\"\napi_rate_limit = \"${STRIPE_KEY}\"\n"
                .into(),
            vec![],
            vec![],
        ),
        ("[[systems]]\nname = \"s\"\nkind = \"stripe\"\nsecret_key = [\"${STRIPE_KEY}\"]\n".into(), vec![], vec![]),
        // An unknown key next to a secret; a bad log format from the environment.
        ("[server]\napi_tokens = [\"${TOK}\"]\nlog_format = \"${TOK}\"\n".into(), vec![], vec![]),
        ("[server]\nlisten = \"${TOK}\"\n".into(), vec![], vec![]),
        ("[[clients]]\nid = \"${CRM_URL}\"\ntoken = \"${TOK}\"\n".into(), vec![], vec![]),
        ("[[clients]]\nid = \"a\"\ntoken = \"${TOK}\"\nentities = \"${TOK}\"\n".into(), vec![], vec![]),
        // A database that cannot be reached, with its password in the URL.
        ("[server]\ndatabase_url = \"${DB_URL}\"\n".into(), vec![], vec![]),
        ("[server]\n".into(), vec![("SYNCFLOW_DATABASE_URL", DB2)], vec![]),
        // The binary's own variables, wrong.
        ("[server]\n".into(), vec![("SYNCFLOW_API_TOKENS", TOKEN)], vec!["--listen", "0.0.0.0:0", "--listen", "x"]),
        ("[server]\nlisten = \"0.0.0.0:0\"\n".into(), vec![("SYNCFLOW_LOG_FORMAT", TOKEN)], vec![]),
    ];
    let planted = [TOKEN, "pw-planted-91c2", "hook-planted-path", STRIPE, "db-planted-0e3f", LITERAL];
    for (config, extra, args) in cases {
        let mut all: Vec<(&str, &str)> = env.to_vec();
        all.extend(extra);
        let stderr = failing_start(&config, &all, &args);
        assert!(!stderr.trim().is_empty(), "no error shown for:\n{config}");
        for secret in planted {
            assert!(!stderr.contains(secret), "{secret} shown for config:\n{config}\nstderr:\n{stderr}");
        }
    }
}

#[test]
fn a_lease_shorter_than_a_push_is_refused_at_start() {
    let config = "[[systems]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/x\"\nlease = \"2s\"\n";
    let stderr = failing_start(config, &[], &[]);
    assert!(stderr.contains("`lease` (2s)") && stderr.contains("`timeout` (10s"), "{stderr}");
}
