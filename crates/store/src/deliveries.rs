//! The transaction table: one delivery per (change, target system), its attempts,
//! and the links between hub records and external ids.
//!
//! Invariants kept here:
//! * the dispatcher's cursor advances in the same transaction that creates the
//!   deliveries for the changes it passed (no change is left without deliveries);
//! * a change is never routed to the system it came from;
//! * per (system, ordering key) only the oldest unfinished delivery can be claimed,
//!   so one record's deliveries to one system happen one at a time, in change order;
//! * a claim is a lease: a delivery whose worker died is claimable again once the
//!   lease expires, and a worker that lost its lease cannot record an outcome.

use serde::Serialize;
use sqlx::Row;
use syncflow_core::Change;

use crate::{on_read, on_write, Backend, Dialect, Result, Store, StoreError};

/// Milliseconds since the epoch, the time unit of the delivery tables.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Renders epoch milliseconds as the hub's RFC 3339 timestamps.
pub fn ms_to_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    InFlight,
    Delivered,
    Retrying,
    Dead,
    Skipped,
    /// A delete the mass-delete breaker holds (`holds` row, side `outward`): never
    /// claimed; released → pending, discarded → skipped.
    Held,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::InFlight,
        Status::Delivered,
        Status::Retrying,
        Status::Dead,
        Status::Skipped,
        Status::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Delivered => "delivered",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Skipped => "skipped",
            Status::Held => "held",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Dead | Status::Skipped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Push a change to the target system.
    Change,
    /// Tell the origin system the final outcome of delivery `subject_id`.
    Callback,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Change => "change",
            Kind::Callback => "callback",
        }
    }
}

/// One row of the transaction table.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub change_seq: i64,
    pub system: String,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<i64>,
    pub entity: String,
    pub record_id: String,
    pub op: String,
    pub status: Status,
    pub attempts: i64,
    pub next_attempt_at: i64,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    pub http_status: Option<i64>,
    pub external_id: Option<String>,
    pub remarks: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// `LANE_LIVE`, `LANE_RETRY` or `LANE_BULK`: whose turn comes first.
    pub lane: i64,
}

/// One try of a delivery, kept as history.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: i64,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub remarks: Option<String>,
    pub duration_ms: i64,
    pub at: i64,
}

/// A system and the entities it subscribes to, as the dispatcher sees it.
#[derive(Debug, Clone)]
pub struct Route {
    pub system: String,
    pub entities: Vec<String>,
}

/// A claimed delivery with what the worker needs to perform it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: Delivery,
    pub change: Change,
    /// Earlier queued deliveries of the same record folded into this one.
    pub superseded: Vec<i64>,
}

/// What a worker reports back.
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: Status,
    pub next_attempt_at: Option<i64>,
    pub http_status: Option<u16>,
    pub external_id: Option<String>,
    pub remarks: Option<String>,
    pub duration_ms: i64,
    /// Link to record (or refresh) when delivered.
    pub link: Option<LinkUpdate>,
    /// When the outcome is final and the change came from a system that wants
    /// status callbacks: that system's name.
    pub callback_to: Option<String>,
}

pub use syncflow_core::sync::{Link, LinkUpdate};

/// Filters for listing deliveries (all optional), paged by id.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub system: Option<String>,
    pub status: Option<Status>,
    pub record_id: Option<String>,
    pub change_seq: Option<i64>,
    /// Continue past this id in the listing direction (`id <` it when descending).
    pub after_id: Option<i64>,
    pub limit: usize,
    /// Newest first.
    pub descending: bool,
}

/// Per-system counts of the transaction table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub pending: i64,
    pub retrying: i64,
    pub in_flight: i64,
    pub dead: i64,
    /// Creation time (ms) of the oldest unfinished delivery.
    pub oldest_unfinished_at: Option<i64>,
}

impl QueueStats {
    pub fn depth(&self) -> i64 {
        self.pending + self.retrying + self.in_flight
    }
}

pub(crate) const DELIVERY_COLUMNS: &str =
    "id, change_seq, system, kind, subject_id, entity, record_id, op, status, attempts, \
     next_attempt_at, lease_owner, http_status, external_id, remarks, created_at, updated_at, finished_at, lane";

const UNFINISHED: &str = "('pending', 'retrying', 'in_flight')";

/// Windows of waiting rows one claim reads at most (each about `limit` rows).
const CLAIM_WINDOWS: usize = 16;

