//! Several nodes on one database: who is alive (`nodes`, heartbeats), which system
//! a 429 paused for everyone (`system_throttles`), and which node runs a system's
//! poller (`poll_leases`).
//!
//! Invariants kept here: a node is live while its last heartbeat is younger than the
//! timeout the caller passes (older rows are deleted by any node's heartbeat); a
//! throttle only ever moves later; a poll lease has one holder, and another node
//! can take it only after it expired.

use serde::Serialize;

use crate::deliveries::now_ms;
use crate::{on_read, on_write, Result, Store};

/// A running engine as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    pub host: String,
    pub version: String,
    pub started_at: String,
    /// Milliseconds since the epoch.
    pub last_seen_ms: i64,
}

impl Store {
    /// Records `node`'s heartbeat now, deletes nodes not seen for `timeout_ms`, and
    /// returns the live nodes (this one included), ordered by id.
    pub async fn heartbeat(&self, node: &Node, timeout_ms: i64) -> Result<Vec<Node>> {
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO nodes (id, host, version, started_at, last_seen_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )
            .bind(node.id.clone())
            .bind(node.host.clone())
            .bind(node.version.clone())
            .bind(node.started_at.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM nodes WHERE last_seen_ms < $1").bind(now - timeout_ms).execute(&mut *tx).await?;
            let rows: Vec<(String, String, String, String, i64)> =
                sqlx::query_as("SELECT id, host, version, started_at, last_seen_ms FROM nodes ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(node_from).collect())
        })
    }

    /// Removes a node that stops cleanly, so the others take its share at once.
    pub async fn leave(&self, node_id: &str) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query("DELETE FROM nodes WHERE id = $1").bind(node_id.to_string()).execute(pool).await?;
            sqlx::query("DELETE FROM poll_leases WHERE node = $1").bind(node_id.to_string()).execute(pool).await?;
        });
        Ok(())
    }

    /// The nodes that have a row (live ones, and dead ones no heartbeat has dropped yet).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        on_read!(self, |pool, _d| {
            let rows: Vec<(String, String, String, String, i64)> =
                sqlx::query_as("SELECT id, host, version, started_at, last_seen_ms FROM nodes ORDER BY id")
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().map(node_from).collect())
        })
    }

    /// Pauses `system` for every node until `until_ms` (a later pause wins).
    pub async fn throttle(&self, system: &str, until_ms: i64) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "INSERT INTO system_throttles (system, until_ms) VALUES ($1, $2) \
                 ON CONFLICT (system) DO UPDATE SET until_ms = excluded.until_ms \
                 WHERE system_throttles.until_ms < excluded.until_ms",
            )
            .bind(system.to_string())
            .bind(until_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Systems paused for every node, with the end of the pause (ms), still running.
    pub async fn throttles(&self) -> Result<Vec<(String, i64)>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_as("SELECT system, until_ms FROM system_throttles WHERE until_ms > $1")
                .bind(now_ms())
                .fetch_all(pool)
                .await?)
        })
    }

    /// Takes or renews the poll lease of `system` for `node` for `ttl_ms`; false when
    /// another node holds it and it has not expired.
    pub async fn poll_lease(&self, system: &str, node: &str, ttl_ms: i64) -> Result<bool> {
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let taken = sqlx::query(
                "INSERT INTO poll_leases (system, node, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (system) DO UPDATE SET node = excluded.node, expires_ms = excluded.expires_ms \
                 WHERE poll_leases.node = excluded.node OR poll_leases.expires_ms < $4",
            )
            .bind(system.to_string())
            .bind(node.to_string())
            .bind(now + ttl_ms)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(taken == 1)
        })
    }

    /// The node holding `system`'s poll lease, if it has not expired.
    pub async fn poll_lease_holder(&self, system: &str) -> Result<Option<String>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT node FROM poll_leases WHERE system = $1 AND expires_ms >= $2")
                .bind(system.to_string())
                .bind(now_ms())
                .fetch_optional(pool)
                .await?)
        })
    }
}

fn node_from((id, host, version, started_at, last_seen_ms): (String, String, String, String, i64)) -> Node {
    Node { id, host, version, started_at, last_seen_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestStore;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            host: "h".into(),
            version: "0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            last_seen_ms: 0,
        }
    }

    async fn nodes_come_and_go(t: TestStore) {
        let s = &t.store;
        assert_eq!(s.heartbeat(&node("a"), 60_000).await.unwrap().len(), 1);
        let live = s.heartbeat(&node("b"), 60_000).await.unwrap();
        assert_eq!(live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // `a` stops heart-beating: with a 50 ms timeout, b's next beat drops it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            let live = s.heartbeat(&node("b"), 50).await.unwrap();
            if live.len() == 1 {
                assert_eq!(live[0].id, "b");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a was never dropped");
        }
        s.leave("b").await.unwrap();
        assert!(s.nodes().await.unwrap().is_empty());
    }

    async fn throttles_only_move_later(t: TestStore) {
        let s = &t.store;
        let later = now_ms() + 60_000;
        s.throttle("stripe", later).await.unwrap();
        s.throttle("stripe", later - 30_000).await.unwrap();
        assert_eq!(s.throttles().await.unwrap(), vec![("stripe".to_string(), later)]);
        s.throttle("other", now_ms() - 1).await.unwrap();
        assert_eq!(s.throttles().await.unwrap().len(), 1, "a past pause is not listed");
    }

    async fn one_poll_lease_holder(t: TestStore) {
        let s = &t.store;
        assert!(s.poll_lease("stripe", "a", 60_000).await.unwrap());
        assert!(!s.poll_lease("stripe", "b", 60_000).await.unwrap(), "b must wait for a's lease");
        assert!(s.poll_lease("stripe", "a", 60_000).await.unwrap(), "a renews");
        assert_eq!(s.poll_lease_holder("stripe").await.unwrap().as_deref(), Some("a"));
        assert!(s.poll_lease("stripe", "a", -1).await.unwrap(), "a renews with a lease already over");
        assert!(s.poll_lease("stripe", "b", 60_000).await.unwrap(), "b takes the lapsed lease");
        assert!(!s.poll_lease("stripe", "a", 60_000).await.unwrap());
        s.leave("b").await.unwrap();
        assert!(s.poll_lease("stripe", "a", 60_000).await.unwrap(), "a node leaving frees its leases");
    }

    crate::backend_tests!(nodes_come_and_go, throttles_only_move_later, one_poll_lease_holder);
}
