//! `syncflow reconcile --system NAME [--entity E] [--repair]`: compares a system with
//! the hub and prints the drift by class (a progress line on a terminal), exiting
//! non-zero when drift is left unrepaired — so it can gate a script. The work is
//! the engine's (`syncflow_engine::reconcile`); the run is also a `reconcile_runs`
//! row. Repairs that push to the system are queued as ordinary deliveries, which a
//! running `syncflow serve` delivers.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use syncflow_core::Entity;
use syncflow_engine::reconcile::{Counts, ReconcileOptions};
use syncflow_engine::{Engine, SystemConfig};
use syncflow_store::Store;

use crate::config::Config;

pub async fn run(store: Store, config: &Config, system: &str, entity: Option<&str>, repair: bool) -> Result<()> {
    let table = config
        .systems
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(system))
        .with_context(|| format!("no [[systems]] block is named `{system}`"))?;
    let sc = SystemConfig::from_table(table.clone()).context("in [[systems]]")?;
    let entities: Vec<&'static Entity> = match entity {
        Some(e) => vec![Entity::by_name(e).with_context(|| format!("unknown entity `{e}`"))?],
        None => sc.entities.iter().filter_map(|e| Entity::by_name(e)).collect(),
    };
    let kind = sc.kind.clone();
    let engine = Engine::new(store.clone(), vec![sc]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(pipeline) = engine.pipelines().remove(system) else {
        bail!("system `{system}` is kind `{kind}`, which only receives changes; reconcile needs a two-way kind");
    };
    let mut left = 0;
    for entity in entities {
        let mut last: Option<Instant> = None;
        let tty = std::io::stderr().is_terminal();
        let mut line = |c: &Counts| {
            if tty && last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                last = Some(Instant::now());
                let _ = write!(
                    std::io::stderr(),
                    "\r{}: {} checked  {} drifting  {} in flight\x1b[K",
                    entity.name,
                    c.checked,
                    c.drift(),
                    c.in_flight
                );
                let _ = std::io::stderr().flush();
            }
        };
        let opts = ReconcileOptions { repair, trigger: "cli" };
        let result = pipeline.reconcile(entity, opts, &mut line).await;
        if tty {
            eprintln!();
        }
        let r = result.with_context(|| format!("reconcile of {system} {} stopped", entity.name))?;
        let c = &r.counts;
        println!(
            "{system} {} (run {}): {} checked, {} in flight (skipped); missing_remote {}, missing_local {}, \
             field_drift {}, orphan_link {}, duplicate {}; repaired {}, repair failed {}; {} API calls in {:.1}s",
            entity.name,
            r.run_id,
            c.checked,
            c.in_flight,
            c.missing_remote,
            c.missing_local,
            c.field_drift,
            c.orphan_link,
            c.duplicate,
            c.repaired,
            c.repair_failed,
            r.api_calls,
            r.duration_ms as f64 / 1000.0
        );
        for s in &r.samples {
            println!("  {s}");
        }
        left += if repair { c.repair_failed + c.duplicate } else { c.drift() };
    }
    store.close().await;
    if left > 0 {
        bail!(
            "{left} record(s) drift{}",
            if repair { " and were not repaired" } else { " (rerun with --repair to heal)" }
        );
    }
    Ok(())
}
