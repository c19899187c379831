//! Scenarios that involve Stripe: a backlog drained into the rate-limited Stripe
//! sandbox, signed webhook ingest, and webhook-to-second-system fan-out.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};

use crate::hub::{percentile, Env};
use crate::Row;

const KEY: &str = "sk_test_bench";
const WHSEC: &str = "whsec_bench";

fn stripe_system(api_base: &str, extra: &str) -> String {
    format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{api_base}\"\nsecret_key = \"{KEY}\"\n\
         webhook_secret = \"{WHSEC}\"\n{extra}\n"
    )
}

/// A signed `customer.created` event as Stripe would send it.
fn event(i: usize, name: &str) -> (Vec<u8>, String) {
    let now = chrono::Utc::now().timestamp();
    let body = json!({
        "id": format!("evt_bench_{i}"), "object": "event", "type": "customer.created", "created": now,
        "livemode": false, "api_version": "2024-06-20",
        "data": {"object": {"id": format!("cus_bench_{i}"), "object": "customer", "created": now,
            "name": name, "email": format!("w{i}@example.com"), "metadata": {}, "description": null, "phone": null}},
    });
    let bytes = serde_json::to_vec(&body).expect("json");
    let sig = syncflow_connectors::signature::sign(WHSEC, now, &bytes);
    (bytes, sig)
}

/// Waits until the sandbox holds `n` customers (bounded by the backlog's size).
async fn wait_for_customers(stripe: &StripeSandbox, n: usize, started: Instant) -> Result<()> {
    while stripe.stats().customers < n {
        if started.elapsed() > Duration::from_secs(n as u64 / 50 + 120) {
            bail!("only {} of {n} customers reached Stripe", stripe.stats().customers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A 20,000-change backlog drained into the Stripe sandbox limited to 100 req/s.
pub async fn rate_limit(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 1_000 } else { 20_000 };
    let limit = 100.0;
    let stripe =
        StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions { rate_limit: Some(limit), ..Default::default() })
            .await?;
    let hub = env.start(&stripe_system(&stripe.url(), "api_rate_limit = 100\nconcurrency = 16"))?;
    hub.post("/v1/systems/stripe/pause", &Value::Null).await?;
    crate::scenarios::create_customers(&hub, n, 32).await?;
    let before = stripe.stats();
    let started = Instant::now();
    hub.post("/v1/systems/stripe/resume", &Value::Null).await?;
    wait_for_customers(&stripe, n, started).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = stripe.stats();
    let requests = after.requests - before.requests;
    let throttled = after.throttled - before.throttled;
    let used = n as f64 / secs / limit * 100.0;
    let throttled_pct = throttled as f64 / requests.max(1) as f64 * 100.0;
    Ok(Row {
        scenario: "stripe-at-rate-limit",
        backend: String::new(),
        result: format!("{used:.1} % of 100 req/s used, {throttled_pct:.2} % answered 429 ({n} customers, {requests} requests, nothing lost)"),
        goal: "≥ 95 % of limit, ≤ 0.1 % 429",
        met: Some(used >= 95.0 && throttled_pct <= 0.1),
        data: json!({"changes": n, "seconds": secs, "requests": requests, "throttled": throttled,
                     "limit_used_pct": used, "throttled_pct": throttled_pct, "customers_in_stripe": after.customers}),
    })
}

/// Two `syncflow serve` nodes on one PostgreSQL database drain a backlog into the
/// Stripe sandbox limited to 100 req/s: the limit holds for the pair, and is used.
pub async fn two_nodes(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 1_000 } else { 10_000 };
    let limit = 100.0;
    if !env.database_url.starts_with("postgres") {
        return Ok(Row {
            scenario: "stripe-two-nodes",
            backend: String::new(),
            result: "needs PostgreSQL (several nodes share one database)".into(),
            goal: "≥ 95 % of limit, ≤ 0.1 % 429",
            met: None,
            data: json!({}),
        });
    }
    let stripe =
        StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions { rate_limit: Some(limit), ..Default::default() })
            .await?;
    let config = stripe_system(&stripe.url(), "api_rate_limit = 100\nconcurrency = 16");
    let first = env.start(&config)?;
    first.post("/v1/systems/stripe/pause", &Value::Null).await?;
    crate::scenarios::create_customers(&first, n, 32).await?;
    let second = env.start(&config)?;
    let waiting = Instant::now();
    while first.get("/v1/nodes").await?["data"].as_array().map_or(0, Vec::len) < 2 {
        if waiting.elapsed() > Duration::from_secs(30) {
            bail!("the second node never joined");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let both nodes count each other before the work starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stripe.stats();
    let started = Instant::now();
    first.post("/v1/systems/stripe/resume", &Value::Null).await?;
    wait_for_customers(&stripe, n, started).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = stripe.stats();
    drop(second);
    let requests = after.requests - before.requests;
    let throttled = after.throttled - before.throttled;
    let used = requests as f64 / secs / limit * 100.0;
    let throttled_pct = throttled as f64 / requests.max(1) as f64 * 100.0;
    Ok(Row {
        scenario: "stripe-two-nodes",
        backend: String::new(),
        result: format!("2 nodes: {used:.1} % of 100 req/s used, {throttled_pct:.2} % answered 429 ({n} customers, {requests} requests, nothing lost)"),
        goal: "≥ 95 % of limit, ≤ 0.1 % 429",
        met: Some((95.0..=100.0).contains(&used) && throttled_pct <= 0.1),
        data: json!({"changes": n, "nodes": 2, "seconds": secs, "requests": requests, "throttled": throttled,
                     "limit_used_pct": used, "throttled_pct": throttled_pct, "customers_in_stripe": after.customers}),
    })
}

/// Signed Stripe-style webhooks (`customer.created`, then `customer.updated`: ten
/// events per customer), each durable before its 2xx, sent by a load generator of
/// its own at concurrency 32; beside two baselines from the same run: the same load
/// against a bare axum endpoint that only verifies the signature, and the
/// database's raw single-row commit rate. Reports what each event cost the database.
pub async fn webhook_ingest(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 4_000 } else { 20_000 };
    let objects = n / 10;
    let load = |url: &str, tag: &str| {
        [
            "--url",
            url,
            "--kind",
            "webhook",
            "--n",
            &n.to_string(),
            "--objects",
            &objects.to_string(),
            "--concurrency",
            "32",
            "--secret",
            WHSEC,
            "--tag",
            tag,
        ]
        .map(str::to_string)
    };
    let echo = crate::loadgen::EchoServer::start(WHSEC).await?;
    let ceiling = crate::loadgen::run(&load(&echo.url, "echo")).await?;
    drop(echo);
    let raw = crate::dbstats::raw_insert_baseline(&env, n.min(10_000), 32).await?;

    let stripe = StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions::default()).await?;
    let hub = env.start(&stripe_system(&stripe.url(), ""))?;
    let before = crate::dbstats::DbStats::read(&env).await?;
    let r = crate::loadgen::run(&load(&hub.url("/webhooks/stripe"), "hook")).await?;
    // Every customer ends exactly as its last event says.
    let page = hub.get(&format!("/v1/customers?limit={}", objects.min(500))).await?;
    let customers = page["data"].as_array().cloned().unwrap_or_default();
    let wrong = customers
        .iter()
        .filter(|c| {
            let email = c["email"].as_str().unwrap_or_default();
            let k: usize = email.trim_start_matches('w').split('@').next().and_then(|k| k.parse().ok()).unwrap_or(0);
            let last = (0..n).rev().find(|i| i % objects == k).unwrap_or(0);
            c["name"] != format!("Hook {last}").as_str()
        })
        .count();
    let after = crate::dbstats::DbStats::read(&env).await?;
    drop(hub);
    let after =
        if env.database_url.starts_with("sqlite:") { crate::dbstats::DbStats::read(&env).await? } else { after };
    let (cost, cost_json) = before.per_event(&after, n);
    let rate = r.rate();
    Ok(Row {
        scenario: "webhook-ingest",
        backend: String::new(),
        result: format!(
            "{rate:.0} req/s, p50 {:.1} ms, p99 {:.1} ms ({n} signed events, {objects} customers, {wrong} of {} checked wrong); {cost}; baselines: bare axum + signature {:.0} req/s, raw INSERT {raw:.0} commits/s",
            r.p50_ms, r.p99_ms, customers.len(), ceiling.rate()
        ),
        goal: "≥ 5,000 req/s, p99 ≤ 50 ms (SQLite); ≥ 2,000 req/s (PostgreSQL); ≤ 2 KB growth per event",
        met: Some(rate >= 5000.0 && r.p99_ms <= 50.0),
        data: json!({"events": n, "customers": objects, "per_s": rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                     "wrong": wrong, "cost": cost_json, "echo_per_s": ceiling.rate(), "echo_p99_ms": ceiling.p99_ms,
                     "raw_insert_commits_per_s": raw}),
    })
}

