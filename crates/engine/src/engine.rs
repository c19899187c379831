//! The dispatcher and worker loops.
//!
//! Invariants kept here: a delivery is recorded as delivered only after the
//! connector reported success (at-least-once; connectors make effects idempotent);
//! a retriable failure is retried no sooner than backoff or `Retry-After` allows and
//! becomes `dead` after `max_attempts`; a system's requests never exceed its token
//! bucket; per-record order comes from the store's claim rule.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use syncflow_connectors::http::CallbackSender;
use syncflow_connectors::pacer::Lane;
use syncflow_connectors::{ConfigError, Connector, Outcome, PushRequest};
use syncflow_core::metrics::Registry;
use syncflow_store::deliveries::Kind;
use syncflow_store::{now_ms, Claimed, DeliveryStatus, Finish, Link, Route, Store, LANE_BULK, LANE_LIVE};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::SystemConfig;
use crate::inward::Pipeline;
use crate::policy::{backoff, TokenBucket};

mod cluster;
pub use cluster::ClusterSettings;

/// Changes the dispatcher routes per transaction.
const DISPATCH_BATCH: usize = 1000;
/// Connector calls one claim prepares (deliveries, for kinds that push one at a time).
const CLAIM_BATCH: usize = 256;
/// Most deliveries one claim may take for a batching connector (several calls' worth).
const MAX_CLAIM: usize = 1000;
/// How often idle loops look again (for retries coming due and other nodes' work).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How long shutdown waits for pushes in flight before leaving them to their lease.
const DRAIN: Duration = Duration::from_secs(10);
/// Most outcomes recorded per transaction.
const RECORD_BATCH: usize = 256;

/// An outcome on its way to the recorder, with where to say whether it was recorded.
type Recorded = (syncflow_store::Delivery, Finish, oneshot::Sender<Result<bool, String>>);

/// An outcome sent to the recorder, waiting for its answer.
struct PendingRecord {
    delivery: syncflow_store::Delivery,
    change_created_at: String,
    status: DeliveryStatus,
    answer: Option<oneshot::Receiver<Result<bool, String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("two systems are named `{0}`")]
    DuplicateName(String),
}

struct System {
    config: SystemConfig,
    connector: Arc<dyn Connector>,
    callback: Option<CallbackSender>,
    limiter: Option<Mutex<TokenBucket>>,
    /// The system's whole limit (rate, burst), which live nodes share.
    limit: Option<(f64, u32)>,
    /// End (ms) of the latest 429 pause applied here, this node's or another's.
    throttled_until: AtomicI64,
    slots: Arc<Semaphore>,
    /// Woken by the dispatcher when it created deliveries for this system.
    work: Notify,
    /// Pushes of this node in flight, (delivery id → attempt): their leases are
    /// renewed while the push lasts, so a slow push is not taken over.
    in_flight: Mutex<HashMap<i64, i64>>,
    /// The inward pipeline, for two-way kinds.
    pipeline: Option<Arc<Pipeline>>,
}

pub struct Engine {
    store: Store,
    systems: Vec<Arc<System>>,
    /// Lease owner name of this process.
    node: String,
    metrics: Arc<Registry>,
    cluster: ClusterSettings,
    started_at: String,
    /// True once the other nodes have counted this one (see `cluster`).
    joined: watch::Sender<bool>,
    retention: crate::retention::RetentionSettings,
}

impl Engine {
    pub fn new(store: Store, configs: Vec<SystemConfig>) -> Result<Engine, EngineError> {
        let mut systems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for config in configs {
            if !seen.insert(config.name.clone()) {
                return Err(EngineError::DuplicateName(config.name));
            }
            let connector = syncflow_connectors::build(&config.name, &config.kind, config.settings.clone())?;
            let callback = match &config.callback_url {
                Some(url) => Some(
                    CallbackSender::new(&config.name, url, config.callback_secret.clone())
                        .map_err(|message| ConfigError::Invalid { system: config.name.clone(), message })?,
                ),
                None => None,
            };
            // Unset `rate_limit`: the limit the system documents (Stripe's 25/100 per s).
            let rate = config.rate_limit.or_else(|| connector.default_rate_limit());
            let burst = if config.rate_limit.is_some() { config.burst } else { rate.map_or(1, |r| r.ceil() as u32) };
            let limiter = rate.map(|r| Mutex::new(TokenBucket::new(r, burst)));
            let slots = Arc::new(Semaphore::new(config.concurrency));
            let pipeline = Pipeline::new(store.clone(), config.clone(), connector.clone()).map(Arc::new);
            systems.push(Arc::new(System {
                config,
                connector,
                callback,
                limiter,
                limit: rate.map(|r| (r, burst)),
                throttled_until: AtomicI64::new(0),
                slots,
                work: Notify::new(),
                in_flight: Mutex::new(HashMap::new()),
                pipeline,
            }));
        }
        let node = format!("{}-{}", std::process::id(), syncflow_core::id::new_id("node"));
        Ok(Engine {
            metrics: store.metrics(),
            store,
            systems,
            node,
            cluster: ClusterSettings::default(),
            started_at: syncflow_core::now_timestamp(),
            joined: watch::channel(false).0,
            retention: Default::default(),
        })
    }

