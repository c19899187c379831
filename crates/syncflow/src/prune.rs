//! `syncflow prune --older-than 7d`: one retention pass now (what `serve` does
//! every ten minutes with the `retention` setting), printing what each table lost.

use anyhow::{anyhow, Context, Result};
use syncflow_engine::{Engine, SystemConfig};
use syncflow_store::Store;

use crate::config::Config;

pub async fn run(store: Store, config: &Config, config_loaded: bool, older_than: &str, batch: usize) -> Result<()> {
    let age = syncflow_engine::retention::parse_age(older_than)
        .map_err(|e| anyhow!("--older-than: {e}"))?
        .ok_or_else(|| anyhow!("--older-than must be a duration above zero, such as 7d"))?;
    // Outcomes a status publisher has not sent yet are kept. With the config, its
    // systems say which publishers run; without it, every publisher that ever ran
    // holds retention back (a stale one only keeps more).
    let status = if config_loaded {
        let systems = config
            .systems
            .iter()
            .cloned()
            .map(SystemConfig::from_table)
            .collect::<Result<Vec<_>, _>>()
            .context("in [[systems]]")?;
        Engine::new(store.clone(), systems).context("in [[systems]]")?.status_systems()
    } else {
        let names = store.cursor_names("status:").await?;
        names.iter().map(|n| n.trim_start_matches("status:").to_string()).collect()
    };
    let started = std::time::Instant::now();
    let pruned = syncflow_engine::retention::prune_once(
        &store,
        age,
        &status,
        batch.clamp(1, 100_000),
        std::time::Duration::ZERO,
    )
    .await
    .context("retention pass stopped")?;
    let horizon = store.change_horizon().await?;
    store.close().await;
    println!("pruned what is older than {}:", syncflow_engine::retention::humantime(age));
    for (table, n) in pruned.tables() {
        println!("  {table:<18} {n}");
    }
    println!(
        "{} rows in {} transactions (longest {} ms), {:.1}s; change-log horizon: seq {horizon}",
        pruned.total(),
        pruned.transactions,
        pruned.longest_write_ms,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
