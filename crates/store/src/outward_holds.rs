//! The mass-delete breaker on the hub's side: deletions made in the hub (API
//! deletes, a client's sync batch, a `DELETE FROM customers` captured by the
//! PostgreSQL triggers) held before they reach a system.
//!
//! The dispatcher decides, in the transaction that creates the deliveries
//! (`Store::dispatch_guarded`): it sees every change with its origin exactly once,
//! one node at a time (the cursor row is locked), so the count of one origin's
//! recent deletions is the database's, not one node's guess, and a hold is created
//! with its delivery or not at all. A deletion of a record linked to the system is
//! held when the origin's delete deliveries to that system within the window
//! (this one included) exceed the count *and* the share of the system's links —
//! or while a hold of that (system, origin) is still open. Held, the delivery has
//! status `held` (never claimed) and a `holds` row of side `outward`; release makes
//! it pending, discard skips it (the system keeps its record; the link stays).
//!
//! Deletions that came from a system (origin = a system's name) were checked by
//! the inward breaker when they arrived; repairs, resyncs and backfills (origins
//! with a `prefix:`) are the hub's own work. Neither is counted here.

use std::collections::HashMap;

use crate::deliveries::{now_ms, Route};
use crate::reconcile::Hold;
use crate::{on_write, Result, Store};

/// The breaker's settings for one system (`mass_delete_*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteGuard {
    pub system: String,
    pub count: u64,
    pub share: f64,
    pub window_ms: i64,
}

/// Whether deletions from `origin` are the hub's own (counted by this breaker).
pub(crate) fn hub_side(origin: &str, routes: &[Route]) -> bool {
    !origin.contains(':') && !routes.iter().any(|r| r.system == origin)
}

/// What one dispatch pass knows about a (system, origin): open holds and recent
/// delete deliveries, read once and then counted along.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub open: i64,
    pub recent: i64,
}

/// Per-pass counts: (system, origin) → tally, (system, entity) → links.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    pub origins: HashMap<(String, String), Tally>,
    pub links: HashMap<(String, String), i64>,
}

impl DeleteGuard {
    /// Why the next deletion from `origin` is held, or `None` to deliver it.
    pub(crate) fn verdict(&self, origin: &str, t: &Tally, linked: i64) -> Option<String> {
        if t.open > 0 {
            return Some(format!(
                "{} deletion(s) from {origin} to {} are already held; release or discard them first",
                t.open, self.system
            ));
        }
        let n = t.recent + 1;
        let linked = linked.max(1);
        let share = n as f64 / linked as f64;
        (n as u64 > self.count && share > self.share).then(|| {
            format!(
                "{n} deletions from {origin} of records linked to {} within {} s ({:.0} % of {linked}) exceed the \
                 breaker (> {} and > {:.0} %)",
                self.system,
                self.window_ms / 1000,
                share * 100.0,
                self.count,
                self.share * 100.0
            )
        })
    }
}