/// Webhook received → delivered to a second system, at a steady 100 events/s.
pub async fn inward_fanout(env: Env, quick: bool) -> Result<Row> {
    let seconds = if quick { 5 } else { 20 };
    let n = 100 * seconds;
    let stripe = StripeSandbox::start("127.0.0.1:0".parse()?, StripeOptions::default()).await?;
    let receiver = Receiver::start(None, Duration::ZERO).await;
    let systems = format!(
        "{}[[systems]]\nname = \"warehouse\"\nkind = \"http\"\nurl = \"{}\"\nconcurrency = 64\n",
        stripe_system(&stripe.url(), ""),
        receiver.url("/in")
    );
    let hub = env.start(&systems)?;
    let mut sent = std::collections::HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        ticker.tick().await;
        let name = format!("Fan {i}");
        let (body, sig) = event(i, &name);
        sent.insert(name, chrono::Utc::now());
        let (client, url) = (hub.client.clone(), hub.url("/webhooks/stripe"));
        tasks.spawn(async move {
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", sig)
                .body(body)
                .send()
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        if !r.status().is_success() {
            bail!("webhook answered {}", r.status());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.applied_count() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} reached the second system", receiver.applied_count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat: Vec<f64> = receiver
        .received_log()
        .iter()
        .filter_map(|(wall, body): &(chrono::DateTime<chrono::Utc>, Value)| {
            let at = sent.get(body["data"]["name"].as_str()?)?;
            Some((*wall - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = percentile(&lat, 99.0);
    Ok(Row {
        scenario: "inward-fan-out",
        backend: String::new(),
        result: format!(
            "p50 {:.1} ms, p99 {p99:.1} ms webhook → second system ({n} events at 100/s)",
            percentile(&lat, 50.0)
        ),
        goal: "p99 ≤ 100 ms",
        met: Some(p99 <= 100.0),
        data: json!({"events": n, "p50_ms": percentile(&lat, 50.0), "p99_ms": p99, "matched": lat.len()}),
    })
}
