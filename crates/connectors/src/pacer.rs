//! Lanes and a lane-ordered pacer for kinds whose client paces its own calls.
//!
//! The engine claims a system's work in lane order (live changes, then retries,
//! then bulk work: backfill exports, reconcile repairs) and runs each push inside
//! [`Lane::run`]. A client that spaces its calls under a rate limit (Stripe's, per
//! account) serves the calls waiting for a turn by that lane, not by arrival: bulk
//! pushes already waiting in the pacer would otherwise put a live change behind
//! them, one request interval each.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Whose turn comes first when calls wait for a rate limit (lowest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// A change made now somewhere (and everything not run in a lane: polls,
    /// inward fetches).
    Live,
    /// A delivery that failed before.
    Retry,
    /// Backfill exports and imports, reconcile walks and repairs.
    Bulk,
}

tokio::task_local! {
    static LANE: Lane;
}

impl Lane {
    /// The lane of the call being made (`Live` outside any [`Lane::run`]).
    pub fn current() -> Lane {
        LANE.try_with(|l| *l).unwrap_or(Lane::Live)
    }

    /// Runs `f` in this lane: the calls it makes wait their turn as this lane's.
    pub async fn run<F: Future>(self, f: F) -> F::Output {
        LANE.scope(self, f).await
    }

    /// The store's lane number (`LANE_LIVE` 0, `LANE_RETRY` 1, `LANE_BULK` 2).
    pub fn from_store(lane: i64) -> Lane {
        match lane {
            0 => Lane::Live,
            1 => Lane::Retry,
            _ => Lane::Bulk,
        }
    }
}

/// Spaces calls at most `rate` per second; the earliest lane waiting gets the next
/// turn (first come first served within a lane).
pub struct Pacer {
    interval_ns: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// Earliest start of the next call.
    next: Instant,
    /// The line, in serving order; each waiter is woken alone when it becomes the
    /// head (not all at every turn: a system may have hundreds of calls waiting).
    waiting: BTreeMap<(Lane, u64), Arc<Notify>>,
    tickets: u64,
}

impl State {
    /// Wakes the head of the line (it sleeps until its turn from there).
    fn wake_head(&self) {
        if let Some(head) = self.waiting.values().next() {
            head.notify_one();
        }
    }
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        Self {
            interval_ns: AtomicU64::new(interval_ns(rate)),
            state: Mutex::new(State { next: Instant::now(), waiting: BTreeMap::new(), tickets: 0 }),
        }
    }

    /// Paces at `rate` per second from the next turn on.
    pub fn set_rate(&self, rate: f64) {
        self.interval_ns.store(interval_ns(rate), Ordering::Relaxed);
    }

    fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls waiting for a turn.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Waits for a turn in the current task's lane.
    pub async fn wait(&self) {
        self.wait_in(Lane::current()).await
    }

    /// Waits for a turn in `lane`.
    pub async fn wait_in(&self, lane: Lane) {
        // `notify_one` keeps a permit when nobody is waiting on it yet, so a wake-up
        // between reading the line and waiting is not lost.
        let turn = Arc::new(Notify::new());
        let me = {
            let mut s = self.lock();
            s.tickets += 1;
            let me = (lane, s.tickets);
            s.waiting.insert(me, turn.clone());
            me
        };
        // Leaves the line if the caller gives up (a dropped future), so the
        // next in line is not kept waiting for it.
        let _place = Place { pacer: self, me };
        loop {
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                if s.waiting.keys().next() != Some(&me) {
                    None
                } else if s.next <= now {
                    let interval = self.interval();
                    // Late by less than an interval (a timer's wake-up): keep the
                    // grid, or those delays add up to a slower pace. Later than that
                    // the pacer was idle: start afresh.
                    let start = if now - s.next < interval { s.next } else { now };
                    s.next = start + interval;
                    s.waiting.remove(&me);
                    s.wake_head();
                    return;
                } else {
                    Some(s.next - now)
                }
            };
            match wait {
                // First in line: sleep until the turn (a caller of an earlier lane
                // arriving meanwhile takes it instead; this one is woken again when
                // it is back at the head).
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = turn.notified() => {}
                    }
                }
                None => turn.notified().await,
            }
        }
    }
}

struct Place<'a> {
    pacer: &'a Pacer,
    me: (Lane, u64),
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut s = self.pacer.lock();
        if s.waiting.remove(&self.me).is_some() {
            s.wake_head();
        }
    }
}

fn interval_ns(rate: f64) -> u64 {
    Duration::from_secs_f64(1.0 / rate.max(0.001)).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Which lanes got turns, in order, when `lanes` all wait at once.
    async fn order(pacer: Arc<Pacer>, lanes: &[Lane]) -> Vec<Lane> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Take the first turn so every caller below waits.
        pacer.wait_in(Lane::Live).await;
        let mut tasks = tokio::task::JoinSet::new();
        for lane in lanes {
            let (pacer, tx, lane) = (pacer.clone(), tx.clone(), *lane);
            tasks.spawn(lane.run(async move {
                pacer.wait().await;
                tx.send(lane).unwrap();
            }));
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l);
        }
        got
    }

    #[tokio::test]
    async fn earlier_lanes_get_the_next_turns() {
        let pacer = Arc::new(Pacer::new(50.0));
        let (bulk, live) = (Lane::Bulk, Lane::Live);
        // Spawned bulk first: arrival order would serve them first.
        let lanes = [bulk, bulk, Lane::Retry, bulk, live, live];
        let got = order(pacer, &lanes).await;
        assert_eq!(got, vec![live, live, Lane::Retry, bulk, bulk, bulk]);
    }

    #[tokio::test]
    async fn turns_are_spaced_by_the_rate() {
        let pacer = Pacer::new(100.0);
        let started = Instant::now();
        for _ in 0..21 {
            pacer.wait_in(Lane::Bulk).await;
        }
        // The first turn is immediate, then 20 intervals of 10 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "21 turns in {took:?}");
        assert!(took < Duration::from_millis(400), "21 turns in {took:?}");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_line() {
        let pacer = Arc::new(Pacer::new(20.0));
        pacer.wait_in(Lane::Live).await;
        // Waits for the next turn (50 ms away) but gives up first.
        let gave_up = tokio::time::timeout(Duration::from_millis(5), pacer.wait_in(Lane::Live)).await;
        assert!(gave_up.is_err());
        assert_eq!(pacer.waiting(), 0);
        // The bulk caller behind it is not kept waiting for it.
        tokio::time::timeout(Duration::from_millis(500), pacer.wait_in(Lane::Bulk)).await.expect("a turn");
    }
}
