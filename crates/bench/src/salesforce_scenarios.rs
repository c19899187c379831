//! A 20,000-change backlog drained into the Salesforce sandbox: how many API calls
//! (sObject Collections of up to 200 upserts) it takes, with nothing lost and no 403.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use syncflow_sandbox::salesforce::{SalesforceOptions, SalesforceSandbox};

use crate::hub::Env;
use crate::Row;

pub async fn backlog_calls(env: Env, quick: bool) -> Result<Row> {
    let n = if quick { 2_000 } else { 20_000 };
    let options = SalesforceOptions {
        client_id: "bench".into(),
        client_secret: "bench-secret".into(),
        ..SalesforceOptions::default()
    };
    let sf = SalesforceSandbox::start("127.0.0.1:0".parse()?, options).await?;
    // Polling off: this measures what the outward drain costs.
    let system = format!(
        "[[systems]]\nname = \"salesforce\"\nkind = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"bench\"\n\
         client_secret = \"bench-secret\"\npoll_interval = \"0s\"\napi_rate_limit = 100\nconcurrency = 4\n",
        sf.url()
    );
    let hub = env.start(&system)?;
    hub.post("/v1/systems/salesforce/pause", &Value::Null).await?;
    crate::scenarios::create_customers(&hub, n, 32).await?;
    let before = sf.stats();
    let started = Instant::now();
    hub.post("/v1/systems/salesforce/resume", &Value::Null).await?;
    while sf.stats().records < n {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("only {} of {n} contacts reached Salesforce", sf.stats().records);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = sf.stats();
    let calls = after.api_calls - before.api_calls;
    let refused = after.limit_refusals - before.limit_refusals;
    let per_change = calls as f64 / n as f64;
    let budget = (n as f64 / 200.0 * 1.1).ceil() as u64;
    Ok(Row {
        scenario: "salesforce-backlog-calls",
        backend: String::new(),
        result: format!(
            "{n} changes in {calls} API calls ({per_change:.4} calls/change, {} collection calls), {refused} refused (403), {secs:.1} s",
            after.collection_calls - before.collection_calls
        ),
        goal: "≤ 110 calls for 20,000 (≤ 1.1 × n/200), no 403",
        met: Some(calls <= budget && refused == 0),
        data: json!({"changes": n, "api_calls": calls, "calls_per_change": per_change, "refused": refused, "seconds": secs,
                     "collection_calls": after.collection_calls - before.collection_calls, "contacts": after.records}),
    })
}
