//! `syncflow backfill --system NAME`: runs a system's backfill from the command
//! line, with a progress line on a terminal and a summary either way. The work
//! itself (paging, pacing, resuming) is the engine's, for any two-way system.
//!
//! Export only enqueues (bulk-lane changes): the hub's engine delivers them. When a
//! hub node is running, the command waits for those deliveries and reports them
//! (`--no-wait` returns at once); when none is, it says the hub will deliver them.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use syncflow_core::CUSTOMER;
use syncflow_engine::backfill::{Direction, Progress};
use syncflow_engine::{ClusterSettings, Engine, SystemConfig};
use syncflow_store::{now_ms, BulkProgress, Store};

use crate::config::Config;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Way {
    Import,
    Export,
    Both,
}

pub async fn run(store: Store, config: &Config, system: &str, way: Way, restart: bool, wait: bool) -> Result<()> {
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
        let before = pipeline.backfill_deliveries().await?;
        let mut line = ProgressLine::new(label);
        let result = pipeline.backfill(&CUSTOMER, *direction, |p| line.update(p, false)).await;
        if let Ok(p) = &result {
            line.update(p, true); // the final state, whatever the redraw rate skipped
        }
        line.finish();
        let p = result.with_context(|| format!("backfill {label} stopped; rerun to continue from where it was"))?;
        if *direction == Direction::Export {
            println!(
                "{label}: {} seen, {} enqueued, {} already linked, {} left to live delivery in {:.1}s",
                p.seen,
                p.enqueued,
                p.linked_before,
                p.in_flight,
                started.elapsed().as_secs_f64()
            );
            if wait {
                wait_for_delivery(&store, &pipeline, system, before, p.enqueued as i64).await?;
            }
            continue;
        }
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

/// Waits until the `enqueued` exports (on top of the backfill deliveries counted in
/// `before`) have reached a final outcome, when a hub node is running to deliver them.
async fn wait_for_delivery(
    store: &Store,
    pipeline: &syncflow_engine::Pipeline,
    system: &str,
    before: BulkProgress,
    enqueued: i64,
) -> Result<()> {
    let total = |p: &BulkProgress| p.unfinished + p.delivered + p.dead + p.skipped;
    // A node silent for longer than the cluster's timeout is not running.
    let timeout_ms = ClusterSettings::default().timeout.as_millis() as i64;
    let started = Instant::now();
    let mut line = ProgressLine::new("export");
    loop {
        let p = pipeline.backfill_deliveries().await?;
        // Every enqueued change has its delivery (dispatched) and none is unfinished.
        if total(&p) >= total(&before) + enqueued && p.unfinished == 0 {
            line.finish();
            let (delivered, dead) = (p.delivered - before.delivered, p.dead - before.dead);
            println!(
                "export: {delivered} delivered, {dead} dead, {} skipped by {system} in {:.1}s",
                p.skipped - before.skipped,
                started.elapsed().as_secs_f64()
            );
            if dead > 0 {
                bail!("backfill export: {dead} delivery(ies) dead (see `syncflow deliveries --status dead`)");
            }
            return Ok(());
        }
        if !store.nodes().await?.iter().any(|n| now_ms() - n.last_seen_ms < timeout_ms) {
            line.finish();
            println!(
                "export: no hub node is running; `syncflow serve` delivers the {} enqueued export(s) (bulk lane)",
                total(&before) + enqueued - total(&p) + p.unfinished
            );
            return Ok(());
        }
        let finished = (total(&p) - p.unfinished) - (total(&before) - before.unfinished);
        line.draw(format!("{}/{enqueued} delivered by the hub", finished.max(0)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
        self.draw(format!("{bar}  created {}  linked {}  failed {}", p.created, p.linked, p.failed));
    }

    /// Redraws the line as `label: text` (on a terminal only).
    fn draw(&mut self, text: String) {
        if !self.tty {
            return;
        }
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{}: {text}\x1b[K", self.label);
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
