//! Kafka scenarios: the hub publishes to librdkafka's mock cluster, which runs in
//! this process (real wire protocol over loopback).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use syncflow_sandbox::KafkaSandbox;

use crate::hub::{Env, Hub};
use crate::Row;

async fn queue(hub: &Hub, system: &str) -> Result<(i64, i64, i64)> {
    let systems: Value = hub.client.get(hub.url("/v1/systems")).send().await?.json().await?;
    let s = systems["data"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == system))
        .ok_or_else(|| anyhow!("system {system} not listed"))?;
    let lag = systems["dispatch"]["lag"].as_i64().unwrap_or(0);
    Ok((lag, s["queue"]["depth"].as_i64().unwrap_or(0), s["queue"]["dead"].as_i64().unwrap_or(0)))
}

/// Changes/s published to Kafka and confirmed by delivery reports, from a backlog
/// built while the system was paused.
pub async fn outward(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 5_000 } else { 20_000 };
    let kafka = KafkaSandbox::start(1).map_err(|e| anyhow!(e))?;
    kafka.create_topic("syncflow.changes", 6).map_err(|e| anyhow!(e))?;
    // 32 batches of up to 256 in flight: the store's claim and finish, not the broker, set the pace.
    let config = format!(
        "[[systems]]\nname = \"bus\"\nkind = \"kafka\"\nbrokers = \"{}\"\nconcurrency = 32\n",
        kafka.bootstrap()
    );
    let hub = env.start(&config)?;
    hub.post("/v1/systems/bus/pause", &serde_json::Value::Null).await?;
    crate::scenarios::create_customers(&hub, n, 32).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while queue(&hub, "bus").await? != (0, n as i64, 0) {
        if Instant::now() > deadline {
            bail!("backlog not dispatched: {:?}", queue(&hub, "bus").await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    hub.post("/v1/systems/bus/resume", &serde_json::Value::Null).await?;
    loop {
        let (_, depth, dead) = queue(&hub, "bus").await?;
        if dead > 0 {
            bail!("{dead} deliveries dead");
        }
        if depth == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("backlog not drained in 10 minutes ({depth} left)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed();
    let rate = n as f64 / drain.as_secs_f64();
    let on_topic = kafka.read("syncflow.changes", Duration::from_secs(120), |m| m.len() >= n).await.len();
    if on_topic < n {
        bail!("only {on_topic} of {n} messages on the topic");
    }
    Ok(Row {
        scenario: "kafka-outward",
        backend: String::new(),
        result: format!("{rate:.0} changes/s published and confirmed ({n} from a backlog, {on_topic} on the topic)"),
        goal: "≥ 20,000/s",
        met: Some(rate >= 20_000.0),
        data: json!({"changes": n, "published_per_s": rate, "drain_seconds": drain.as_secs_f64(), "on_topic": on_topic}),
    })
}
