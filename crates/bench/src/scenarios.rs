//! The scenarios. Each builds its own hub configuration, drives load from this
//! process, measures, and returns one row.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use syncflow_sandbox::Receiver;

use crate::hub::{percentile, Env, Hub};
use crate::Row;

type Run = fn(Env, bool) -> Pin<Box<dyn Future<Output = Result<Row>> + Send>>;

pub struct Scenario {
    pub name: &'static str,
    pub run: Run,
}

pub const ALL: &[Scenario] = &[
    Scenario { name: "outward-throughput", run: |e, q| Box::pin(outward_throughput(e, q)) },
    Scenario { name: "commit-to-delivery-latency", run: |e, q| Box::pin(latency(e, q)) },
    Scenario { name: "backlog-memory", run: |e, q| Box::pin(backlog_memory(e, q)) },
    Scenario { name: "stripe-at-rate-limit", run: |e, q| Box::pin(crate::stripe_scenarios::rate_limit(e, q)) },
    Scenario { name: "stripe-two-nodes", run: |e, q| Box::pin(crate::stripe_scenarios::two_nodes(e, q)) },
    Scenario { name: "webhook-ingest", run: |e, q| Box::pin(crate::stripe_scenarios::webhook_ingest(e, q)) },
    Scenario { name: "inward-fan-out", run: |e, q| Box::pin(crate::stripe_scenarios::inward_fanout(e, q)) },
    Scenario { name: "client-sync-throughput", run: |e, q| Box::pin(client_sync_throughput(e, q)) },
    Scenario { name: "delta-sync-requests", run: |e, q| Box::pin(delta_sync_requests(e, q)) },
    Scenario { name: "commit-to-sse-latency", run: |e, q| Box::pin(sse_latency(e, q)) },
    Scenario { name: "live-under-bulk-lanes", run: |e, q| Box::pin(crate::lane_scenarios::live_under_bulk(e, q)) },
    Scenario { name: "live-under-backfill", run: |e, q| Box::pin(crate::lane_scenarios::live_under_backfill(e, q)) },
    Scenario {
        name: "salesforce-backlog-calls",
        run: |e, q| Box::pin(crate::salesforce_scenarios::backlog_calls(e, q)),
    },
    Scenario { name: "kafka-outward", run: |e, q| Box::pin(crate::kafka_scenarios::outward(e, q)) },
];

fn http_system(name: &str, receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[systems]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\nsecret = \"bench\"\n{extra}\n",
        receiver.url("/in")
    )
}

/// Creates `n` customers through the API with `concurrency` clients; returns when
/// all are committed.
pub async fn create_customers(hub: &Hub, n: usize, concurrency: usize) -> Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let client = hub.client.clone();
        let url = hub.url("/v1/customers");
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let body = json!({"name": format!("Bench {i}"), "email": format!("b{i}@example.com")});
                let r = client.post(&url).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("create failed: {}", r.status());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(started.elapsed())
}

/// Creates `n` customers at a steady 200 per second (one every 5 ms, each request
/// in its own task so a slow answer does not delay the schedule).
async fn create_at_200_per_s(hub: &Hub, n: usize, prefix: &str) -> Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        ticker.tick().await;
        let client = hub.client.clone();
        let url = hub.url("/v1/customers");
        let name = format!("{prefix}{i}");
        tasks.spawn(async move { client.post(&url).json(&json!({"name": name})).send().await.map(|_| ()) });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn wait_applied(receiver: &Receiver, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while receiver.applied_count() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} delivered", receiver.applied_count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Changes/s committed through the API and delivered to a receiver that takes
/// 50 ms per request, with no rate limit.
async fn outward_throughput(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 3_000 } else { 20_000 };
    let receiver = Receiver::start(Some("bench"), Duration::from_millis(50)).await;
    receiver.keep_bodies(false);
    let hub = env.start(&http_system("sink", &receiver, "concurrency = 1024"))?;
    let started = Instant::now();
    // The API load comes from a process of its own (as in webhook-ingest).
    let args = ["--url", &hub.base, "--kind", "customers", "--n", &n.to_string(), "--concurrency", "64"];
    let load = crate::loadgen::run(&args.map(str::to_string)).await?;
    wait_applied(&receiver, n, Duration::from_secs(600)).await?;
    let total = started.elapsed();
    let commit_rate = load.rate();
    let delivered_rate = n as f64 / total.as_secs_f64();
    Ok(Row {
        scenario: "outward-throughput",
        backend: String::new(),
        result: format!("{delivered_rate:.0} changes/s delivered ({commit_rate:.0}/s committed, {n} changes)"),
        goal: "≥ 5,000/s",
        met: Some(delivered_rate >= 5000.0),
        data: json!({"changes": n, "committed_per_s": commit_rate, "delivered_per_s": delivered_rate,
                     "seconds": total.as_secs_f64(), "receiver_latency_ms": 50}),
    })
}