pub(crate) fn decode_delivery<'r, R>(row: &'r R) -> Result<Delivery>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get(3)?;
    let status: String = row.try_get(8)?;
    let subject: i64 = row.try_get(4)?;
    Ok(Delivery {
        id: row.try_get(0)?,
        change_seq: row.try_get(1)?,
        system: row.try_get(2)?,
        kind: if kind == "callback" { Kind::Callback } else { Kind::Change },
        subject_id: (subject != 0).then_some(subject),
        entity: row.try_get(5)?,
        record_id: row.try_get(6)?,
        op: row.try_get(7)?,
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("delivery status `{status}`")))?,
        attempts: row.try_get(9)?,
        next_attempt_at: row.try_get(10)?,
        lease_owner: row.try_get(11)?,
        http_status: row.try_get(12)?,
        external_id: row.try_get(13)?,
        remarks: row.try_get(14)?,
        created_at: row.try_get(15)?,
        updated_at: row.try_get(16)?,
        finished_at: row.try_get(17)?,
        lane: row.try_get(18)?,
    })
}

/// `$from, $from+1, …` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Records (or refreshes) a link: $1 entity, $2 record id, $3 system, $4 external
/// id, $5 synced version, $6 fingerprint, $7 snapshot, $8 time. The table's second
/// unique key (system, entity, external id) keeps it one-to-one. Fenced: a write for
/// an older version than the link holds changes nothing, so a push's late `finish`
/// cannot overwrite what a newer inward apply or push recorded (and vice versa).
pub(crate) const UPSERT_LINK: &str = "INSERT INTO links (entity, record_id, system, external_id, synced_version, \
     fingerprint, snapshot, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (entity, record_id, system) DO UPDATE SET external_id = excluded.external_id, \
     synced_version = excluded.synced_version, fingerprint = excluded.fingerprint, \
     snapshot = excluded.snapshot, updated_at = excluded.updated_at \
     WHERE links.synced_version IS NULL OR links.synced_version <= excluded.synced_version";

/// Origin of a change that re-pushes a record's current state to one system
/// (`resync:stripe`): a conflict the hub won, an operator's resolution.
pub const RESYNC_PREFIX: &str = "resync:";

/// Origin of a change that re-pushes a record's state to one system as bulk work
/// (`reconcile:stripe`): routed like `resync:`, delivered in the bulk lane.
pub const RECONCILE_PREFIX: &str = "reconcile:";

/// Origin of a change that exports a record to one system as bulk work
/// (`backfill:stripe`, from `syncflow backfill`): routed and laned like `reconcile:`.
pub const BACKFILL_PREFIX: &str = "backfill:";

/// Priority lanes: a system's claims take live changes first, then retries, then
/// bulk work (reconcile repairs, backfill exports); a delivery moves to the retry lane on its first
/// retry. Per-record order still holds across lanes (only a record's head is claimed).
pub const LANE_LIVE: i64 = 0;
pub const LANE_RETRY: i64 = 1;
pub const LANE_BULK: i64 = 2;

const INSERT_DELIVERY: &str = "INSERT INTO deliveries (change_seq, system, kind, subject_id, entity, record_id, \
     ordering_key, op, status, next_attempt_at, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9, $9) ON CONFLICT DO NOTHING";
/// `INSERT_DELIVERY` with a lane ($10).
const INSERT_DELIVERY_LANE: &str = "INSERT INTO deliveries (change_seq, system, kind, subject_id, entity, record_id, \
     ordering_key, op, status, next_attempt_at, created_at, updated_at, lane) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9, $9, $10) ON CONFLICT DO NOTHING";

