//! The load generator and the baseline echo server, each run as a process of its
//! own (`syncflow-bench loadgen …`, `syncflow-bench echo …`), so the hub, the load
//! and the baseline never share a runtime, and a figure is never flattered (or
//! slowed) by load generation inside the measured process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::hub::percentile;

#[derive(Parser, Clone, Debug)]
pub struct LoadArgs {
    /// Where to send: the webhook endpoint, or the hub's base URL for `customers`.
    #[arg(long)]
    pub url: String,
    /// `webhook` (signed Stripe-style customer events) or `customers` (POST /v1/customers).
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub n: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct customers the webhook events are about: the first event of each is
    /// `customer.created`, the rest `customer.updated`.
    #[arg(long, default_value_t = 2_000)]
    pub objects: usize,
    /// The webhook signing secret.
    #[arg(long, default_value = "whsec_bench")]
    pub secret: String,
    /// A tag that makes ids unique across runs against one database.
    #[arg(long, default_value = "bench")]
    pub tag: String,
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub sent: usize,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

/// Event `i` of a webhook run: customer `i % objects`, at a time one second after
/// the previous event so that no two events of a customer share a second (each
/// applies in order, none needs a re-fetch).
pub fn webhook_event(i: usize, objects: usize, secret: &str, tag: &str) -> (Vec<u8>, String) {
    let base = chrono::Utc::now().timestamp() - 1_000_000;
    let created = base + i as i64;
    let c = i % objects.max(1);
    let kind = if i < objects { "customer.created" } else { "customer.updated" };
    let body = json!({
        "id": format!("evt_{tag}_{i}"), "object": "event", "type": kind, "created": created,
        "livemode": false, "api_version": "2024-06-20",
        "data": {"object": {"id": format!("cus_{tag}_{c}"), "object": "customer", "created": base,
            "name": format!("Hook {i}"), "email": format!("w{c}@{tag}.example"),
            "metadata": {"tier": format!("t{}", i % 7)}, "description": "a customer edited in Stripe, some text to make \
            the event about the size Stripe sends", "phone": null, "address": null, "balance": 0, "currency": "usd",
            "delinquent": false, "invoice_prefix": "ABC123", "preferred_locales": [], "tax_exempt": "none"}},
    });
    let bytes = serde_json::to_vec(&body).expect("json");
    // Signed now (Stripe's `t` is the sending time; the event's `created` is older).
    let sig = syncflow_connectors::signature::sign(secret, chrono::Utc::now().timestamp(), &bytes);
    (bytes, sig)
}

/// `syncflow-bench loadgen`: sends the load, prints one JSON line with the result.
pub async fn main(args: LoadArgs) -> Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;
    // Bodies are made before the clock starts: signing is the sender's cost, not the hub's.
    let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(match args.kind.as_str() {
        "webhook" => (0..args.n).map(|i| webhook_event(i, args.objects, &args.secret, &args.tag)).collect(),
        "customers" => (0..args.n)
            .map(|i| {
                let body = json!({"name": format!("Bench {i}"), "email": format!("b{i}@{}.example", args.tag)});
                (serde_json::to_vec(&body).expect("json"), String::new())
            })
            .collect(),
        other => bail!("unknown load kind {other}"),
    });
    let url = match args.kind.as_str() {
        "customers" => format!("{}/v1/customers", args.url.trim_end_matches('/')),
        _ => args.url.clone(),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (next, client, url, bodies, webhook) =
            (next.clone(), client.clone(), url.clone(), bodies.clone(), args.kind == "webhook");
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, sig)) = bodies.get(i) else { return Ok::<Vec<f64>, anyhow::Error>(lat) };
                let t = Instant::now();
                let mut req = client.post(&url).header("content-type", "application/json").body(body.clone());
                if webhook {
                    req = req.header("stripe-signature", sig);
                }
                let r = req.send().await?;
                let status = r.status();
                if !status.is_success() {
                    bail!("{url} answered {status}: {}", r.text().await.unwrap_or_default());
                }
                r.bytes().await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    let mut lat = Vec::with_capacity(args.n);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let out =
        json!({"sent": lat.len(), "secs": secs, "p50_ms": percentile(&lat, 50.0), "p99_ms": percentile(&lat, 99.0)});
    println!("{out}");
    Ok(())
}

/// Runs `syncflow-bench loadgen` with `args` as a child process and reads its result.
pub async fn run(args: &[String]) -> Result<LoadResult> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("loadgen")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("starting the load generator")?;
    if !out.status.success() {
        bail!("the load generator failed ({})", out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("reading the load generator's result")?;
    Ok(LoadResult {
        sent: v["sent"].as_u64().unwrap_or(0) as usize,
        secs: v["secs"].as_f64().unwrap_or(f64::NAN),
        p50_ms: v["p50_ms"].as_f64().unwrap_or(f64::NAN),
        p99_ms: v["p99_ms"].as_f64().unwrap_or(f64::NAN),
    })
}

/// `syncflow-bench echo`: the baseline a webhook endpoint cannot beat on this
/// machine — axum verifying the same signed body and answering 200, no database.
/// Prints its address first.
pub async fn echo(secret: String) -> Result<()> {
    use axum::http::{HeaderMap, StatusCode};
    let secret = Arc::new(secret);
    let app = axum::Router::new().route(
        "/webhooks/stripe",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let secret = secret.clone();
            async move {
                let sig = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
                let now = chrono::Utc::now().timestamp();
                match syncflow_connectors::signature::verify(sig, &body, &[secret.as_str()], now, 600) {
                    Ok(_) => {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        (StatusCode::OK, axum::Json(json!({"event_id": v["id"], "outcome": "received"})))
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "signature"}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A baseline echo server as a child process; killed when dropped.
pub struct EchoServer {
    child: tokio::process::Child,
    pub url: String,
}

impl EchoServer {
    pub async fn start(secret: &str) -> Result<EchoServer> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["echo", "--secret", secret])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let addr = lines.next_line().await?.context("the echo server printed no address")?;
        Ok(EchoServer { child, url: format!("http://{addr}/webhooks/stripe") })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