/// Commit-to-delivery latency at a steady 200 changes/s to an instant receiver.
async fn latency(env: Env, quick: bool) -> Result<Row> {
    let seconds = if quick { 5 } else { 20 };
    let n = 200 * seconds;
    let receiver = Receiver::start(None, Duration::ZERO).await;
    let hub = env.start(&http_system("sink", &receiver, "concurrency = 64"))?;
    create_at_200_per_s(&hub, n, "L").await?;
    wait_applied(&receiver, n, Duration::from_secs(120)).await?;
    let mut lat: Vec<f64> = receiver
        .received_log()
        .iter()
        .filter_map(|(wall, body)| {
            let created = chrono::DateTime::parse_from_rfc3339(body["change"]["created_at"].as_str()?).ok()?;
            Some((*wall - created.with_timezone(&chrono::Utc)).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (percentile(&lat, 50.0), percentile(&lat, 99.0), lat.last().copied().unwrap_or(f64::NAN));
    let goal_ms = if env.database_url.starts_with("postgres") { 50.0 } else { 100.0 };
    Ok(Row {
        scenario: "commit-to-delivery-latency",
        backend: String::new(),
        result: format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms at 200/s ({n} changes)"),
        goal: if goal_ms == 50.0 { "p99 ≤ 50 ms (PostgreSQL)" } else { "p99 ≤ 100 ms (SQLite)" },
        met: Some(p99 <= goal_ms),
        data: json!({"changes": n, "rate_per_s": 200, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
    })
}

/// Peak RSS of the hub while it drains a backlog built up while its system was
/// paused.
async fn backlog_memory(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 20_000 } else { 100_000 };
    let receiver = Receiver::start(None, Duration::ZERO).await;
    receiver.keep_bodies(false);
    let hub = env.start(&http_system("sink", &receiver, "concurrency = 256"))?;
    hub.post("/v1/systems/sink/pause", &Value::Null).await?;
    create_customers(&hub, n, 32).await?;
    let (_, peak_before) = hub.rss_mib();
    let started = Instant::now();
    hub.post("/v1/systems/sink/resume", &Value::Null).await?;
    let mut peak_drain: f64 = 0.0;
    while receiver.applied_count() < n {
        peak_drain = peak_drain.max(hub.rss_mib().0);
        if started.elapsed() > Duration::from_secs(600) {
            bail!("backlog not drained in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = started.elapsed();
    let (_, peak_all) = hub.rss_mib();
    Ok(Row {
        scenario: "backlog-memory",
        backend: String::new(),
        result: format!(
            "peak RSS {peak_drain:.0} MiB draining {n} changes in {:.1} s (lifetime peak {peak_all:.0} MiB)",
            drain.as_secs_f64()
        ),
        goal: "≤ 150 MB",
        met: Some(peak_all * 1.048_576 <= 150.0),
        data: json!({"changes": n, "peak_rss_drain_mib": peak_drain, "peak_rss_lifetime_mib": peak_all,
                     "peak_rss_before_drain_mib": peak_before, "drain_seconds": drain.as_secs_f64()}),
    })
}

/// `clients` simulated apps each sending `/v1/sync` requests that push `batch`
/// new readings and pull what the others wrote since their cursor, until `n`
/// writes are done. Returns (seconds, per-request latencies in ms, records pulled).
async fn sync_load(hub: &Hub, clients: usize, batch: usize, n: usize) -> Result<(f64, Vec<f64>, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let next = next.clone();
        let client = hub.client.clone();
        let url = hub.url("/v1/sync");
        tasks.spawn(async move {
            let mut cursor: Option<String> = None;
            let mut latencies = Vec::new();
            let mut pulled = 0usize;
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= n {
                    return Ok::<_, anyhow::Error>((latencies, pulled));
                }
                let changes: Vec<_> = (first..(first + batch).min(n))
                    .map(|i| {
                        json!({"entity": "stock_reading", "client_ref": format!("r{i}"),
                               "fields": {"gtin": format!("{i:013}"), "expiration_date": "2030-01-01T00:00:00Z"}})
                    })
                    .collect();
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("Syncflow-Client", format!("bench-{c}"))
                    .json(&json!({"cursor": cursor, "changes": changes}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("sync failed: {}", r.status());
                }
                let body: serde_json::Value = r.json().await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                pulled += body["changes"].as_array().map_or(0, Vec::len);
                cursor = body["cursor"].as_str().map(str::to_string);
            }
        });
    }
    let mut lat = Vec::new();
    let mut pulled = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, p) = r??;
        lat.extend(l);
        pulled += p;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((secs, lat, pulled))
}

/// Bulk client writes: 8 clients pushing batches of 100.
async fn client_sync_throughput(env: Env, quick: bool) -> Result<Row> {
    const CLIENTS: usize = 8;
    const BATCH: usize = 100;
    let n = if quick { 5_000 } else { 40_000 };
    let hub = env.start("")?;
    let (secs, lat, pulled) = sync_load(&hub, CLIENTS, BATCH, n).await?;
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let rate = n as f64 / secs;
    Ok(Row {
        scenario: "client-sync-throughput",
        backend: String::new(),
        result: format!(
            "{rate:.0} client writes/s ({CLIENTS} clients, batches of {BATCH}; per batch p50 {p50:.1} ms, p99 {p99:.1} ms; {n} writes)"
        ),
        goal: "—",
        met: None,
        data: json!({"writes": n, "clients": CLIENTS, "batch": BATCH, "writes_per_s": rate, "seconds": secs,
                     "batch_p50_ms": p50, "batch_p99_ms": p99, "records_pulled": pulled}),
    })
}

/// `/v1/sync` requests per second with small deltas: 16 clients, each request pushes
/// one reading and pulls the few that others wrote since its last sync.
async fn delta_sync_requests(env: Env, quick: bool) -> Result<Row> {
    const CLIENTS: usize = 16;
    let n = if quick { 3_000 } else { 20_000 };
    let hub = env.start("")?;
    let (secs, lat, pulled) = sync_load(&hub, CLIENTS, 1, n).await?;
    let rate = n as f64 / secs;
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let mean_delta = pulled as f64 / n as f64;
    Ok(Row {
        scenario: "delta-sync-requests",
        backend: String::new(),
        result: format!(
            "{rate:.0} requests/s ({CLIENTS} clients, 1 push + {mean_delta:.1} pulled per request; p50 {p50:.1} ms, p99 {p99:.1} ms)"
        ),
        goal: "≥ 3,000 req/s",
        met: Some(rate >= 3000.0),
        data: json!({"requests": n, "clients": CLIENTS, "requests_per_s": rate, "mean_pulled": mean_delta,
                     "p50_ms": p50, "p99_ms": p99}),
    })
}

/// Commit-to-event latency of `GET /v1/stream` at a steady 200 changes/s: the time
/// from a change's commit stamp to its event arriving at a connected client.
async fn sse_latency(env: Env, quick: bool) -> Result<Row> {
    let seconds = if quick { 5 } else { 20 };
    let n = 200 * seconds;
    let hub = env.start("")?;
    let mut stream = hub.client.get(hub.url("/v1/stream?after=0")).send().await?;
    if !stream.status().is_success() {
        bail!("stream failed: {}", stream.status());
    }
    let reader = tokio::spawn(async move {
        let mut buf = String::new();
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.chunk()).await?? else {
                bail!("stream ended after {} events", lat.len());
            };
            let arrived = chrono::Utc::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(pos) = buf.find("\n\n") {
                let block: String = buf.drain(..pos + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let change: serde_json::Value = serde_json::from_str(data)?;
                let created = chrono::DateTime::parse_from_rfc3339(change["created_at"].as_str().unwrap_or_default())?;
                lat.push(
                    (arrived - created.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                );
            }
        }
        Ok::<_, anyhow::Error>(lat)
    });
    create_at_200_per_s(&hub, n, "S").await?;
    let mut lat = reader.await??;
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (percentile(&lat, 50.0), percentile(&lat, 99.0), lat.last().copied().unwrap_or(f64::NAN));
    Ok(Row {
        scenario: "commit-to-sse-latency",
        backend: String::new(),
        result: format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms at 200/s ({n} changes)"),
        goal: "—",
        met: None,
        data: json!({"changes": n, "rate_per_s": 200, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
    })
}