    /// How often this node heartbeats and when silent nodes are dropped.
    pub fn with_cluster(mut self, settings: ClusterSettings) -> Self {
        self.cluster = settings;
        self
    }

    /// What the retention loop prunes, and how often (see `retention.rs`).
    pub fn with_retention(mut self, settings: crate::retention::RetentionSettings) -> Self {
        self.retention = settings;
        self
    }

    /// Systems whose delivery outcomes a status publisher sends out (their
    /// `status:<system>` cursors hold retention back).
    pub fn status_systems(&self) -> Vec<String> {
        self.systems.iter().filter(|s| s.connector.status_sink().is_some()).map(|s| s.config.name.clone()).collect()
    }

    /// This node's id (its row in `nodes`, the owner of its leases).
    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn systems(&self) -> impl Iterator<Item = &SystemConfig> {
        self.systems.iter().map(|s| &s.config)
    }

    /// Every system's connector by name.
    pub fn connectors(&self) -> BTreeMap<String, Arc<dyn Connector>> {
        self.systems.iter().map(|s| (s.config.name.clone(), s.connector.clone())).collect()
    }

    /// The inward pipelines of two-way systems by name (the server routes webhooks
    /// to them; backfill and tests drive them directly).
    pub fn pipelines(&self) -> BTreeMap<String, Arc<Pipeline>> {
        self.systems.iter().filter_map(|s| Some((s.config.name.clone(), s.pipeline.clone()?))).collect()
    }

    /// Systems whose changes want status callbacks.
    fn callback_systems(&self) -> Vec<String> {
        self.systems.iter().filter(|s| s.callback.is_some()).map(|s| s.config.name.clone()).collect()
    }

    /// Starts the dispatcher and one worker loop per system. They stop when
    /// `shutdown` turns true; workers then wait (bounded) for pushes in flight.
    pub fn spawn(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        tasks.spawn(self.clone().cluster(shutdown.clone()));
        let retention =
            crate::retention::run(self.store.clone(), self.retention, self.status_systems(), shutdown.clone());
        tasks.spawn(retention);
        if self.systems.is_empty() {
            return tasks;
        }
        tasks.spawn(self.clone().dispatcher(shutdown.clone()));
        // Workers hold the only senders: the recorder ends after the last worker.
        let (record, outcomes) = mpsc::channel(RECORD_BATCH * 4);
        tasks.spawn(self.clone().recorder(outcomes));
        for system in &self.systems {
            tasks.spawn(self.clone().worker(system.clone(), shutdown.clone(), record.clone()));
            tasks.spawn(self.clone().renewer(system.clone(), shutdown.clone()));
            if let Some(pipeline) = &system.pipeline {
                tasks.spawn(self.clone().poller(system.clone(), shutdown.clone()));
                if system.config.reconcile.interval.is_some() {
                    let entities =
                        system.config.entities.iter().filter_map(|e| syncflow_core::Entity::by_name(e)).collect();
                    tasks.spawn(crate::reconcile::sweep(pipeline.clone(), entities, shutdown.clone()));
                }
                tasks.spawn(crate::subscription::run(pipeline.clone(), shutdown.clone()));
            }
            if let Some(sink) = system.connector.status_sink() {
                tasks.spawn(crate::status::run(self.store.clone(), system.config.name.clone(), sink, shutdown.clone()));
            }
        }
        tasks
    }

