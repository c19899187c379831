//! `syncflow-bench`: runs each scenario against a real `syncflow serve` child
//! process (the load generator and the sandbox systems live in this process), on
//! SQLite and on PostgreSQL, and prints one table (also written as JSON).
//!
//! Numbers are goals to chase and report, never assertions: this binary exits 0
//! whatever it measures.

mod dbstats;
mod hub;
mod kafka_scenarios;
mod lane_scenarios;
mod loadgen;
mod salesforce_scenarios;
mod scenarios;
mod stripe_scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Clone)]
#[command(about = "Syncflow benchmarks")]
pub struct Args {
    /// The `syncflow` binary to benchmark (default: next to this one).
    #[arg(long)]
    pub hub: Option<PathBuf>,
    /// Backends to run on: sqlite, postgres (comma-separated).
    #[arg(long, default_value = "sqlite,postgres", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// A PostgreSQL server URL whose user may CREATE DATABASE (each scenario gets a fresh one).
    #[arg(long, env = "SYNCFLOW_BENCH_DATABASE_URL")]
    pub postgres_url: Option<String>,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Smaller workloads (for a quick look, not for the record).
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub out: PathBuf,
}

/// One row of the results table.
pub struct Row {
    pub scenario: &'static str,
    pub backend: String,
    pub result: String,
    pub goal: &'static str,
    pub met: Option<bool>,
    pub data: Value,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // The load generator and the baseline server run as processes of their own.
    match std::env::args().nth(1).as_deref() {
        Some("loadgen") => return loadgen::main(loadgen::LoadArgs::parse_from(std::env::args().skip(1))).await,
        Some("echo") => {
            let secret = std::env::args().skip_while(|a| a != "--secret").nth(1).unwrap_or_default();
            return loadgen::echo(secret).await;
        }
        _ => {}
    }
    let args = Args::parse();
    let hub = match &args.hub {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("syncflow"),
    };
    if !hub.exists() {
        bail!("{} not found: build it first (cargo build --release -p syncflow)", hub.display());
    }
    let mut rows = Vec::new();
    for backend in &args.backends {
        if backend == "postgres" && args.postgres_url.is_none() {
            eprintln!("skipping postgres: pass --postgres-url or set SYNCFLOW_BENCH_DATABASE_URL");
            continue;
        }
        for scenario in scenarios::ALL {
            if !args.only.is_empty() && !args.only.iter().any(|o| o == scenario.name) {
                continue;
            }
            eprintln!("== {} on {backend}", scenario.name);
            let env = hub::Env::new(&hub, backend, args.postgres_url.as_deref()).await?;
            match tokio::time::timeout(Duration::from_secs(900), (scenario.run)(env, args.quick)).await {
                Ok(Ok(mut row)) => {
                    row.backend = backend.clone();
                    eprintln!("   {}", row.result);
                    rows.push(row);
                }
                Ok(Err(e)) => eprintln!("   failed: {e:#}"),
                Err(_) => eprintln!("   timed out"),
            }
        }
    }
    print_table(&rows);
    let json = json!({
        "machine": machine(),
        "quick": args.quick,
        "results": rows.iter().map(|r| json!({
            "scenario": r.scenario, "backend": r.backend, "result": r.result, "goal": r.goal, "met": r.met, "data": r.data,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("| scenario | backend | result | goal | met |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        println!("| {} | {} | {} | {} | {} |", r.scenario, r.backend, r.result, r.goal, met);
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory": mem,
        "os": std::env::consts::OS,
    })
}