/// The breaker's part of a dispatch pass for one hub-side deletion routed to the
/// system of `$g` (a `DeleteGuard`): reads the record's link and, once per pass, the
/// (system, origin) tally and the system's link count (`$tallies`, a `Tallies`);
/// past the guard's settings it creates the `held` delivery and its hold and yields
/// true; otherwise it counts the deletion and yields false (dispatch it as usual).
/// A record not linked there is not counted: its deletion reaches nothing.
macro_rules! hold_deletion {
    ($tx:expr, $tallies:expr, $g:expr, $now:expr, $seq:expr, $entity:expr, $record_id:expr, $origin:expr) => {
        'decided: {
            use $crate::outward_holds as oh;
            let (g, entity, record_id, origin): (&oh::DeleteGuard, &String, &String, &String) =
                ($g, $entity, $record_id, $origin);
            let external_id: Option<String> = sqlx::query_scalar(oh::LINKED_EXTERNAL_ID)
                .bind(entity)
                .bind(record_id)
                .bind(&g.system)
                .fetch_optional(&mut *$tx)
                .await?;
            let Some(external_id) = external_id else { break 'decided false };
            let key = (g.system.clone(), origin.clone());
            if !$tallies.origins.contains_key(&key) {
                let open: i64 =
                    sqlx::query_scalar(oh::OPEN_OUTWARD_HOLDS).bind(&g.system).bind(origin).fetch_one(&mut *$tx).await?;
                let recent: i64 = sqlx::query_scalar(oh::RECENT_DELETES)
                    .bind(&g.system)
                    .bind($now - g.window_ms)
                    .bind(origin)
                    .fetch_one(&mut *$tx)
                    .await?;
                $tallies.origins.insert(key.clone(), oh::Tally { open, recent });
            }
            let lkey = (g.system.clone(), entity.clone());
            if !$tallies.links.contains_key(&lkey) {
                let n: i64 = sqlx::query_scalar(oh::LINKS_OF).bind(&g.system).bind(entity).fetch_one(&mut *$tx).await?;
                $tallies.links.insert(lkey.clone(), n);
            }
            let linked = $tallies.links[&lkey];
            let tally = $tallies.origins.get_mut(&key).expect("inserted above");
            let Some(why) = g.verdict(origin, tally, linked) else {
                tally.recent += 1;
                break 'decided false;
            };
            let id: Option<i64> = sqlx::query_scalar(oh::INSERT_HELD_DELIVERY)
                .bind($seq)
                .bind(&g.system)
                .bind(entity)
                .bind(record_id)
                .bind(format!("{entity}/{record_id}"))
                .bind($now)
                .bind(format!("held by the mass-delete breaker: {why}"))
                .fetch_optional(&mut *$tx)
                .await?;
            if let Some(id) = id {
                sqlx::query(oh::INSERT_OUTWARD_HOLD)
                    .bind(&g.system)
                    .bind(entity)
                    .bind(record_id)
                    .bind(&external_id)
                    .bind(origin)
                    .bind(id)
                    .bind(&why)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                tally.open += 1;
                tracing::warn!(system = %g.system, origin = %origin, record = %record_id,
                    "mass-delete breaker held a deletion: {why}");
            }
            true
        }
    };
}
pub(crate) use hold_deletion;

/// $1 entity, $2 record id, $3 system → the record's external id there.
pub(crate) const LINKED_EXTERNAL_ID: &str =
    "SELECT external_id FROM links WHERE entity = $1 AND record_id = $2 AND system = $3";
/// $1 system, $2 origin → open outward holds.
pub(crate) const OPEN_OUTWARD_HOLDS: &str =
    "SELECT COUNT(*) FROM holds WHERE system = $1 AND origin = $2 AND side = 'outward' AND status = 'held'";
/// $1 system, $2 since (ms), $3 origin → delete deliveries that went (or go) out:
/// held and discarded ones (`skipped`) are not deletions the system saw.
pub(crate) const RECENT_DELETES: &str = "SELECT COUNT(*) FROM deliveries d JOIN changes c ON c.seq = d.change_seq \
     WHERE d.system = $1 AND d.op = 'delete' AND d.created_at > $2 AND d.kind = 'change' \
     AND d.status NOT IN ('held', 'skipped') AND c.origin = $3";
/// $1 system, $2 entity → links.
pub(crate) const LINKS_OF: &str = "SELECT COUNT(*) FROM links WHERE system = $1 AND entity = $2";
/// A held delete delivery: $1 change, $2 system, $3 entity, $4 record id, $5
/// ordering key, $6 time, $7 remarks.
pub(crate) const INSERT_HELD_DELIVERY: &str = "INSERT INTO deliveries (change_seq, system, kind, subject_id, entity, \
     record_id, ordering_key, op, status, next_attempt_at, created_at, updated_at, remarks) \
     VALUES ($1, $2, 'change', 0, $3, $4, $5, 'delete', 'held', $6, $6, $6, $7) \
     ON CONFLICT DO NOTHING RETURNING id";
