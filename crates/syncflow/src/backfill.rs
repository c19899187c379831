//! `syncflow backfill --system NAME`: runs a system's backfill from the command
//! line, with a progress line on a terminal and a summary either way. The work
//! itself (paging, pacing, resuming) is the engine's, for any two-way system.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use syncflow_core::CUSTOMER;
use syncflow_engine::backfill::{Direction, Progress};
use syncflow_engine::{Engine, SystemConfig};
use syncflow_store::Store;

use crate::config::Config;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Way {
    Import,
    Export,
    Both,
}

pub async fn run(store: Store, config: &Config, system: &str, way: Way, restart: bool) -> Result<()> {
    let table = config
        .systems
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(system))
        .with_context(|| format!("no [[systems]] block is named `{system}`"))?;
    let sc = SystemConfig::from_table(table.clone()).context("in [[systems]]")?;
    let kind = sc.kind.clone();
    let engine = Engine::new(store.clone(), vec![sc]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(pipeline) = engine.pipelines().remove(system) else {
        bail!("system `{system}` is kind `{kind}`, which only receives changes; backfill needs a two-way kind");
    };
    let directions: &[(Direction, &str)] = match way {
        Way::Import => &[(Direction::Import, "import")],
        Way::Export => &[(Direction::Export, "export")],
        Way::Both => &[(Direction::Import, "import"), (Direction::Export, "export")],
    };
    for (direction, label) in directions {
        if restart {
            pipeline.backfill_reset(&CUSTOMER, *direction).await?;
        }
        let started = Instant::now();
        let mut line = ProgressLine::new(label);
        let result = pipeline.backfill(&CUSTOMER, *direction, |p| line.update(p, false)).await;
        if let Ok(p) = &result {
            line.update(p, true); // the final state, whatever the redraw rate skipped
        }
        line.finish();
        let p = result.with_context(|| format!("backfill {label} stopped; rerun to continue from where it was"))?;
        println!(
            "{label}: {} seen, {} created, {} linked, {} already linked, {} left to live delivery, {} failed in {:.1}s",
            p.seen,
            p.created,
            p.linked,
            p.linked_before,
            p.in_flight,
            p.failed,
            started.elapsed().as_secs_f64()
        );
        if p.failed > 0 {
            bail!("backfill {label}: {} record(s) failed (see the log); rerun to continue from the first", p.failed);
        }
    }
    store.close().await;
    Ok(())
}

/// A redrawn line on a terminal (at most 10 times a second); nothing otherwise.
struct ProgressLine {
    label: &'static str,
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn new(label: &'static str) -> Self {
        Self { label, tty: std::io::stderr().is_terminal(), last: None, drawn: false }
    }

    fn update(&mut self, p: &Progress, last: bool) {
        if !self.tty || (!last && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100))) {
            return;
        }
        self.last = Some(Instant::now());
        let bar = match p.total.filter(|t| *t > 0) {
            Some(total) => {
                let done = (p.seen.min(total) * 30 / total) as usize;
                format!("[{}{}] {}/{total}", "#".repeat(done), "-".repeat(30 - done), p.seen)
            }
            None => format!("{} seen", p.seen),
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{}: {bar}  created {}  linked {}  failed {}\x1b[K",
            self.label, p.created, p.linked, p.failed
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
