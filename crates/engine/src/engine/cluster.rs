//! Several nodes, one limit: each engine heartbeats in the `nodes` table, and the
//! live count divides every system's rate limit (the engine's token bucket and a
//! connector's own pacer, `Connector::set_rate_share`); a 429 one node sees pauses
//! the system for all (`system_throttles`); a system's poller runs on the node that
//! holds its poll lease.
//!
//! Invariants kept here: a node that finds others pushes to a rate-limited system
//! only after each of them has had one heartbeat period to count it (so a joining node never adds its share
//! on top of full shares); a node that stops heart-beating is dropped after the timeout, and
//! the others take its share at their next heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncflow_connectors::RateShare;
use syncflow_store::{now_ms, Node};
use tokio::sync::watch;

use super::{Engine, System};

/// How nodes find each other.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// How often a node reports itself and re-reads the others and the throttles.
    pub heartbeat: Duration,
    /// A node not seen for this long is dropped (and its share handed out).
    pub timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(1), timeout: Duration::from_secs(10) }
    }
}

/// The window rate limits are counted in (Stripe's and most others' are per second).
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The pause every node takes after a 429 that named no `Retry-After`.
pub(super) const DEFAULT_THROTTLE: Duration = Duration::from_secs(1);

/// This machine's name, for `GET /v1/nodes`.
fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Engine {
    /// Heartbeats until shutdown, then leaves the table so the others take this
    /// node's share at once.
    pub(super) async fn cluster(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = Node {
            id: self.node.clone(),
            host: host(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at.clone(),
            last_seen_ms: 0,
        };
        let timeout_ms = self.cluster.timeout.as_millis() as i64;
        let mut nodes = 0;
        let mut beats = 0u32;
        let mut first_beat = None;
        while !*shutdown.borrow() {
            match self.store.heartbeat(&me, timeout_ms).await {
                Ok(live) => {
                    beats += 1;
                    if live.len().max(1) != nodes {
                        nodes = live.len().max(1);
                        tracing::info!(node = %self.node, live = nodes, "live nodes changed; sharing rate limits");
                        self.share(RateShare { nodes });
                    }
                    // The first beat announced this node; one period later every node
                    // has counted it and slowed down, and one rate window (1 s) after
                    // that their faster past has left the system's window: then it
                    // may start. Alone it starts at once (a later node waits for it).
                    let first = *first_beat.get_or_insert_with(Instant::now);
                    let settled = first.elapsed() >= self.cluster.heartbeat + RATE_WINDOW;
                    if !*self.joined.borrow() && ((beats == 1 && live.len() <= 1) || (beats >= 2 && settled)) {
                        self.joined.send_replace(true);
                    }
                }
                Err(e) => tracing::warn!(node = %self.node, error = %e, "heartbeat failed; will retry"),
            }
            match self.store.throttles().await {
                Ok(list) => {
                    for (name, until) in list {
                        if let Some(system) = self.systems.iter().find(|s| s.config.name == name) {
                            pause_until(system, until);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read throttles"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cluster.heartbeat) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Err(e) = self.store.leave(&self.node).await {
            tracing::warn!(node = %self.node, error = %e, "could not leave the node table; it will time out");
        }
    }

    /// Divides every system's rate limit by the live nodes.
    fn share(&self, share: RateShare) {
        for system in &self.systems {
            if let (Some(limiter), Some((rate, burst))) = (&system.limiter, system.limit) {
                limiter.lock().unwrap_or_else(|e| e.into_inner()).set_rate(
                    share.rate(rate),
                    share.burst(burst),
                    Instant::now(),
                );
            }
            system.connector.set_rate_share(share);
        }
    }

    /// Waits until the first heartbeats made this node count (bounded by the
    /// timeout, so a database that is down does not hold the worker forever).
    pub(super) async fn wait_joined(&self) {
        let mut joined = self.joined.subscribe();
        let _ = tokio::time::timeout(self.cluster.timeout, joined.wait_for(|j| *j)).await;
    }

    /// A 429: pauses the system here and, through the database, on every node.
    pub(super) async fn throttled(&self, system: &System, retry_after: Option<Duration>) {
        let until = now_ms() + retry_after.unwrap_or(DEFAULT_THROTTLE).as_millis() as i64;
        pause_until(system, until);
        if let Err(e) = self.store.throttle(&system.config.name, until).await {
            tracing::warn!(system = %system.config.name, error = %e, "could not share the 429 with other nodes");
        }
    }

    /// Whether this node may poll `system` now: it holds (or just took) the poll
    /// lease. The lease outlives two poll intervals plus the node timeout, so it
    /// stays with a live holder and passes on within that after the holder stops.
    pub(super) async fn poll_turn(&self, system: &System, every: Duration) -> bool {
        let ttl = (every * 2 + self.cluster.timeout).as_millis() as i64;
        match self.store.poll_lease(&system.config.name, &self.node, ttl).await {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(system = %system.config.name, error = %e, "cannot take the poll lease; skipping a poll");
                false
            }
        }
    }
}

/// Pauses the system's bucket until `until` (ms). A pause overlapping one already
/// applied only adds the part past it, so a batch of 429s (or this node's own pause
/// read back from the table) does not stack up.
fn pause_until(system: &System, until: i64) {
    let before = system.throttled_until.fetch_max(until, Ordering::SeqCst);
    let extra = until - before.max(now_ms());
    if let (Some(limiter), true) = (&system.limiter, extra > 0) {
        limiter.lock().unwrap_or_else(|e| e.into_inner()).pause(Duration::from_millis(extra as u64));
    }
}