    /// Records outcomes in batches: under load many deliveries finish together and
    /// share one commit; when idle a batch is a single outcome, so nothing waits.
    async fn recorder(self: Arc<Self>, mut outcomes: mpsc::Receiver<Recorded>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        let _backlog =
            crate::log::BacklogReporter::spawn(self.store.clone(), self.systems().map(|s| s.name.clone()).collect());
        while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let items: Vec<(&syncflow_store::Delivery, &Finish)> = batch.iter().map(|(d, f, _)| (d, f)).collect();
            let result = self.store.finish_many(&self.node, &items).await;
            if let Ok(recorded) = &result {
                crate::log::outcomes(&items, recorded);
            }
            for (i, (_, _, reply)) in batch.drain(..).enumerate() {
                let _ = reply.send(match &result {
                    Ok(r) => Ok(r[i]),
                    Err(e) => Err(e.to_string()),
                });
            }
        }
    }

    /// Runs a system's inward `poll` every interval: event polling where
    /// configured, and always the recovery of inbox rows left unsettled.
    async fn poller(self: Arc<Self>, system: Arc<System>, mut shutdown: watch::Receiver<bool>) {
        let Some(pipeline) = &system.pipeline else { return };
        let every = pipeline.interval();
        self.wait_joined().await;
        while !*shutdown.borrow() {
            // One node at a time polls a system (the poll lease).
            let turn = self.poll_turn(&system, every).await;
            match if turn { pipeline.poll(false).await } else { Ok(Default::default()) } {
                Ok(report) if report.fetched + report.recovered > 0 => {
                    tracing::debug!(system = %system.config.name, ?report, "polled");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(system = %system.config.name, error = %e, "poll failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Renews the leases of this node's pushes in flight every third of a lease.
    async fn renewer(self: Arc<Self>, system: Arc<System>, mut shutdown: watch::Receiver<bool>) {
        let lease_ms = system.config.lease.as_millis() as i64;
        let every = system.config.lease / 3;
        loop {
            // Once stopping, `changed()` does not fire again: the 1 s sleep below paces.
            if !*shutdown.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {}
                }
            }
            let held: Vec<(i64, i64)> =
                system.in_flight.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, *v)).collect();
            if *shutdown.borrow() && held.is_empty() {
                return;
            }
            if let Err(e) = self.store.renew_leases(&self.node, &held, lease_ms).await {
                tracing::warn!(system = %system.config.name, error = %e, "could not renew leases");
            }
            if *shutdown.borrow() {
                // Keep renewing while the drain lets pushes finish.
                tokio::time::sleep(every.min(Duration::from_secs(1))).await;
            }
        }
    }

    async fn dispatcher(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let routes: Vec<Route> = self
            .systems
            .iter()
            .map(|s| Route { system: s.config.name.clone(), entities: s.config.entities.clone() })
            .collect();
        let guards: Vec<_> = self.systems.iter().filter_map(|s| s.config.breaker.guard(&s.config.name)).collect();
        let mut wake = self.store.subscribe();
        while !*shutdown.borrow() {
            match self.store.dispatch_guarded(&routes, &guards, DISPATCH_BATCH).await {
                Ok((passed, created)) => {
                    if created > 0 {
                        self.systems.iter().for_each(|s| s.work.notify_one());
                    }
                    if passed == DISPATCH_BATCH {
                        continue; // more waiting
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dispatch failed; will retry"),
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn worker(
        self: Arc<Self>,
        system: Arc<System>,
        mut shutdown: watch::Receiver<bool>,
        record: mpsc::Sender<Recorded>,
    ) {
        let name = system.config.name.clone();
        let lease_ms = system.config.lease.as_millis() as i64;
        let callbacks = self.callback_systems();
        let batch = system.connector.max_batch().max(1);
        let mut wake = self.store.subscribe();
        let mut in_flight = JoinSet::new();
        // One slot stays free for live changes when the system has more than one:
        // retries and bulk work (a backfill, reconcile repairs) never take the last,
        // so a live change is claimed as soon as it is dispatched instead of after a
        // push ahead of it ends. (A self-pacing client then serves it first too:
        // pushes run in their lane, `syncflow_connectors::pacer`.)
        let reserved = usize::from(system.config.concurrency > 1);
        // Whether a live change may be waiting that no claim has looked for since:
        // claims take live changes first, so one that came back short of its limit,
        // or with other work, left none behind. Anything that may bring work sets it
        // again; until then the kept slot is not claimed for (which, while bulk work
        // keeps the other slots busy, would be a claim per finished push).
        let mut live_unchecked = true;
        if system.limiter.is_some() {
            // A shared limit: start once the other nodes have made room.
            self.wait_joined().await;
        }
        while !*shutdown.borrow() {
            while in_flight.try_join_next().is_some() {}
            let paused = match self.store.paused_systems().await {
                Ok(p) => p.contains(&name),
                Err(e) => {
                    tracing::warn!(system = %name, error = %e, "cannot read system state");
                    true
                }
            };
            // The system asked to be left alone (its API budget is spent).
            let held = system.connector.hold();
            let paused = paused || held.is_some();
            // One slot and one rate-limit token per connector call, which carries up
            // to `batch` deliveries. Tokens are taken before the claim, so waiting for
            // one never eats a claimed delivery's lease.
            let free = system.slots.available_permits();
            // Past the kept slot any lane may be claimed (live still first); the
            // kept slot itself takes live changes only.
            let (calls, max_lane) = if free > reserved {
                (free - reserved, LANE_BULK)
            } else {
                (if live_unchecked { free } else { 0 }, LANE_LIVE)
            };
            let mut tokens = if paused || calls == 0 { 0 } else { self.tokens(&system, calls.min(CLAIM_BATCH)) };
            let claimed = if tokens == 0 {
                Vec::new()
            } else {
                let limit = (tokens * batch).min(MAX_CLAIM);
                match self.store.claim_lanes(&name, &self.node, limit, lease_ms, &callbacks, max_lane).await {
                    Ok(c) => {
                        live_unchecked = c.len() == limit && c.iter().all(|c| c.delivery.lane == LANE_LIVE);
                        c
                    }
                    Err(e) => {
                        tracing::warn!(system = %name, error = %e, "claim failed; will retry");
                        Vec::new()
                    }
                }
            };
            if let Some(limiter) = &system.limiter {
                let unused = tokens.saturating_sub(claimed.len().div_ceil(batch));
                limiter.lock().unwrap_or_else(|e| e.into_inner()).give_back(unused);
                tokens -= unused;
            }
            if claimed.is_empty() {
                let token_wait = if !paused && calls > 0 && tokens == 0 { self.token_wait(&system) } else { held };
                tokio::select! {
                    _ = system.work.notified() => live_unchecked = true,
                    _ = wake.changed() => live_unchecked = true,
                    _ = tokio::time::sleep(token_wait.unwrap_or(IDLE_POLL).min(IDLE_POLL)) => live_unchecked = true,
                    _ = shutdown.changed() => {}
                    // A slot freed up while all (but the live one) were busy.
                    Some(_) = in_flight.join_next(), if free <= reserved => {}
                }
                continue;
            }
            {
                let mut held = system.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for c in &claimed {
                    held.insert(c.delivery.id, c.delivery.attempts);
                }
            }
            let mut claimed = claimed.into_iter().peekable();
            while claimed.peek().is_some() {
                let chunk: Vec<Claimed> = claimed.by_ref().take(batch).collect();
                let Ok(permit) = system.slots.clone().acquire_owned().await else { break };
                let engine = self.clone();
                let system = system.clone();
                let record = record.clone();
                in_flight.spawn(async move {
                    engine.perform(&system, chunk, &record).await;
                    drop(permit);
                });
            }
        }
        let deadline = tokio::time::sleep(DRAIN);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = in_flight.join_next() => if next.is_none() { break },
                _ = &mut deadline => {
                    tracing::warn!(system = %name, left = in_flight.len(), "shutdown: leaving pushes to their lease");
                    break;
                }
            }
        }
    }

    /// Up to `want` tokens of the system's bucket (all of them when unlimited).
    fn tokens(&self, system: &System, want: usize) -> usize {
        let Some(limiter) = &system.limiter else { return want };
        limiter.lock().unwrap_or_else(|e| e.into_inner()).take_up_to(want, Instant::now()).unwrap_or(0)
    }

    /// How long until the system's bucket has a token.
    fn token_wait(&self, system: &System) -> Option<Duration> {
        let limiter = system.limiter.as_ref()?;
        let mut bucket = limiter.lock().unwrap_or_else(|e| e.into_inner());
        match bucket.take_up_to(1, Instant::now()) {
            Ok(n) => {
                bucket.give_back(n);
                None
            }
            Err(wait) => Some(wait),
        }
    }

    /// Pushes one chunk of claimed deliveries (one connector call for a batching
    /// kind) and hands each outcome to the recorder.
    async fn perform(&self, system: &System, chunk: Vec<Claimed>, record: &mpsc::Sender<Recorded>) {
        let name = system.config.name.as_str();
        let started = Instant::now();
        // Links first: a failed read is retried, never taken for "no link" (which
        // would create a second object in the system).
        let links = self.links_for(system, &chunk).await;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; chunk.len()];
        let mut reqs = Vec::new();
        let mut req_index = Vec::new();
        for (i, c) in chunk.iter().enumerate() {
            match (&c.delivery.kind, &links[i]) {
                (Kind::Callback, _) => outcomes[i] = Some(self.send_callback(system, &c.delivery).await),
                (Kind::Change, Err(e)) => {
                    outcomes[i] = Some(Outcome::Retry {
                        http_status: None,
                        reason: format!("could not read the record's link: {e}"),
                        retry_after: None,
                    })
                }
                (Kind::Change, Ok(link)) => {
                    reqs.push(PushRequest {
                        delivery_id: c.delivery.id,
                        attempt: c.delivery.attempts,
                        change: &c.change,
                        link: link.as_ref(),
                    });
                    req_index.push(i);
                }
            }
        }
        if !reqs.is_empty() {
            // In the chunk's most urgent lane: a self-pacing client serves it by that.
            let lane = Lane::from_store(chunk.iter().map(|c| c.delivery.lane).min().unwrap_or_default());
            let pushed = if reqs.len() == 1 {
                vec![lane.run(system.connector.push(reqs[0])).await]
            } else {
                lane.run(system.connector.push_batch(&reqs)).await
            };
            for (k, outcome) in pushed.into_iter().enumerate() {
                outcomes[req_index[k]] = Some(outcome);
            }
        }
        let duration_ms = started.elapsed().as_millis() as i64;
        if let Some(u) = system.connector.api_usage() {
            let labels = [("system", name)];
            self.metrics.set("syncflow_api_usage", &labels, u.used as f64);
            self.metrics.set("syncflow_api_limit", &labels, u.max as f64);
            if let Some(b) = u.budget {
                self.metrics.set("syncflow_api_budget", &labels, b as f64);
            }
        }
        // Send every outcome first, then wait: a batch's outcomes share commits.
        let mut pending = Vec::with_capacity(chunk.len());
        for (c, outcome) in chunk.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| Outcome::Retry {
                http_status: None,
                reason: format!("{name} returned no outcome for this delivery"),
                retry_after: None,
            });
            pending.push(self.record_outcome(system, c, outcome, duration_ms, record).await);
        }
        for p in pending {
            self.recorded(system, p).await;
        }
    }

    /// Each delivery's link to the system (`None` for callbacks and kinds that read
    /// none): one query for a single delivery, one per entity for a batch.
    async fn links_for(&self, system: &System, chunk: &[Claimed]) -> Vec<Result<Option<Link>, String>> {
        let name = system.config.name.as_str();
        let wanted = |c: &Claimed| c.delivery.kind == Kind::Change && system.connector.uses_links();
        if chunk.len() == 1 {
            let c = &chunk[0];
            let link = if wanted(c) {
                self.store.link(&c.delivery.entity, &c.delivery.record_id, name).await.map_err(|e| e.to_string())
            } else {
                Ok(None)
            };
            return vec![link];
        }
        let mut by_entity: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in chunk.iter().filter(|c| wanted(c)) {
            by_entity.entry(c.delivery.entity.as_str()).or_default().push(c.delivery.record_id.clone());
        }
        let mut found: HashMap<(String, String), Link> = HashMap::new();
        for (entity, ids) in by_entity {
            let read = match syncflow_core::Entity::by_name(entity) {
                Some(e) => self.store.links_of(e, &ids).await.map_err(|e| e.to_string()),
                None => Err(format!("unknown entity `{entity}`")),
            };
            match read {
                Ok(map) => {
                    for link in map.into_values().flatten().filter(|l| l.system == name) {
                        found.insert((link.entity.clone(), link.record_id.clone()), link);
                    }
                }
                // A failed read is a retry for every delivery of the batch, never "no link".
                Err(e) => return chunk.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        chunk
            .iter()
            .map(|c| Ok(found.remove(&(c.delivery.entity.clone(), c.delivery.record_id.clone())).filter(|_| wanted(c))))
            .collect()
    }

    /// Turns a push outcome into the delivery's next state and sends it to the
    /// recorder; `recorded` waits for the answer.
    async fn record_outcome(
        &self,
        system: &System,
        claimed: Claimed,
        outcome: Outcome,
        duration_ms: i64,
        record: &mpsc::Sender<Recorded>,
    ) -> PendingRecord {
        let Claimed { delivery, change, superseded } = claimed;
        let name = system.config.name.clone();
        if !superseded.is_empty() {
            self.metrics.inc(
                "syncflow_deliveries_total",
                &[("system", &name), ("outcome", "skipped")],
                superseded.len() as f64,
            );
        }
        let callback_to = self
            .systems
            .iter()
            .find(|s| s.config.name == change.origin && s.callback.is_some())
            .filter(|_| delivery.kind == Kind::Change)
            .map(|s| s.config.name.clone());
        let mut finish = Finish {
            status: DeliveryStatus::Delivered,
            next_attempt_at: None,
            http_status: None,
            external_id: None,
            remarks: None,
            duration_ms,
            link: None,
            callback_to,
        };
        match outcome {
            Outcome::Delivered { http_status, external_id, link } => {
                finish.http_status = http_status;
                finish.external_id = external_id;
                finish.link = link;
                if !superseded.is_empty() {
                    finish.remarks =
                        Some(format!("delivered the latest state; coalesced {} queued change(s)", superseded.len()));
                }
            }
            Outcome::Retry { http_status, reason, retry_after } => {
                finish.http_status = http_status;
                if http_status == Some(429) {
                    self.metrics.inc("syncflow_delivery_throttled_total", &[("system", &name)], 1.0);
                    // Every node pauses, not only this one.
                    self.throttled(system, retry_after).await;
                }
                if delivery.attempts >= system.config.max_attempts {
                    finish.status = DeliveryStatus::Dead;
                    finish.remarks = Some(format!("{reason} — gave up after {} attempts", delivery.attempts));
                } else {
                    let wait = retry_after.unwrap_or_else(|| {
                        backoff(delivery.attempts, system.config.backoff_initial, system.config.backoff_max)
                    });
                    finish.status = DeliveryStatus::Retrying;
                    finish.next_attempt_at = Some(now_ms() + wait.as_millis() as i64);
                    finish.remarks = Some(reason);
                    self.metrics.inc("syncflow_delivery_retries_total", &[("system", &name)], 1.0);
                }
            }
            Outcome::Reject { http_status, reason } => {
                finish.http_status = http_status;
                finish.status = DeliveryStatus::Dead;
                finish.remarks = Some(reason);
            }
        }
        let (reply, answer) = oneshot::channel();
        let status = finish.status;
        let sent = record.send((delivery.clone(), finish, reply)).await.is_ok();
        PendingRecord { delivery, change_created_at: change.created_at, status, answer: sent.then_some(answer) }
    }

    async fn recorded(&self, system: &System, p: PendingRecord) {
        let outcome = match p.answer {
            Some(answer) => answer.await.unwrap_or_else(|_| Err("recorder stopped".into())),
            None => Err("recorder stopped".into()),
        };
        system.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.delivery.id);
        let name = system.config.name.as_str();
        let delivery = &p.delivery;
        match outcome {
            Ok(true) => {
                self.metrics.inc("syncflow_deliveries_total", &[("system", name), ("outcome", p.status.as_str())], 1.0);
                if p.status == DeliveryStatus::Delivered && delivery.kind == Kind::Change {
                    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&p.change_created_at) {
                        let lag = (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0);
                        self.metrics.observe(
                            "syncflow_delivery_latency_seconds",
                            &[("system", name)],
                            lag as f64 / 1e6,
                        );
                    }
                }
            }
            Ok(false) => {
                tracing::warn!(system = name, delivery = delivery.id, "lease lost before the outcome was recorded")
            }
            Err(e) => {
                tracing::error!(system = name, delivery = delivery.id, error = %e, "could not record outcome; the lease will expire and it will be retried")
            }
        }
    }

    async fn send_callback(&self, system: &System, callback: &syncflow_store::Delivery) -> Outcome {
        let Some(sender) = &system.callback else {
            return Outcome::Reject { http_status: None, reason: "system has no callback_url any more".into() };
        };
        let subject = match callback.subject_id {
            Some(id) => self.store.delivery(id).await,
            None => Ok(None),
        };
        let subject = match subject {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Outcome::Reject {
                    http_status: None,
                    reason: "the delivery reported on no longer exists".into(),
                }
            }
            Err(e) => return Outcome::Retry { http_status: None, reason: format!("database: {e}"), retry_after: None },
        };
        let payload = json!({
            "type": format!("delivery.{}", subject.status.as_str()),
            "delivery": {
                "id": subject.id, "system": subject.system, "status": subject.status, "attempts": subject.attempts,
                "http_status": subject.http_status, "external_id": subject.external_id, "remarks": subject.remarks,
            },
            "change": {"seq": subject.change_seq, "entity": subject.entity, "record_id": subject.record_id, "op": subject.op},
        });
        sender.send(callback.id, &payload).await
    }
}