/// A finished delivery's link (when delivered with one) and its status callback (when
/// final and its origin wants one), in the finish's transaction: shared by both
/// backends' `finish_many`.
macro_rules! link_and_callback {
    ($tx:expr, $delivery:expr, $f:expr, $now:expr) => {{
        let (delivery, f): (&Delivery, &Finish) = ($delivery, $f);
        if let Some(link) = &f.link {
            sqlx::query(UPSERT_LINK)
                .bind(&delivery.entity)
                .bind(&delivery.record_id)
                .bind(&delivery.system)
                .bind(&link.external_id)
                .bind(link.synced_version)
                .bind(link.fingerprint.clone())
                .bind(link.snapshot.clone())
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
        if let (Some(origin), true) = (&f.callback_to, f.status.is_final()) {
            sqlx::query(INSERT_DELIVERY)
                .bind(delivery.change_seq)
                .bind(origin)
                .bind(Kind::Callback.as_str())
                .bind(delivery.id)
                .bind(&delivery.entity)
                .bind(&delivery.record_id)
                .bind(format!("callback/{}", delivery.id))
                .bind(&delivery.op)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Store {
    /// Creates deliveries for up to `batch` changes past the dispatch cursor and
    /// advances the cursor, in one transaction. Returns (changes passed, deliveries
    /// created). Several nodes may call this at once: the cursor row is locked.
    pub async fn dispatch(&self, routes: &[Route], batch: usize) -> Result<(usize, usize)> {
        self.dispatch_guarded(routes, &[], batch).await
    }

    /// `dispatch` with the mass-delete breaker's settings per system (`guards`):
    /// hub-side deletions past them are created `held`, each with a `holds` row
    /// (see `outward_holds.rs`). Held deliveries are not counted as created.
    pub async fn dispatch_guarded(
        &self,
        routes: &[Route],
        guards: &[crate::DeleteGuard],
        batch: usize,
    ) -> Result<(usize, usize)> {
        use crate::outward_holds as oh;
        self.sequence().await?;
        let now = now_ms();
        let (passed, created) = on_write!(self, |pool, d| {
            let mut tx = pool.begin().await?;
            let lock = if d == Dialect::Postgres { " FOR UPDATE" } else { "" };
            let cursor: String =
                sqlx::query_scalar(&format!("SELECT value FROM cursors WHERE name = 'dispatch'{lock}"))
                    .fetch_one(&mut *tx)
                    .await?;
            let cursor: i64 = cursor.parse().map_err(|_| StoreError::Corrupt(format!("dispatch cursor `{cursor}`")))?;
            let rows = sqlx::query(
                "SELECT seq, entity, record_id, op, origin FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(cursor)
            .bind(batch as i64)
            .fetch_all(&mut *tx)
            .await?;
            let mut created = 0;
            let mut last = cursor;
            let mut tallies = oh::Tallies::default();
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let entity: String = row.try_get(1)?;
                let record_id: String = row.try_get(2)?;
                let op: String = row.try_get(3)?;
                let origin: String = row.try_get(4)?;
                last = seq;
                // `resync:<system>` re-pushes the record's state to that system only.
                // `reconcile:<system>` and `backfill:<system>` likewise, in the bulk lane.
                let bulk = origin.strip_prefix(RECONCILE_PREFIX).or_else(|| origin.strip_prefix(BACKFILL_PREFIX));
                let only = origin.strip_prefix(RESYNC_PREFIX).or(bulk);
                let lane = if bulk.is_some() { LANE_BULK } else { LANE_LIVE };
                for route in routes.iter().filter(|r| {
                    r.system != origin && only.is_none_or(|s| s == r.system) && r.entities.contains(&entity)
                }) {
                    // The breaker, for hub-side deletions to a guarded system.
                    let guard = guards.iter().find(|g| g.system == route.system);
                    if let Some(g) = guard.filter(|_| op == "delete" && oh::hub_side(&origin, routes)) {
                        if oh::hold_deletion!(tx, tallies, g, now, seq, &entity, &record_id, &origin) {
                            continue;
                        }
                    }
                    created += sqlx::query(INSERT_DELIVERY_LANE)
                        .bind(seq)
                        .bind(&route.system)
                        .bind(Kind::Change.as_str())
                        .bind(0i64)
                        .bind(&entity)
                        .bind(&record_id)
                        .bind(format!("{entity}/{record_id}"))
                        .bind(&op)
                        .bind(now)
                        .bind(lane)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() as usize;
                }
            }
            if last != cursor {
                sqlx::query("UPDATE cursors SET value = $1, updated_at = $2 WHERE name = 'dispatch'")
                    .bind(last.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            (rows.len(), created)
        });
        Ok((passed, created))
    }

    /// The dispatcher's position in the change log.
    pub async fn dispatch_cursor(&self) -> Result<i64> {
        self.cursor("dispatch").await.map(|c| c.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// A named cursor's value (poll cursors of connectors live here too).
    pub async fn cursor(&self, name: &str) -> Result<Option<String>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1")
                .bind(name.to_string())
                .fetch_optional(pool)
                .await?)
        })
    }

    pub async fn set_cursor(&self, name: &str, value: &str) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "INSERT INTO cursors (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name.to_string())
            .bind(value.to_string())
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Claims up to `limit` due deliveries of `system` for `owner` until
    /// `now + lease_ms`. Only the head of each record's queue is eligible; queued
    /// upserts behind it are coalesced: the head and all but the newest are marked
    /// `skipped` (superseded) and the newest is delivered instead.
    ///
    /// A head that was attempted before is never superseded: its push may have
    /// reached the system (a create, under its own idempotency key), so it is
    /// repeated as it was and the newer changes wait their turn. A superseded
    /// delivery still gets its status callback when its origin wants callbacks
    /// (`callbacks`: the systems that have a `callback_url`).
    pub async fn claim(
        &self,
        system: &str,
        owner: &str,
        limit: usize,
        lease_ms: i64,
        callbacks: &[String],
    ) -> Result<Vec<Claimed>> {
        self.claim_lanes(system, owner, limit, lease_ms, callbacks, LANE_BULK).await
    }

    /// `claim`, of waiting deliveries in lanes up to `max_lane` only (`LANE_LIVE`:
    /// the slot the engine keeps for live changes). Expired leases are taken
    /// whatever their lane: they were claimed before anything waiting.
    pub async fn claim_lanes(
        &self,
        system: &str,
        owner: &str,
        limit: usize,
        lease_ms: i64,
        callbacks: &[String],
        max_lane: i64,
    ) -> Result<Vec<Claimed>> {
        let now = now_ms();
        // Nothing to take is answered by a read connection: a worker whose slots are
        // busy with bulk work asks often, and on SQLite its empty claims would queue
        // for the one writer ahead of dispatch and API writes.
        let any: i64 = on_read!(self, |pool, _d| {
            sqlx::query_scalar(
                "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE system = $1 \
                   AND status IN ('pending', 'retrying') AND next_attempt_at <= $2 AND lane <= $3) \
                 OR EXISTS (SELECT 1 FROM deliveries WHERE system = $1 AND status = 'in_flight' \
                   AND lease_until < $2) THEN 1 ELSE 0 END AS BIGINT)",
            )
            .bind(system.to_string())
            .bind(now)
            .bind(max_lane)
            .fetch_one(pool)
            .await?
        });
        if any == 0 {
            return Ok(Vec::new());
        }
        on_write!(self, |pool, d| {
            let mut tx = pool.begin().await?;
            if d == Dialect::Postgres {
                // A claim need not wait for its WAL flush (which, under load, queues
                // behind every other commit's): WAL is flushed in order, so the finish
                // that follows a push makes its claim durable too, and a claim lost in
                // a crash before that only repeats the push — under the same attempt
                // and idempotency key, as after any crash mid-push.
                sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
            }
            let skip_locked = if d == Dialect::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
            // Only a record's head is eligible: the record's earliest unfinished
            // delivery. A correlated scalar subquery (one probe of `deliveries_open`
            // per row) rather than NOT EXISTS: PostgreSQL turned the anti-join into a
            // scan of every open row of the system per candidate when its statistics
            // were stale (right after a bulk load), and claims took seconds.
            let head = format!(
                "d.change_seq = (SELECT e.change_seq FROM deliveries e WHERE e.system = d.system \
                 AND e.ordering_key = d.ordering_key AND e.status IN {UNFINISHED} ORDER BY e.change_seq LIMIT 1)"
            );
            // Pushes whose worker died (lease over) first: they were claimed before
            // anything still waiting. Usually none, found in `deliveries_leased`.
            let mut heads = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS}, ordering_key FROM deliveries d
                 WHERE d.system = $1 AND d.status = 'in_flight' AND d.lease_until < $2 AND {head}
                 ORDER BY d.lease_until LIMIT $3{skip_locked}"
            ))
            .bind(system.to_string())
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
            // Then waiting rows in lane and change order, a window at a time from
            // `deliveries_ready` (ORDER BY + LIMIT on its exact order, so no planner
            // prefers reading the whole backlog and sorting it), keeping the heads.
            // Rows behind a record's unfinished head are stepped over; a window full
            // of them (a hot record's queue) is followed by the next one.
            let mut ready: Vec<i64> = Vec::new();
            // A window the size of the claim: usually every row is a head and one
            // window is the whole read (each row costs a probe).
            let window = limit.clamp(64, 1024);
            let mut after: Option<(i64, i64)> = None;
            for _ in 0..CLAIM_WINDOWS {
                if heads.len() + ready.len() >= limit {
                    break;
                }
                let past = if after.is_some() { "AND (d.lane, d.change_seq) > ($5, $6)" } else { "" };
                let sql = format!(
                    "SELECT d.id, d.lane, d.change_seq, CAST(CASE WHEN {head} THEN 1 ELSE 0 END AS BIGINT)
                     FROM deliveries d
                     WHERE d.system = $1 AND d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $2
                       AND d.lane <= $4 {past}
                     ORDER BY d.lane, d.change_seq LIMIT $3"
                );
                let mut q = sqlx::query(&sql).bind(system.to_string()).bind(now).bind(window as i64).bind(max_lane);
                if let Some((lane, seq)) = after {
                    q = q.bind(lane).bind(seq);
                }
                let rows = q.fetch_all(&mut *tx).await?;
                for row in &rows {
                    if row.try_get::<i64, _>(3)? == 1 {
                        ready.push(row.try_get(0)?);
                    }
                }
                match rows.last() {
                    Some(last) if rows.len() == window => after = Some((last.try_get(1)?, last.try_get(2)?)),
                    _ => break,
                }
            }
            ready.truncate(limit.saturating_sub(heads.len()));
            if !ready.is_empty() {
                // Locked (PostgreSQL) and re-checked: another node may have taken some.
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS}, ordering_key FROM deliveries
                     WHERE id IN ({}) AND status IN ('pending', 'retrying') ORDER BY lane, change_seq{skip_locked}",
                    placeholders(1, ready.len())
                );
                let mut q = sqlx::query(&sql);
                for id in &ready {
                    q = q.bind(id);
                }
                heads.extend(q.fetch_all(&mut *tx).await?);
            }
            if heads.is_empty() {
                return Ok(Vec::new());
            }
            // Set-based from here: a few statements per claim, not a few per delivery.
            let mut items = Vec::with_capacity(heads.len());
            for row in &heads {
                items.push((decode_delivery(row)?, row.try_get::<String, _>(19)?));
            }
            let keys: Vec<&String> = items.iter().filter(|(d, _)| d.kind == Kind::Change).map(|(_, k)| k).collect();
            let mut queued: Vec<(String, Delivery)> = Vec::new();
            if !keys.is_empty() {
                let lock = if d == Dialect::Postgres { " FOR UPDATE" } else { "" };
                // `deliveries_open`'s own predicate: SQLite uses a partial index only
                // for a query that repeats its WHERE, and with the shorter list it read
                // the whole table per claim (a claim's cost grew with the table). The
                // in-flight rows this adds are heads themselves, never "later" below.
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS}, ordering_key FROM deliveries
                     WHERE system = $1 AND status IN {UNFINISHED} AND ordering_key IN ({})
                     ORDER BY change_seq{lock}",
                    placeholders(2, keys.len())
                );
                let mut q = sqlx::query(&sql).bind(system.to_string());
                for k in &keys {
                    q = q.bind(k.as_str());
                }
                for row in q.fetch_all(&mut *tx).await? {
                    queued.push((row.try_get(19)?, decode_delivery(&row)?));
                }
            }
            let mut targets = Vec::with_capacity(items.len());
            for (head, key) in items {
                let later: Vec<&Delivery> = queued
                    .iter()
                    .filter(|(k, d)| head.kind == Kind::Change && *k == key && d.change_seq > head.change_seq)
                    .map(|(_, d)| d)
                    .collect();
                match later.split_last() {
                    Some((newest, between)) if head.attempts == 0 => {
                        let mut superseded = vec![head.id];
                        superseded.extend(between.iter().map(|d| d.id));
                        targets.push(((*newest).clone(), superseded));
                    }
                    _ => targets.push((head, Vec::new())),
                }
            }
            for (target, superseded) in &targets {
                for id in superseded {
                    sqlx::query(
                        "UPDATE deliveries SET status = 'skipped', remarks = $2, lease_owner = NULL, \
                         lease_until = NULL, updated_at = $3, finished_at = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(format!("superseded by change {} (coalesced into delivery {})", target.change_seq, target.id))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if callbacks.is_empty() {
                        continue;
                    }
                    let row = sqlx::query(
                        "SELECT d.change_seq, d.entity, d.record_id, d.op, c.origin FROM deliveries d \
                         JOIN changes c ON c.seq = d.change_seq WHERE d.id = $1",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let origin: String = row.try_get(4)?;
                    if callbacks.contains(&origin) {
                        sqlx::query(INSERT_DELIVERY)
                            .bind(row.try_get::<i64, _>(0)?)
                            .bind(origin)
                            .bind(Kind::Callback.as_str())
                            .bind(id)
                            .bind(row.try_get::<String, _>(1)?)
                            .bind(row.try_get::<String, _>(2)?)
                            .bind(format!("callback/{id}"))
                            .bind(row.try_get::<String, _>(3)?)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            let sql = format!(
                "UPDATE deliveries SET status = 'in_flight', attempts = attempts + 1, lease_owner = $1, \
                 lease_until = $2, updated_at = $3 WHERE id IN ({})",
                placeholders(4, targets.len())
            );
            let mut q = sqlx::query(&sql).bind(owner.to_string()).bind(now + lease_ms).bind(now);
            for (t, _) in &targets {
                q = q.bind(t.id);
            }
            q.execute(&mut *tx).await?;
            let sql = format!(
                "SELECT {} FROM changes WHERE seq IN ({})",
                crate::changes::change_columns(d),
                placeholders(1, targets.len())
            );
            let mut q = sqlx::query(&sql);
            for (t, _) in &targets {
                q = q.bind(t.change_seq);
            }
            let mut changes = std::collections::HashMap::new();
            for row in q.fetch_all(&mut *tx).await? {
                let change = crate::changes::decode_change(&row)?;
                changes.insert(change.seq, change);
            }
            let mut claimed = Vec::with_capacity(targets.len());
            for (mut target, superseded) in targets {
                target.status = Status::InFlight;
                target.attempts += 1;
                target.lease_owner = Some(owner.to_string());
                let change = changes.get(&target.change_seq).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {} names missing change {}", target.id, target.change_seq))
                })?;
                claimed.push(Claimed { delivery: target, change, superseded });
            }
            tx.commit().await?;
            Ok(claimed)
        })
    }

    /// Extends the leases of pushes still in flight, (delivery id, attempt) each, so
    /// a push slower than the lease is not taken over by another worker. Returns how
    /// many were still held.
    pub async fn renew_leases(&self, owner: &str, held: &[(i64, i64)], lease_ms: i64) -> Result<u64> {
        if held.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            let mut n = 0;
            for (id, attempt) in held {
                n += sqlx::query(
                    "UPDATE deliveries SET lease_until = $3 WHERE id = $1 AND attempts = $2 AND lease_owner = $4 \
                     AND status = 'in_flight'",
                )
                .bind(id)
                .bind(attempt)
                .bind(now + lease_ms)
                .bind(owner.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Records a worker's outcome, the attempt history row, the link and the status
    /// callback, in one transaction. Returns false (and changes nothing) when the
    /// worker no longer holds the lease for this attempt (fenced by owner *and*
    /// attempt: a stale worker's late outcome is dropped).
    pub async fn finish(&self, delivery: &Delivery, owner: &str, f: &Finish) -> Result<bool> {
        Ok(self.finish_many(owner, &[(delivery, f)]).await?[0])
    }

    /// `finish` for several deliveries in one transaction (one commit instead of
    /// many when workers are busy). Each item's result says whether it was recorded.
    pub async fn finish_many(&self, owner: &str, items: &[(&Delivery, &Finish)]) -> Result<Vec<bool>> {
        let now = now_ms();
        if let Backend::Postgres(pg) = &self.inner.backend {
            return finish_many_pg(pg, owner, items, now).await;
        }
        on_write!(self, |pool, _d| {
            let mut tx = pool.begin().await?;
            let mut results = Vec::with_capacity(items.len());
            for (delivery, f) in items {
                let finished_at = f.status.is_final().then_some(now);
                let next = f.next_attempt_at.unwrap_or(now);
                let updated = sqlx::query(
                    "UPDATE deliveries SET status = $3, next_attempt_at = $4, http_status = $5, \
                     external_id = COALESCE($6, external_id), remarks = $7, lease_owner = NULL, lease_until = NULL, \
                     updated_at = $8, finished_at = $9, \
                     lane = CASE WHEN $3 = 'retrying' AND lane = 0 THEN 1 ELSE lane END \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'in_flight' AND attempts = $10",
                )
                .bind(delivery.id)
                .bind(owner.to_string())
                .bind(f.status.as_str())
                .bind(next)
                .bind(f.http_status.map(i64::from))
                .bind(f.external_id.clone())
                .bind(f.remarks.clone())
                .bind(now)
                .bind(finished_at)
                .bind(delivery.attempts)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                results.push(updated > 0);
                if updated == 0 {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, http_status, remarks, duration_ms, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(delivery.id)
                .bind(delivery.attempts)
                .bind(f.status.as_str())
                .bind(f.http_status.map(i64::from))
                .bind(f.remarks.clone())
                .bind(f.duration_ms)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                link_and_callback!(tx, delivery, f, now);
            }
            tx.commit().await?;
            Ok(results)
        })
    }

    /// Changes of one record whose deliveries to `system` are unfinished (pending,
    /// retrying, in flight), oldest first: states the system may be receiving now,
    /// or has received without our knowing yet (a push whose outcome is not recorded).
    pub async fn unfinished_changes(&self, system: &str, entity: &str, record_id: &str) -> Result<Vec<Change>> {
        on_read!(self, |pool, d| {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM changes WHERE seq IN (SELECT change_seq FROM deliveries \
                 WHERE system = $1 AND ordering_key = $2 AND kind = 'change' AND status IN {UNFINISHED}) ORDER BY seq",
                crate::changes::change_columns(d)
            ))
            .bind(system.to_string())
            .bind(format!("{entity}/{record_id}"))
            .fetch_all(pool)
            .await?;
            rows.iter().map(crate::changes::decode_change).collect()
        })
    }

    pub async fn delivery(&self, id: i64) -> Result<Option<Delivery>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(decode_delivery).transpose()
        })
    }

    pub async fn attempts(&self, delivery_id: i64) -> Result<Vec<Attempt>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(
                "SELECT attempt, outcome, http_status, remarks, duration_ms, at FROM delivery_attempts \
                 WHERE delivery_id = $1 ORDER BY id",
            )
            .bind(delivery_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Attempt {
                        attempt: r.try_get(0)?,
                        outcome: r.try_get(1)?,
                        http_status: r.try_get(2)?,
                        remarks: r.try_get(3)?,
                        duration_ms: r.try_get(4)?,
                        at: r.try_get(5)?,
                    })
                })
                .collect()
        })
    }

    pub async fn deliveries(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>> {
        on_read!(self, |pool, _d| {
            let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE TRUE");
            let mut texts: Vec<(usize, String)> = Vec::new();
            let mut ints: Vec<(usize, i64)> = Vec::new();
            let mut n = 0;
            let mut add = |sql: &mut String, cond: &str| {
                n += 1;
                sql.push_str(&format!(" AND {cond} ${n}"));
                n
            };
            if let Some(s) = &f.system {
                let i = add(&mut sql, "system =");
                texts.push((i, s.clone()));
            }
            if let Some(s) = f.status {
                let i = add(&mut sql, "status =");
                texts.push((i, s.as_str().to_string()));
            }
            if let Some(r) = &f.record_id {
                let i = add(&mut sql, "record_id =");
                texts.push((i, r.clone()));
            }
            if let Some(c) = f.change_seq {
                let i = add(&mut sql, "change_seq =");
                ints.push((i, c));
            }
            if let Some(a) = f.after_id {
                let i = add(&mut sql, if f.descending { "id <" } else { "id >" });
                ints.push((i, a));
            }
            let dir = if f.descending { " DESC" } else { "" };
            sql.push_str(&format!(" ORDER BY id{dir} LIMIT {}", f.limit.clamp(1, 1000)));
            // Bind in placeholder order.
            let mut binds: Vec<(usize, Result<String, i64>)> =
                texts.into_iter().map(|(i, s)| (i, Ok(s))).chain(ints.into_iter().map(|(i, v)| (i, Err(v)))).collect();
            binds.sort_by_key(|(i, _)| *i);
            let mut q = sqlx::query(&sql);
            for (_, b) in binds {
                q = match b {
                    Ok(s) => q.bind(s),
                    Err(v) => q.bind(v),
                };
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(decode_delivery).collect()
        })
    }

    /// Puts a `dead` delivery back in the queue with a fresh attempt budget. The
    /// attempt history is kept. Returns the delivery, or `None` if it is not dead.
    pub async fn retry_delivery(&self, id: i64) -> Result<Option<Delivery>> {
        let now = now_ms();
        let n = on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2, \
                 finished_at = NULL, remarks = COALESCE(remarks, '') || ' [replayed]' WHERE id = $1 AND status = 'dead'",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Ok(None);
        }
        self.notify_deliveries();
        self.delivery(id).await
    }

    /// Requeues every delivery of `system` in `status` (normally `dead`).
    pub async fn replay(&self, system: &str, status: Status) -> Result<u64> {
        let now = now_ms();
        let n = on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, updated_at = $3, \
                 finished_at = NULL, remarks = COALESCE(remarks, '') || ' [replayed]' \
                 WHERE system = $1 AND status = $2",
            )
            .bind(system.to_string())
            .bind(status.as_str())
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.notify_deliveries();
        Ok(n)
    }

    /// Counts of unfinished and dead deliveries per system.
    pub async fn queue_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(
                "SELECT system, status, COUNT(*), MIN(created_at) FROM deliveries \
                 WHERE status IN ('pending', 'retrying', 'in_flight') GROUP BY system, status \
                 UNION ALL SELECT system, status, COUNT(*), MIN(created_at) FROM deliveries \
                 WHERE status = 'dead' GROUP BY system, status",
            )
            .fetch_all(pool)
            .await?;
            let mut out = std::collections::BTreeMap::<String, QueueStats>::new();
            for r in &rows {
                let system: String = r.try_get(0)?;
                let status: String = r.try_get(1)?;
                let count: i64 = r.try_get(2)?;
                let oldest: Option<i64> = r.try_get(3)?;
                let s = out.entry(system).or_default();
                match status.as_str() {
                    "pending" => s.pending = count,
                    "retrying" => s.retrying = count,
                    "in_flight" => s.in_flight = count,
                    _ => s.dead = count,
                }
                if status != "dead" {
                    s.oldest_unfinished_at = match (s.oldest_unfinished_at, oldest) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            Ok(out)
        })
    }

    pub async fn set_paused(&self, system: &str, paused: bool) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "INSERT INTO system_state (system, paused, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (system) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
            )
            .bind(system.to_string())
            .bind(i64::from(paused))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        self.notify_deliveries();
        Ok(())
    }

    pub async fn paused_systems(&self) -> Result<Vec<String>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT system FROM system_state WHERE paused = 1").fetch_all(pool).await?)
        })
    }

    pub async fn link(&self, entity: &str, record_id: &str, system: &str) -> Result<Option<Link>> {
        self.link_where("entity = $1 AND record_id = $2 AND system = $3", entity, record_id, system).await
    }

    pub async fn link_by_external_id(&self, system: &str, entity: &str, external_id: &str) -> Result<Option<Link>> {
        self.link_where("system = $1 AND entity = $2 AND external_id = $3", system, entity, external_id).await
    }

    async fn link_where(&self, cond: &str, a: &str, b: &str, c: &str) -> Result<Option<Link>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!(
                "SELECT entity, record_id, system, external_id, synced_version, fingerprint, snapshot, updated_at \
                 FROM links WHERE {cond}"
            ))
            .bind(a.to_string())
            .bind(b.to_string())
            .bind(c.to_string())
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(Link {
                    entity: r.try_get(0)?,
                    record_id: r.try_get(1)?,
                    system: r.try_get(2)?,
                    external_id: r.try_get(3)?,
                    synced_version: r.try_get(4)?,
                    fingerprint: r.try_get(5)?,
                    snapshot: r.try_get(6)?,
                    updated_at: r.try_get(7)?,
                })
            })
            .transpose()
        })
    }
}

