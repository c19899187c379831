//! A record's history, for operators: its changes (with origin), its deliveries to
//! each system with every attempt and remark, the inward events that named it, and
//! its links — read in one place (`Store::record_history`) that the API, the CLI
//! and the dashboard share. Also the batched link read for record lists.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;
use syncflow_core::{Change, Entity, Record};

use crate::conflicts::ConflictFilter;
use crate::deliveries::{ms_to_timestamp, Attempt, Delivery, Link, Status};
use crate::inbox::InboxEvent;
use crate::{on_read, Backend, Result, Store};

/// At most this many rows of each kind (the newest) are read for one record.
pub const HISTORY_CAP: usize = 2000;

/// A delivery of one of the record's changes, with its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryHistory {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// Everything the hub knows happened to one record.
#[derive(Debug, Clone, Serialize)]
pub struct RecordHistory {
    pub entity: &'static str,
    pub record_id: String,
    /// The record as it is now (a tombstone when deleted); `None` when the row is
    /// gone (removed by plain SQL) but its changes remain.
    #[serde(skip)]
    pub record: Option<Record>,
    /// External ids per system.
    pub links: Vec<Link>,
    /// Its change-log rows, oldest first.
    pub changes: Vec<Change>,
    /// Deliveries of its changes (and status callbacks about them), oldest first.
    pub deliveries: Vec<DeliveryHistory>,
    /// Inward events (inbox rows) that were applied to it or name one of its
    /// external ids, oldest first.
    pub inward: Vec<InboxEvent>,
    /// Same-field conflicts recorded for it (rows of the `conflicts` table as
    /// JSON, `created_at`/`resolved_at` as timestamps), oldest first.
    pub conflicts: Vec<Value>,
}

/// One line of a record's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Epoch milliseconds (for ordering).
    #[serde(skip)]
    pub at_ms: i64,
    pub at: String,
    /// `change`, `delivery`, `inward` or `conflict`.
    pub kind: &'static str,
    /// The system involved (a change's origin, a delivery's target, an event's source).
    pub system: String,
    /// What happened: `upsert v3`, `delivered`, `retrying`, `applied`, …
    pub outcome: String,
    /// Change seq, delivery id/attempt or event id, for finding the row.
    pub reference: String,
    pub remarks: Option<String>,
}

fn parse_ms(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).map(|t| t.timestamp_millis()).unwrap_or(0)
}

impl RecordHistory {
    /// `"links": {"stripe": {"id": "cus_…", "synced_version": 3, "synced_at": "…"}}`.
    pub fn links_json(&self) -> Value {
        links_json(&self.links)
    }

