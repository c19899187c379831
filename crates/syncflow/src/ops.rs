//! Operator subcommands that work on the database directly, so they also work
//! while no hub is running: `deliveries` (read the transaction table), `replay`
//! and `history` (one record's story).

use anyhow::{bail, Result};
use syncflow_core::{Entity, ENTITIES};
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{DeliveryFilter, DeliveryStatus, Store};

use crate::config::Config;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

/// Fails, listing the known names, unless `name` is a system of the config or
/// of the transaction table.
pub async fn known_system(store: &Store, config: &Config, name: &str) -> Result<()> {
    let mut known: Vec<String> =
        config.systems.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string)).collect();
    known.extend(store.delivery_systems().await?);
    known.sort();
    known.dedup();
    if known.iter().any(|k| k == name) {
        return Ok(());
    }
    let list = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    let hint = if config.systems.is_empty() { " (no config file loaded: --config adds its [[systems]])" } else { "" };
    bail!("unknown system `{name}`; known systems: {list}{hint}")
}

pub async fn deliveries(
    store: Store,
    status: Option<String>,
    system: Option<String>,
    record: Option<String>,
    limit: usize,
    order: Order,
) -> Result<()> {
    let status = match status {
        None => None,
        Some(s) => match DeliveryStatus::parse(&s) {
            Some(st) => Some(st),
            None => bail!("unknown status `{s}` (pending, in_flight, delivered, retrying, dead, skipped)"),
        },
    };
    let filter = DeliveryFilter {
        system,
        status,
        record_id: record,
        limit: limit.clamp(1, 1000) + 1,
        descending: order == Order::Desc,
        ..Default::default()
    };
    let mut shown = store.deliveries(&filter).await?;
    let more = shown.len() > limit;
    shown.truncate(limit);
    println!(
        "{:>8}  {:>8}  {:<12}  {:<10}  {:>8}  {:<24}  {:<31}  REMARKS",
        "ID", "CHANGE", "SYSTEM", "STATUS", "ATTEMPTS", "UPDATED", "RECORD"
    );
    for d in &shown {
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
    let which = if order == Order::Desc { "newest" } else { "oldest" };
    let tail = if more {
        format!("; more match (--limit, or --order {})", if which == "newest" { "asc" } else { "desc" })
    } else {
        String::new()
    };
    eprintln!("{} {which} matching deliveries shown{tail}", shown.len());
    store.close().await;
    Ok(())
}

pub async fn replay(store: Store, system: &str) -> Result<()> {
    let n = store.replay(system, DeliveryStatus::Dead).await?;
    println!("requeued {n} dead deliveries of {system}");
    store.close().await;
    Ok(())
}

/// The entity an id belongs to: named, or known from the id's prefix.
fn entity_of(id: &str, named: Option<&str>) -> Result<&'static Entity> {
    let names = || ENTITIES.iter().map(|e| e.name).collect::<Vec<_>>().join(", ");
    match named {
        Some(n) => match Entity::by_name(n).or_else(|| Entity::by_plural(n)) {
            Some(e) => Ok(e),
            None => bail!("unknown entity `{n}`; entities: {}", names()),
        },
        None => match ENTITIES.iter().find(|e| id.starts_with(&format!("{}_", e.id_prefix))) {
            Some(e) => Ok(e),
            None => bail!("cannot tell the entity of `{id}` from its prefix; name it with --entity ({})", names()),
        },
    }
}

pub async fn history(store: Store, id: &str, entity: Option<&str>, json: bool) -> Result<()> {
    let entity = entity_of(id, entity)?;
    let Some(h) = store.record_history(entity, id).await? else {
        store.close().await;
        bail!("no {} with id `{id}` in this database (it has neither a row nor a change)", entity.name);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&h.to_json())?);
        store.close().await;
        return Ok(());
    }
    match &h.record {
        Some(r) => {
            let state = match &r.deleted_at {
                Some(at) => format!("deleted at {at}"),
                None => format!("updated {}", r.updated_at),
            };
            let label = ["name", "email", "number"]
                .iter()
                .find_map(|f| r.fields.get(*f).and_then(|v| v.as_str()))
                .map(|s| format!(" \"{s}\""))
                .unwrap_or_default();
            println!("{} {id}{label}: version {}, {state}", entity.name, r.version);
        }
        None => println!("{} {id}: no row any more (removed outside syncflow); its changes follow", entity.name),
    }
    if h.links.is_empty() {
        println!("  links: none");
    }
    for l in &h.links {
        let version = l.synced_version.map_or_else(|| "?".to_string(), |v| v.to_string());
        println!(
            "  link: {:<10} {}  (in agreement at version {version}, {})",
            l.system,
            l.external_id,
            ms_to_timestamp(l.updated_at)
        );
    }
    println!();
    println!("{:<24}  {:<8}  {:<10}  {:<12}  {:<44}  REMARKS", "AT", "KIND", "SYSTEM", "OUTCOME", "WHAT");
    let timeline = h.timeline();
    for e in &timeline {
        let row = format!(
            "{:<24}  {:<8}  {:<10}  {:<12}  {:<44}  {}",
            e.at,
            e.kind,
            e.system,
            e.outcome,
            e.reference,
            e.remarks.as_deref().unwrap_or("")
        );
        println!("{}", row.trim_end());
    }
    eprintln!(
        "{} events: {} changes, {} deliveries, {} inward events, {} conflicts",
        timeline.len(),
        h.changes.len(),
        h.deliveries.len(),
        h.inward.len(),
        h.conflicts.len()
    );
    store.close().await;
    Ok(())
}