impl Store {
    /// Change deliveries that reached a final outcome after the position
    /// `(finished_at, id)` and no later than `until` (ms), oldest first: what a
    /// status topic publishes. `until` a little in the past lets transactions that
    /// stamped `finished_at` before committing become visible before the reader
    /// passes them.
    pub async fn finished_after(&self, after: (i64, i64), until: i64, limit: usize) -> Result<Vec<Delivery>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE kind = 'change' \
                 AND status IN ('delivered', 'dead', 'skipped') AND finished_at IS NOT NULL \
                 AND finished_at <= $3 AND (finished_at > $1 OR (finished_at = $1 AND id > $2)) \
                 ORDER BY finished_at, id LIMIT $4"
            ))
            .bind(after.0)
            .bind(after.1)
            .bind(until)
            .bind(limit as i64)
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode_delivery).collect()
        })
    }
}

/// `finish_many` on PostgreSQL, set-based: the fenced status update and the attempt
/// rows are one statement each for the whole batch (arrays, `unnest`), where the
/// per-delivery loop cost three round trips a delivery — the bulk of a PostgreSQL
/// drain's time (SQLite runs the loop in-process, where a statement is cheap).
/// Links and callbacks, which only some deliveries have, stay per item.
async fn finish_many_pg(pg: &sqlx::PgPool, owner: &str, items: &[(&Delivery, &Finish)], now: i64) -> Result<Vec<bool>> {
    let mut tx = pg.begin().await?;
    let ids: Vec<i64> = items.iter().map(|(d, _)| d.id).collect();
    let statuses: Vec<String> = items.iter().map(|(_, f)| f.status.as_str().to_string()).collect();
    let nexts: Vec<i64> = items.iter().map(|(_, f)| f.next_attempt_at.unwrap_or(now)).collect();
    let https: Vec<Option<i64>> = items.iter().map(|(_, f)| f.http_status.map(i64::from)).collect();
    let externals: Vec<Option<String>> = items.iter().map(|(_, f)| f.external_id.clone()).collect();
    let remarks: Vec<Option<String>> = items.iter().map(|(_, f)| f.remarks.clone()).collect();
    let finished: Vec<Option<i64>> = items.iter().map(|(_, f)| f.status.is_final().then_some(now)).collect();
    let attempts: Vec<i64> = items.iter().map(|(d, _)| d.attempts).collect();
    let durations: Vec<i64> = items.iter().map(|(_, f)| f.duration_ms).collect();
    let updated: Vec<i64> = sqlx::query_scalar(
        "UPDATE deliveries d SET status = v.status, next_attempt_at = v.next, http_status = v.http, \
         external_id = COALESCE(v.ext, d.external_id), remarks = v.remarks, lease_owner = NULL, lease_until = NULL, \
         updated_at = $2, finished_at = v.finished, \
         lane = CASE WHEN v.status = 'retrying' AND d.lane = 0 THEN 1 ELSE d.lane END \
         FROM unnest($3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bigint[], \
                     $10::bigint[]) AS v(id, status, next, http, ext, remarks, finished, attempts) \
         WHERE d.id = v.id AND d.lease_owner = $1 AND d.status = 'in_flight' AND d.attempts = v.attempts \
         RETURNING d.id",
    )
    .bind(owner)
    .bind(now)
    .bind(&ids)
    .bind(&statuses)
    .bind(&nexts)
    .bind(&https)
    .bind(&externals)
    .bind(&remarks)
    .bind(&finished)
    .bind(&attempts)
    .fetch_all(&mut *tx)
    .await?;
    if !updated.is_empty() {
        // The same arrays, for the rows the fenced update took ($8).
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, http_status, remarks, duration_ms, at) \
             SELECT v.id, v.attempt, v.outcome, v.http, v.remarks, v.duration, $1 \
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::bigint[]) \
                  AS v(id, attempt, outcome, http, remarks, duration) \
             WHERE v.id = ANY($8::bigint[])",
        )
        .bind(now)
        .bind(&ids)
        .bind(&attempts)
        .bind(&statuses)
        .bind(&https)
        .bind(&remarks)
        .bind(&durations)
        .bind(&updated)
        .execute(&mut *tx)
        .await?;
    }
    let taken: std::collections::HashSet<i64> = updated.into_iter().collect();
    let results: Vec<bool> = ids.iter().map(|id| taken.contains(id)).collect();
    for ((delivery, f), _) in items.iter().zip(&results).filter(|(_, k)| **k) {
        link_and_callback!(tx, delivery, f, now);
    }
    tx.commit().await?;
    Ok(results)
}
