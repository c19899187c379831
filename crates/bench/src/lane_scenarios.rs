//! Priority lanes: live changes' commit → delivery latency while a bulk backlog
//! (reconcile repairs, or a backfill export to the Stripe sandbox — the bulk lane)
//! drains to the same system at its rate limit, against the same figure on an idle
//! system.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};
use syncflow_store::Store;

use crate::hub::{percentile, Env, Hub};
use crate::Row;

/// Requests per second the system allows.
const RATE: f64 = 100.0;

fn config(receiver: &Receiver) -> String {
    format!(
        "[[systems]]\nname = \"sink\"\nkind = \"http\"\nurl = \"{}\"\nrate_limit = {RATE}\nconcurrency = 8\n",
        receiver.url("/in")
    )
}

/// Creates `n` live customers through the API, one every `gap`, and returns their
/// commit → delivery latencies (ms) as the receiver saw them.
async fn live_latencies(hub: &Hub, receiver: &Receiver, tag: &str, n: usize, gap: Duration) -> Result<Vec<f64>> {
    for i in 0..n {
        hub.post("/v1/customers", &json!({"name": format!("{tag} {i}")})).await?;
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lat = latencies(receiver, tag);
        if lat.len() >= n {
            return Ok(lat);
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} live changes delivered", lat.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sorted latencies (ms) of the changes the receiver got for records named `tag …`.
fn latencies(receiver: &Receiver, tag: &str) -> Vec<f64> {
    let log: Vec<(chrono::DateTime<chrono::Utc>, Value)> = receiver.received_log();
    let mut lat: Vec<f64> = log
        .iter()
        .filter(|(_, body)| body["data"]["name"].as_str().is_some_and(|s| s.starts_with(tag)))
        .filter_map(|(wall, body)| {
            let created = chrono::DateTime::parse_from_rfc3339(body["change"]["created_at"].as_str()?).ok()?;
            Some((*wall - created.with_timezone(&chrono::Utc)).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

/// Records the system already has, each with a reconcile repair (the bulk lane).
async fn seed(url: String, bulk: usize) -> Result<()> {
    let store = Store::open(&url).await?;
    for i in 0..bulk {
        let body = json!({"name": format!("Bulk {i}")});
        let r = store.create(&CUSTOMER, body.as_object().expect("object"), "sink").await?;
        store.resync(&CUSTOMER, &r.id, "sink").await?;
    }
    store.close().await;
    analyze(&url).await
}

/// A fresh database has no planner statistics; autovacuum gathers them within a
/// minute of a bulk load. Without them the claim's per-record check picks a
/// whole-queue index scan (see BENCHMARKS.md), so gather them now, as it would.
async fn analyze(url: &str) -> Result<()> {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

/// Waits until the dispatcher has passed every change (each is a queued delivery).
async fn dispatched(hub: &Hub, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let systems: Value = hub.get("/v1/systems").await?;
        if systems["dispatch"]["lag"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the dispatcher did not catch up with {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn live_under_bulk(env: Env, quick: bool) -> Result<Row> {
    let bulk = if quick { 2_000 } else { 20_000 };
    let live = if quick { 20 } else { 60 };
    let gap = Duration::from_millis(250);
    let receiver = Receiver::start(None, Duration::ZERO).await;

    // Idle: live changes alone.
    let hub = env.start(&config(&receiver))?;
    let idle = live_latencies(&hub, &receiver, "Idle", live, gap).await?;
    drop(hub);

    // A bulk backlog, written on a blocking thread (the store's futures are not
    // `Send` in every context the scenario table needs).
    let url = env.database_url.clone();
    tokio::task::spawn_blocking(move || tokio::runtime::Handle::current().block_on(seed(url, bulk))).await??;
    let before = receiver.applied_count();
    let hub = env.start(&config(&receiver))?;
    // Lanes order claims, not the dispatcher (one pass over the change log in order):
    // measure once every bulk change is a queued delivery, while they drain.
    dispatched(&hub, "the bulk changes").await?;
    let busy = live_latencies(&hub, &receiver, "Live", live, gap).await?;
    let bulk_done = receiver.applied_count() - before - live;
    drop(hub);
    if bulk_done >= bulk {
        bail!("the bulk backlog drained before the live changes were measured");
    }
    let (idle_p99, busy_p99, busy_max) =
        (percentile(&idle, 99.0), percentile(&busy, 99.0), busy.last().copied().unwrap_or(f64::NAN));
    let interval_ms = 1000.0 / RATE;
    Ok(Row {
        scenario: "live-under-bulk-lanes",
        backend: String::new(),
        result: format!(
            "live p99 {busy_p99:.1} ms (max {busy_max:.1}) while {bulk} bulk repairs drain at {RATE}/s; idle p99 {idle_p99:.1} ms"
        ),
        goal: "live p99 ≤ idle p99 + 2 request intervals",
        met: Some(busy_p99 <= idle_p99 + 2.0 * interval_ms),
        data: json!({"bulk": bulk, "live": live, "rate_per_s": RATE, "idle_p99_ms": idle_p99,
            "busy_p50_ms": percentile(&busy, 50.0), "busy_p99_ms": busy_p99, "busy_max_ms": busy_max,
            "bulk_delivered_meanwhile": bulk_done}),
    })
}

/// The Stripe system of the backfill scenario: the engine paces it at the
/// sandbox's limit.
fn stripe_config(api_base: &str) -> String {
    format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{api_base}\"\nsecret_key = \"{STRIPE_KEY}\"\n\
         api_rate_limit = {RATE}\nconcurrency = 8\n"
    )
}

const STRIPE_KEY: &str = "sk_test_bench_lanes";

/// Creates `n` live customers through the API, one every `gap`; returns their
/// commit → delivery latencies (ms), sorted: from the record's commit time to the
/// moment the Stripe sandbox created the customer (its `customer.created` webhook,
/// sent to `seen` — a local receiver — as it happens).
async fn stripe_live_latencies(
    hub: &Hub,
    seen: &Receiver,
    tag: &str,
    n: usize,
    gap: Duration,
) -> Result<(Vec<f64>, Value)> {
    // name → (hub id, commit time)
    let mut committed = std::collections::HashMap::new();
    for i in 0..n {
        let name = format!("{tag} {i}");
        let r = hub.post("/v1/customers", &json!({"name": name})).await?;
        let at = chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap_or_default())?;
        committed.insert(name, (r["id"].as_str().unwrap_or_default().to_string(), at.with_timezone(&chrono::Utc)));
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut lat: Vec<f64> = seen
            .received_log()
            .iter()
            .filter(|(_, body)| body["type"] == "customer.created")
            .filter_map(|(wall, body)| {
                let (_, at) = committed.get(body["data"]["object"]["name"].as_str()?)?;
                Some((*wall - *at).num_microseconds()? as f64 / 1000.0)
            })
            .collect();
        if lat.len() >= n {
            lat.sort_by(|a, b| a.total_cmp(b));
            return Ok((lat, breakdown(hub, committed.values()).await?));
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} live changes reached Stripe", lat.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a live change's time went, from the transaction table (p50/p99, ms):
/// commit → delivery row (`dispatch`), delivery row → push start (`claim`: waiting
/// for a slot, a token and a claim), push start → end (`push`: the link read, the
/// connector's pacer and the HTTP call).
async fn breakdown(hub: &Hub, ids: impl Iterator<Item = &(String, chrono::DateTime<chrono::Utc>)>) -> Result<Value> {
    let ms =
        |v: &Value| -> Option<i64> { Some(chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?.timestamp_millis()) };
    let (mut dispatch, mut claim, mut push) = (Vec::new(), Vec::new(), Vec::new());
    for (id, committed) in ids {
        let list = hub.get(&format!("/v1/deliveries?system=stripe&record_id={id}")).await?;
        let Some(d) = list["data"].as_array().and_then(|a| a.first()) else { continue };
        let shown = hub.get(&format!("/v1/deliveries/{}", d["id"])).await?;
        let (Some(created), Some(a)) = (ms(&d["created_at"]), shown["history"].as_array().and_then(|h| h.last()))
        else {
            continue;
        };
        let (Some(at), Some(took)) = (ms(&a["at"]), a["duration_ms"].as_i64()) else { continue };
        dispatch.push((created - committed.timestamp_millis()) as f64);
        claim.push((at - took - created) as f64);
        push.push(took as f64);
    }
    let summary = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        json!({"p50": percentile(&v, 50.0), "p99": percentile(&v, 99.0)})
    };
    Ok(json!({"dispatch_ms": summary(dispatch), "claim_ms": summary(claim), "push_ms": summary(push)}))
}

/// Hub customers Stripe has never seen (as if they existed before the system was
/// configured: the dispatcher has passed their changes).
async fn seed_unlinked(url: String, n: usize) -> Result<()> {
    let store = Store::open(&url).await?;
    for i in 0..n {
        let body = json!({"name": format!("Backfill {i}"), "email": format!("b{i}@example.com")});
        store.create(&CUSTOMER, body.as_object().expect("object"), "seed").await?;
    }
    store.sequence().await?;
    let head = store.head_seq().await?;
    store.set_cursor("dispatch", &head.to_string()).await?;
    store.close().await;
    analyze(&url).await
}

/// The lane figure: live changes' commit → delivery p99 while a backfill
/// export (`syncflow backfill --direction export`, the bulk lane) drains to the
/// Stripe sandbox at its rate limit, against the same figure on an idle system.
/// `SYNCFLOW_BENCH_BACKFILL` overrides the backfill's size (a smoke run).
pub async fn live_under_backfill(env: Env, quick: bool) -> Result<Row> {
    let bulk = std::env::var("SYNCFLOW_BENCH_BACKFILL").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick {
        2_000
    } else {
        20_000
    });
    let live = if quick { 20 } else { 60 };
    let gap = Duration::from_millis(250);
    let stripe =
        StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions { rate_limit: Some(RATE), ..Default::default() })
            .await?;
    // Stripe's own webhooks say when each customer was created there.
    let seen = Receiver::start(None, Duration::ZERO).await;
    stripe.add_webhook("we_bench", &seen.url("/stripe"), "whsec_bench_lanes");
    let config = stripe_config(&stripe.url());

    let hub = env.start(&config)?;
    let (idle, idle_parts) = stripe_live_latencies(&hub, &seen, "Idle", live, gap).await?;
    drop(hub);

    let url = env.database_url.clone();
    tokio::task::spawn_blocking(move || tokio::runtime::Handle::current().block_on(seed_unlinked(url, bulk))).await??;
    let hub = env.start(&config)?;
    let before = stripe.stats();
    let started = Instant::now();
    let out = std::process::Command::new(&env.hub_bin)
        .current_dir(&env.dir)
        .args(["--config", "syncflow.toml", "backfill", "--system", "stripe", "--direction", "export", "--no-wait"])
        .env("SYNCFLOW_DATABASE_URL", &env.database_url)
        .output()?;
    if !out.status.success() {
        bail!("backfill failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    // Measure once every backfill change is a queued delivery, while they drain.
    dispatched(&hub, "the backfill").await?;
    let (busy, busy_parts) = stripe_live_latencies(&hub, &seen, "Live", live, gap).await?;
    let during = stripe.stats();
    let backfilled = during.customers.saturating_sub(before.customers + live);
    let throttled = during.throttled - before.throttled;
    let secs = started.elapsed().as_secs_f64();
    drop(hub);
    if backfilled >= bulk {
        bail!("the backfill drained before the live changes were measured");
    }
    let (idle_p99, busy_p99, busy_max) =
        (percentile(&idle, 99.0), percentile(&busy, 99.0), busy.last().copied().unwrap_or(f64::NAN));
    let interval_ms = 1000.0 / RATE;
    Ok(Row {
        scenario: "live-under-backfill",
        backend: String::new(),
        result: format!(
            "live p99 {busy_p99:.1} ms (max {busy_max:.1}) while a {bulk}-record backfill drains to the Stripe sandbox \
             at {RATE}/s; idle p99 {idle_p99:.1} ms"
        ),
        goal: "live p99 ≤ idle p99 + 2 request intervals",
        met: Some(busy_p99 <= idle_p99 + 2.0 * interval_ms),
        data: json!({"backfill": bulk, "live": live, "rate_per_s": RATE, "idle_p99_ms": idle_p99,
            "idle_p50_ms": percentile(&idle, 50.0), "busy_p50_ms": percentile(&busy, 50.0), "busy_p99_ms": busy_p99,
            "busy_max_ms": busy_max, "backfilled_meanwhile": backfilled, "backfill_rate_per_s": backfilled as f64 / secs,
            "enqueue_seconds": enqueue_secs, "throttled": throttled, "idle_parts": idle_parts,
            "busy_parts": busy_parts}),
    })
}