    /// Every event of the record in time order (ties: changes, then inward events,
    /// then deliveries — the order in which they can happen).
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        let mut out = Vec::new();
        for c in &self.changes {
            let at_ms = parse_ms(&c.created_at);
            out.push(TimelineEntry {
                at_ms,
                at: ms_to_timestamp(at_ms),
                kind: "change",
                system: c.origin.clone(),
                outcome: format!("{} v{}", c.op.as_str(), c.version),
                reference: format!("change {}", c.seq),
                remarks: None,
            });
        }
        for e in &self.inward {
            let at_ms = e.settled_at.unwrap_or(e.received_at);
            out.push(TimelineEntry {
                at_ms,
                at: ms_to_timestamp(at_ms),
                kind: "inward",
                system: e.system.clone(),
                outcome: e.outcome.as_str().to_string(),
                reference: format!("{} {}", e.event_type, e.event_id),
                remarks: e.remarks.clone(),
            });
        }
        for d in &self.deliveries {
            let what = if d.delivery.kind == crate::deliveries::Kind::Callback { "callback" } else { "delivery" };
            for a in &d.attempts {
                out.push(TimelineEntry {
                    at_ms: a.at,
                    at: ms_to_timestamp(a.at),
                    kind: "delivery",
                    system: d.delivery.system.clone(),
                    outcome: a.outcome.clone(),
                    reference: format!(
                        "{what} {} of change {}, attempt {}",
                        d.delivery.id, d.delivery.change_seq, a.attempt
                    ),
                    remarks: a.remarks.clone(),
                });
            }
            // A delivery's current state when no attempt row says it: queued, in
            // flight, or skipped because a newer change superseded it.
            let recorded = d.attempts.iter().any(|a| a.outcome == d.delivery.status.as_str());
            if !recorded && (d.delivery.status == Status::Skipped || !d.delivery.status.is_final()) {
                out.push(TimelineEntry {
                    at_ms: d.delivery.updated_at,
                    at: ms_to_timestamp(d.delivery.updated_at),
                    kind: "delivery",
                    system: d.delivery.system.clone(),
                    outcome: d.delivery.status.as_str().to_string(),
                    reference: format!("{what} {} of change {}", d.delivery.id, d.delivery.change_seq),
                    remarks: d.delivery.remarks.clone(),
                });
            }
        }
        for c in &self.conflicts {
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let at_ms = parse_ms(&text("created_at"));
            let outcome = match c.get("winner").and_then(Value::as_str) {
                Some(w) => format!("{w} won"),
                None => text("status"),
            };
            out.push(TimelineEntry {
                at_ms,
                at: ms_to_timestamp(at_ms),
                kind: "conflict",
                system: text("system"),
                outcome,
                reference: format!("conflict {} on {}", c.get("id").cloned().unwrap_or(Value::Null), text("field")),
                remarks: Some(format!(
                    "hub had {}, {} had {} ({} policy)",
                    c.get("hub_value").cloned().unwrap_or(Value::Null),
                    text("system"),
                    c.get("external_value").cloned().unwrap_or(Value::Null),
                    text("policy")
                )),
            });
        }
        let rank = |k: &str| match k {
            "change" => 0,
            "inward" => 1,
            "conflict" => 2,
            _ => 3,
        };
        out.sort_by_key(|e| (e.at_ms, rank(e.kind)));
        out
    }

    /// The API's JSON: the sections plus the merged timeline.
    pub fn to_json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                json!({"seq": c.seq, "op": c.op, "version": c.version, "origin": c.origin,
                       "created_at": c.created_at, "snapshot": c.snapshot})
            })
            .collect();
        let mut per_system: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for d in &self.deliveries {
            let attempts: Vec<Value> = d
                .attempts
                .iter()
                .map(|a| {
                    json!({"attempt": a.attempt, "outcome": a.outcome, "http_status": a.http_status,
                           "remarks": a.remarks, "duration_ms": a.duration_ms, "at": ms_to_timestamp(a.at)})
                })
                .collect();
            per_system.entry(d.delivery.system.as_str()).or_default().push(json!({
                "id": d.delivery.id, "kind": d.delivery.kind, "change_seq": d.delivery.change_seq,
                "op": d.delivery.op, "status": d.delivery.status, "attempts": d.delivery.attempts,
                "http_status": d.delivery.http_status, "external_id": d.delivery.external_id,
                "remarks": d.delivery.remarks, "created_at": ms_to_timestamp(d.delivery.created_at),
                "finished_at": d.delivery.finished_at.map(ms_to_timestamp), "history": attempts,
            }));
        }
        let inward: Vec<Value> = self
            .inward
            .iter()
            .map(|e| {
                json!({"system": e.system, "event_id": e.event_id, "type": e.event_type, "source": e.source,
                       "external_id": e.external_id, "outcome": e.outcome, "remarks": e.remarks,
                       "received_at": ms_to_timestamp(e.received_at),
                       "settled_at": e.settled_at.map(ms_to_timestamp)})
            })
            .collect();
        json!({
            "object": "history",
            "entity": self.entity,
            "record_id": self.record_id,
            "record": self.record.as_ref().map(Record::to_json),
            "links": self.links_json(),
            "timeline": self.timeline(),
            "changes": changes,
            "deliveries": per_system,
            "inward": inward,
            "conflicts": self.conflicts,
        })
    }
}

/// Links as the record JSON shows them, keyed by system.
pub fn links_json(links: &[Link]) -> Value {
    let mut m = serde_json::Map::new();
    for l in links {
        m.insert(
            l.system.clone(),
            json!({"id": l.external_id, "synced_version": l.synced_version, "synced_at": ms_to_timestamp(l.updated_at)}),
        );
    }
    Value::Object(m)
}

const LINK_COLUMNS: &str = "entity, record_id, system, external_id, synced_version, fingerprint, snapshot, updated_at";

fn decode_link<'r, R>(r: &'r R) -> Result<Link>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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
}

impl Store {
    /// Links of many records of one entity in one query (for a list page), by
    /// record id; records without links are absent from the map. PostgreSQL gets one
    /// array parameter (a parameter list would get a poor generic plan there).
    pub async fn links_of(&self, entity: &Entity, ids: &[String]) -> Result<HashMap<String, Vec<Link>>> {
        let mut out: HashMap<String, Vec<Link>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let links: Vec<Link> = match &self.inner.backend {
            Backend::Postgres(pool) => {
                let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE entity = $1 AND record_id = ANY($2)");
                let rows = sqlx::query(&sql).bind(entity.name).bind(ids.to_vec()).fetch_all(pool).await?;
                rows.iter().map(decode_link).collect::<Result<Vec<_>>>()?
            }
            Backend::Sqlite { read, .. } => {
                let list: Vec<String> = (2..2 + ids.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {LINK_COLUMNS} FROM links WHERE entity = $1 AND record_id IN ({})",
                    list.join(", ")
                );
                let q = ids.iter().fold(sqlx::query(&sql).bind(entity.name), |q, id| q.bind(id.clone()));
                q.fetch_all(read).await?.iter().map(decode_link).collect::<Result<Vec<_>>>()?
            }
        };
        for l in links {
            out.entry(l.record_id.clone()).or_default().push(l);
        }
        Ok(out)
    }

