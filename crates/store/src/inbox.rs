//! The inbox: every inward event (webhook, poll) recorded once per (system, event
//! id), then settled with an outcome.
//!
//! Invariants kept here: an event is durable before it is acknowledged (the caller
//! answers 2xx only after `receive` returned); an event is applied at most once (a
//! settled row is never claimed again, and only one holder of an unexpired lease
//! may apply a `received` row); a settled outcome is written in the same
//! transaction as the catalog write it describes (see `Store::apply_inward`).

use serde::Serialize;
use sqlx::Row;

use crate::deliveries::now_ms;
use syncflow_core::sync::NewConflict;

use crate::{on_read, on_write, on_write_one, LinkUpdate, Result, Store};

pub use syncflow_core::sync::InboxOutcome;

/// An event as it arrives, before it is recorded.
#[derive(Debug, Clone)]
pub struct NewInboxEvent {
    pub system: String,
    pub event_id: String,
    pub event_type: String,
    pub entity: Option<String>,
    pub external_id: Option<String>,
    /// The external system's event time, in its own unit (Stripe: seconds).
    pub event_created: i64,
    /// `webhook`, `poll` or `backfill`.
    pub source: String,
    pub payload: String,
}

/// One inbox row.
#[derive(Debug, Clone, Serialize)]
pub struct InboxEvent {
    pub id: i64,
    pub system: String,
    pub event_id: String,
    pub event_type: String,
    pub entity: Option<String>,
    pub external_id: Option<String>,
    pub event_created: i64,
    pub source: String,
    #[serde(skip)]
    pub payload: String,
    pub outcome: InboxOutcome,
    pub record_id: Option<String>,
    pub remarks: Option<String>,
    pub received_at: i64,
    pub settled_at: Option<i64>,
    /// Applies tried so far that failed for a transient reason.
    pub attempts: i64,
}

/// The inbox row an inward write settles: one already recorded (a retry, a
/// recovery), or the event itself, recorded by the write's own transaction — the
/// usual case, so an event costs one transaction: inbox row, record, change, link
/// and outcome commit together.
#[derive(Debug, Clone)]
pub enum InboxRef {
    Id(i64),
    /// Inserted settled; the write fails with `StoreError::DuplicateEvent` (and
    /// writes nothing) when the event is in the inbox already.
    New(Box<NewInboxEvent>),
}

/// How an inward catalog write settles its inbox row and link, in the write's own
/// transaction (`Store::apply_inward`).
#[derive(Debug, Clone)]
pub struct InwardWrite {
    pub system: String,
    /// Inbox row to settle, with its outcome and remarks.
    pub inbox: Option<(InboxRef, InboxOutcome, Option<String>)>,
    /// Link to upsert; its `synced_version` is replaced by the written record's version.
    pub link: Option<LinkUpdate>,
    /// Same-field conflicts this apply met, recorded with it.
    pub conflicts: Vec<NewConflict>,
    /// The hub kept values the system does not have (a conflict the hub won): also
    /// append a `resync:<system>` change so the record's state is pushed back there.
    pub resync: bool,
}

impl InwardWrite {
    /// Settles nothing and links `external_id`: backfill's linking write.
    pub fn link_only(system: &str, link: LinkUpdate) -> InwardWrite {
        InwardWrite { system: system.to_string(), inbox: None, link: Some(link), conflicts: Vec::new(), resync: false }
    }
}

/// Binds a `NewInboxEvent`'s eight columns in `INSERT_SETTLED` / `inbox_receive` order.
macro_rules! bind_event {
    ($q:expr, $e:expr) => {{
        let e: &$crate::NewInboxEvent = $e;
        $q.bind(&e.system)
            .bind(&e.event_id)
            .bind(&e.event_type)
            .bind(e.entity.clone())
            .bind(e.external_id.clone())
            .bind(e.event_created)
            .bind(&e.source)
            .bind(&e.payload)
    }};
}
pub(crate) use bind_event;

/// An event inserted with its outcome; binds as `inbox_record`. No row (and no
/// error) when the (system, event id) is there already.
pub(crate) const INSERT_SETTLED: &str =
    "INSERT INTO inbox (system, event_id, event_type, entity, external_id, event_created, source, payload, \
     received_at, outcome, record_id, remarks, settled_at, attempts, next_attempt_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (system, event_id) DO NOTHING RETURNING id";