/// $1 system, $2 entity, $3 record id, $4 external id, $5 origin, $6 delivery, $7 reason, $8 time.
pub(crate) const INSERT_OUTWARD_HOLD: &str = "INSERT INTO holds (system, entity, record_id, external_id, side, \
     origin, delivery_id, status, reason, created_at) VALUES ($1, $2, $3, $4, 'outward', $5, $6, 'held', $7, $8)";

impl Store {
    /// The newest outward hold of a record's deletion to `system`, if any.
    pub async fn outward_hold_of(&self, system: &str, entity: &str, record_id: &str) -> Result<Option<Hold>> {
        Ok(self
            .holds_where(
                "system = $1 AND entity = $2 AND record_id = $3 AND side = 'outward'",
                system,
                entity,
                record_id,
            )
            .await?
            .into_iter()
            .next())
    }

    /// Settles an outward hold: release makes its delivery pending (or skips it when
    /// the hub record is live again: restored since, its state is newer than the
    /// deletion); discard skips it. False when the hold was settled already.
    pub(crate) async fn settle_outward_hold(&self, id: i64, release: bool) -> Result<bool> {
        let now = now_ms();
        let done = on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            let status = if release { "released" } else { "discarded" };
            let held: Option<(Option<i64>, String, String)> = sqlx::query_as(
                "UPDATE holds SET status = $2, settled_at = $3 WHERE id = $1 AND status = 'held' \
                 RETURNING delivery_id, entity, record_id",
            )
            .bind(id)
            .bind(status.to_string())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((Some(delivery), entity, record_id)) = held else { return Ok(false) };
            // A record deleted and then restored (a later upsert, already delivered or
            // queued): the deletion is stale. One primary-key read of the record.
            let live = match syncflow_core::Entity::by_name(&entity) {
                Some(e) => {
                    sqlx::query_scalar::<_, i64>(&format!(
                        "SELECT COUNT(*) FROM {} WHERE id = $1 AND deleted_at IS NULL",
                        e.plural
                    ))
                    .bind(record_id)
                    .fetch_one(&mut *tx)
                    .await?
                        > 0
                }
                None => false,
            };
            let (sql, remarks) = match (release, live) {
                (true, false) => (
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, updated_at = $2, remarks = $3 \
                     WHERE id = $1 AND status = 'held'",
                    format!("released by an operator (hold {id})"),
                ),
                (true, true) => (
                    "UPDATE deliveries SET status = 'skipped', updated_at = $2, finished_at = $2, remarks = $3 \
                     WHERE id = $1 AND status = 'held'",
                    format!("released (hold {id}) but the record was restored since: not deleted"),
                ),
                (false, _) => (
                    "UPDATE deliveries SET status = 'skipped', updated_at = $2, finished_at = $2, remarks = $3 \
                     WHERE id = $1 AND status = 'held'",
                    format!("discarded by an operator (hold {id}): the system keeps the record"),
                ),
            };
            sqlx::query(sql).bind(delivery).bind(now).bind(remarks).execute(&mut *tx).await?;
            tx.commit().await?;
            true
        });
        if done && release {
            self.notify_deliveries();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_count_and_share_or_an_open_hold() {
        let g = DeleteGuard { system: "crm".into(), count: 5, share: 0.1, window_ms: 300_000 };
        let t = |open, recent| Tally { open, recent };
        assert_eq!(g.verdict("api", &t(0, 4), 10), None, "5 is not more than 5");
        assert!(g.verdict("api", &t(0, 5), 10).unwrap().contains("6 deletions from api"));
        assert_eq!(g.verdict("api", &t(0, 5), 100), None, "6 % is not more than 10 %");
        assert!(g.verdict("sql", &t(1, 0), 100).unwrap().contains("already held"));
        let routes = [Route { system: "crm".into(), entities: vec![] }];
        assert!(hub_side("api", &routes) && hub_side("mobile-app", &routes));
        assert!(!hub_side("crm", &routes) && !hub_side("reconcile:crm", &routes));
    }
}