    /// Names of the systems the transaction table has deliveries for (to tell an
    /// operator which names exist when the config is not at hand).
    pub async fn delivery_systems(&self) -> Result<Vec<String>> {
        on_read!(self, |pool, _d| {
            Ok(sqlx::query_scalar("SELECT DISTINCT system FROM deliveries ORDER BY system").fetch_all(pool).await?)
        })
    }

    /// Everything the hub knows happened to one record, or `None` when it has
    /// neither a row nor a change. Reads a fixed number of queries whatever the
    /// record's age (each capped at the newest `HISTORY_CAP` rows).
    pub async fn record_history(&self, entity: &'static Entity, id: &str) -> Result<Option<RecordHistory>> {
        let record = self.get(entity, id).await?;
        let changes = self.changes_of_record(entity.name, id).await?;
        if record.is_none() && changes.is_empty() {
            return Ok(None);
        }
        let links = self.links_of(entity, &[id.to_string()]).await?.remove(id).unwrap_or_default();
        let cap = HISTORY_CAP as i64;
        let (deliveries, attempts, inward) = on_read!(self, |pool, _d| {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM (SELECT * FROM deliveries WHERE entity = $1 AND record_id = $2 \
                 ORDER BY id DESC LIMIT $3) newest ORDER BY id",
                crate::deliveries::DELIVERY_COLUMNS
            ))
            .bind(entity.name)
            .bind(id.to_string())
            .bind(cap)
            .fetch_all(pool)
            .await?;
            let deliveries = rows.iter().map(crate::deliveries::decode_delivery).collect::<Result<Vec<_>>>()?;
            let first = deliveries.first().map_or(i64::MAX, |d| d.id);
            let rows = sqlx::query(
                "SELECT a.delivery_id, a.attempt, a.outcome, a.http_status, a.remarks, a.duration_ms, a.at \
                 FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE d.entity = $1 AND d.record_id = $2 AND d.id >= $3 ORDER BY a.id",
            )
            .bind(entity.name)
            .bind(id.to_string())
            .bind(first)
            .fetch_all(pool)
            .await?;
            let mut attempts: HashMap<i64, Vec<Attempt>> = HashMap::new();
            for r in &rows {
                attempts.entry(r.try_get(0)?).or_default().push(Attempt {
                    attempt: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    http_status: r.try_get(3)?,
                    remarks: r.try_get(4)?,
                    duration_ms: r.try_get(5)?,
                    at: r.try_get(6)?,
                });
            }
            // Events applied to the record, and unsettled ones naming one of its
            // external ids (not yet resolved to it).
            let mut sql = format!(
                "SELECT {} FROM (SELECT * FROM inbox WHERE (record_id = $1 AND (entity IS NULL OR entity = $2))",
                crate::inbox::INBOX_COLUMNS
            );
            for i in 0..links.len() {
                sql.push_str(&format!(" OR (system = ${} AND external_id = ${})", 4 + 2 * i, 5 + 2 * i));
            }
            sql.push_str(" ORDER BY id DESC LIMIT $3) newest ORDER BY id");
            let mut q = sqlx::query(&sql).bind(id.to_string()).bind(entity.name).bind(cap);
            for l in &links {
                q = q.bind(l.system.clone()).bind(l.external_id.clone());
            }
            let inward = q.fetch_all(pool).await?.iter().map(crate::inbox::decode).collect::<Result<Vec<_>>>()?;
            (deliveries, attempts, inward)
        });
        let mut attempts = attempts;
        let deliveries = deliveries
            .into_iter()
            .map(|delivery| DeliveryHistory { attempts: attempts.remove(&delivery.id).unwrap_or_default(), delivery })
            .collect();
        let filter = ConflictFilter { record_id: Some(id.to_string()), limit: 1000, ..Default::default() };
        let mut conflicts: Vec<Value> = Vec::new();
        for c in self.conflicts(&filter).await?.into_iter().rev().filter(|c| c.entity == entity.name) {
            let mut v = serde_json::to_value(&c).map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
            v["created_at"] = Value::String(ms_to_timestamp(c.created_at));
            v["resolved_at"] = c.resolved_at.map_or(Value::Null, |t| Value::String(ms_to_timestamp(t)));
            conflicts.push(v);
        }
        let skip = changes.len().saturating_sub(HISTORY_CAP);
        Ok(Some(RecordHistory {
            entity: entity.name,
            record_id: id.to_string(),
            record,
            links,
            changes: changes.into_iter().skip(skip).collect(),
            deliveries,
            inward,
            conflicts,
        }))
    }
}
