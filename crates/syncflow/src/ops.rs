//! Operator subcommands that work on the database directly, so they also work
//! while no hub is running: `deliveries` (read the transaction table) and `replay`.

use anyhow::{bail, Result};
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{DeliveryFilter, DeliveryStatus, Store};

pub async fn deliveries(
    store: Store,
    status: Option<String>,
    system: Option<String>,
    record: Option<String>,
    limit: usize,
) -> Result<()> {
    let status = match status {
        None => None,
        Some(s) => match DeliveryStatus::parse(&s) {
            Some(st) => Some(st),
            None => bail!("unknown status `{s}` (pending, in_flight, delivered, retrying, dead, skipped)"),
        },
    };
    let filter = DeliveryFilter { system, status, record_id: record, limit: 1000, ..Default::default() };
    // Page through everything that matches and print the last `limit`.
    let mut all = Vec::new();
    let mut page = store.deliveries(&filter).await?;
    while !page.is_empty() {
        let after = page.last().map(|d| d.id);
        all.extend(page);
        if all.len() > 100_000 {
            break;
        }
        page = store.deliveries(&DeliveryFilter { after_id: after, ..filter.clone() }).await?;
    }
    let shown = &all[all.len().saturating_sub(limit)..];
    println!(
        "{:>8}  {:>8}  {:<12}  {:<10}  {:>8}  {:<24}  {:<31}  REMARKS",
        "ID", "CHANGE", "SYSTEM", "STATUS", "ATTEMPTS", "UPDATED", "RECORD"
    );
    for d in shown {
        println!(
            "{:>8}  {:>8}  {:<12}  {:<10}  {:>8}  {:<24}  {:<31}  {}",
            d.id,
            d.change_seq,
            d.system,
            d.status.as_str(),
            d.attempts,
            ms_to_timestamp(d.updated_at),
            d.record_id,
            d.remarks.as_deref().unwrap_or("")
        );
    }
    eprintln!("{} of {} matching deliveries shown", shown.len(), all.len());
    store.close().await;
    Ok(())
}

pub async fn replay(store: Store, system: &str) -> Result<()> {
    let n = store.replay(system, DeliveryStatus::Dead).await?;
    println!("requeued {n} dead deliveries of {system}");
    store.close().await;
    Ok(())
}