pub(crate) const INBOX_COLUMNS: &str =
    "id, system, event_id, event_type, entity, external_id, event_created, source, payload, \
     outcome, record_id, remarks, received_at, settled_at, attempts";

pub(crate) fn decode<'r, R>(row: &'r R) -> Result<InboxEvent>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let outcome: String = row.try_get(9)?;
    let attempts: i64 = row.try_get(14)?;
    Ok(InboxEvent {
        id: row.try_get(0)?,
        system: row.try_get(1)?,
        event_id: row.try_get(2)?,
        event_type: row.try_get(3)?,
        entity: row.try_get(4)?,
        external_id: row.try_get(5)?,
        event_created: row.try_get(6)?,
        source: row.try_get(7)?,
        payload: row.try_get(8)?,
        outcome: InboxOutcome::parse(&outcome)
            .ok_or_else(|| crate::StoreError::Corrupt(format!("inbox outcome `{outcome}`")))?,
        record_id: row.try_get(10)?,
        remarks: row.try_get(11)?,
        received_at: row.try_get(12)?,
        settled_at: row.try_get(13)?,
        attempts,
    })
}

impl Store {
    /// Records an event unless its (system, event id) is already there, and returns
    /// the row with `true` when this call inserted it; the inserter holds the row's
    /// apply lease for `lease_ms` (no separate claim). Once this returns, the event
    /// is durable and may be acknowledged.
    pub async fn inbox_receive(&self, e: &NewInboxEvent, lease_ms: i64) -> Result<(InboxEvent, bool)> {
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let id: Option<i64> = bind_event!(
                sqlx::query_scalar(
                    "INSERT INTO inbox (system, event_id, event_type, entity, external_id, event_created, source, \
                 payload, lease_until, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (system, event_id) DO NOTHING RETURNING id",
                ),
                e
            )
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(pool)
            .await?;
            if let Some(id) = id {
                let row = InboxEvent {
                    id,
                    system: e.system.clone(),
                    event_id: e.event_id.clone(),
                    event_type: e.event_type.clone(),
                    entity: e.entity.clone(),
                    external_id: e.external_id.clone(),
                    event_created: e.event_created,
                    source: e.source.clone(),
                    payload: e.payload.clone(),
                    outcome: InboxOutcome::Received,
                    record_id: None,
                    remarks: None,
                    received_at: now,
                    settled_at: None,
                    attempts: 0,
                };
                return Ok((row, true));
            }
            let row = sqlx::query(&format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE system = $1 AND event_id = $2"))
                .bind(&e.system)
                .bind(&e.event_id)
                .fetch_one(pool)
                .await?;
            Ok((decode(&row)?, false))
        })
    }

    /// Records an event that settles without a catalog write (echo, stale, ignored,
    /// rejected), or that waits for a retry (`outcome` received, with its attempt
    /// and time), in one statement. `None` when the event is in the inbox already.
    pub async fn inbox_record(
        &self,
        e: &NewInboxEvent,
        outcome: InboxOutcome,
        record_id: Option<&str>,
        remarks: Option<&str>,
        retry_at: Option<i64>,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let settled = (outcome != InboxOutcome::Received).then_some(now);
        let id: Option<i64> = on_write_one!(self, |ex| {
            bind_event!(sqlx::query_scalar(INSERT_SETTLED), e)
                .bind(now)
                .bind(outcome.as_str())
                .bind(record_id.map(str::to_string))
                .bind(remarks.map(str::to_string))
                .bind(settled)
                .bind(i64::from(retry_at.is_some()))
                .bind(retry_at)
                .fetch_optional(ex)
                .await?
        });
        Ok(id)
    }

    /// Takes the right to apply a `received` row for `lease_ms`. False when it is
    /// settled, another applier holds an unexpired lease, or its retry is not due
    /// (a re-delivered or re-polled event does not skip the backoff).
    pub async fn inbox_claim(&self, id: i64, lease_ms: i64) -> Result<bool> {
        let now = now_ms();
        on_write!(self, |pool, _d| {
            let n = sqlx::query(
                "UPDATE inbox SET lease_until = $2 WHERE id = $1 AND outcome = 'received' \
                 AND (lease_until IS NULL OR lease_until < $3) AND (next_attempt_at IS NULL OR next_attempt_at <= $3)",
            )
            .bind(id)
            .bind(now + lease_ms)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// Settles a row without a catalog write (echo, stale, ignored, rejected, failed).
    pub async fn inbox_settle(
        &self,
        id: i64,
        outcome: InboxOutcome,
        record_id: Option<&str>,
        remarks: Option<&str>,
    ) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE inbox SET outcome = $2, record_id = COALESCE($3, record_id), remarks = $4, \
                 lease_until = NULL, settled_at = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(outcome.as_str())
            .bind(record_id.map(str::to_string))
            .bind(remarks.map(str::to_string))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A failed apply that may succeed later: the row stays `received`, counts the
    /// attempt, releases its lease and waits until `next_attempt_at` (ms).
    pub async fn inbox_retry(&self, id: i64, next_attempt_at: i64, remarks: &str) -> Result<()> {
        on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE inbox SET attempts = attempts + 1, next_attempt_at = $2, remarks = $3, lease_until = NULL \
                 WHERE id = $1 AND outcome = 'received'",
            )
            .bind(id)
            .bind(next_attempt_at)
            .bind(remarks.to_string())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Puts `rejected`, `dead` (and old `failed`) events of `system` back to be
    /// applied again with a fresh attempt budget — one event (`event_id`) or all.
    pub async fn inbox_replay(&self, system: &str, event_id: Option<&str>) -> Result<u64> {
        let n = on_write!(self, |pool, _d| {
            sqlx::query(
                "UPDATE inbox SET outcome = 'received', attempts = 0, next_attempt_at = NULL, lease_until = NULL, \
                 settled_at = NULL, remarks = COALESCE(remarks, '') || ' [replayed]' \
                 WHERE system = $1 AND ($2 IS NULL OR event_id = $2) AND outcome IN ('rejected', 'dead', 'failed')",
            )
            .bind(system.to_string())
            .bind(event_id.map(str::to_string))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }

    /// The newest event time already applied (or recognised as echo) for one
    /// external object, ignoring row `except`: the yardstick for stale events.
    pub async fn inbox_last_applied(&self, system: &str, external_id: &str, except: i64) -> Result<Option<i64>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar(
                "SELECT MAX(event_created) FROM inbox WHERE system = $1 AND external_id = $2 AND id <> $3 \
                 AND outcome IN ('applied', 'echo')",
            )
            .bind(system.to_string())
            .bind(external_id.to_string())
            .bind(except)
            .fetch_one(pool)
            .await?)
        })
    }

    /// Unsettled rows of `system` whose lease (if any) has run out, oldest first:
    /// what a crash left between acknowledgement and apply.
    pub async fn inbox_unsettled(&self, system: &str, limit: usize) -> Result<Vec<InboxEvent>> {
        let now = now_ms();
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox WHERE system = $1 AND outcome = 'received' \
                 AND (lease_until IS NULL OR lease_until < $2) \
                 AND (next_attempt_at IS NULL OR next_attempt_at <= $2) ORDER BY id LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.to_string())
            .bind(now)
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode).collect()
        })
    }

    /// Inbox rows of `system`, oldest first, after row id `after`.
    pub async fn inbox(&self, system: &str, after: i64, limit: usize) -> Result<Vec<InboxEvent>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox WHERE system = $1 AND id > $2 ORDER BY id LIMIT {}",
                limit.clamp(1, 1000)
            ))
            .bind(system.to_string())
            .bind(after)
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode).collect()
        })
    }

    /// Inbox rows of `system` after row id `after`, oldest first, optionally of one outcome.
    pub async fn inbox_filtered(
        &self,
        system: &str,
        outcome: Option<InboxOutcome>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<InboxEvent>> {
        on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {INBOX_COLUMNS} FROM inbox WHERE system = $1 AND id > $2 AND ($3 IS NULL OR outcome = $3) \
                 ORDER BY id LIMIT {}",
                limit.clamp(1, 1001)
            ))
            .bind(system.to_string())
            .bind(after)
            .bind(outcome.map(|o| o.as_str().to_string()))
            .fetch_all(pool)
            .await?;
            rows.iter().map(decode).collect()
        })
    }

    pub async fn inbox_event(&self, system: &str, event_id: &str) -> Result<Option<InboxEvent>> {
        on_read!(self, |pool, _d| {
            let row = sqlx::query(&format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE system = $1 AND event_id = $2"))
                .bind(system.to_string())
                .bind(event_id.to_string())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(decode).transpose()
        })
    }
}
