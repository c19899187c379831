//! `POST /v1/sync`: a client pushes a batch of edits and pulls what it lacks, in one
//! round trip, with an opaque cursor over the hub's change sequence.
//!
//! Invariants kept here: the request is checked whole before anything is written
//! (malformed JSON → 400, an entity the client may not touch → 403, any invalid
//! item → 422 listing every problem with its index), the batch then commits
//! atomically in the store, and the cursor handed back covers exactly what the
//! response (plus the client's own writes) contains, so a client that stores it
//! and comes back later misses nothing.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use serde_json::{json, Map, Value};
use syncflow_core::clock::{canonical, parse_datetime};
use syncflow_core::{ConflictPolicy, Entity, Op};
use syncflow_store::{client_writer, ItemConflict, ItemOutcome, StoreError, SyncBatch, SyncItem};

use crate::auth::Principal;
use crate::error::ItemFieldError;
use crate::extract::JsonObject;
use crate::{ApiError, AppState};

/// Most items one batch may carry; larger pushes are split by the client.
pub(crate) const MAX_BATCH: usize = 1000;
/// Default and largest number of change-log rows one response covers.
pub(crate) const DEFAULT_PULL: i64 = 500;
pub(crate) const MAX_PULL: i64 = 5000;
/// How far in the future a client's `updated_at` may be: a clock set years ahead
/// would otherwise win every last-writer-wins contest until then.
pub(crate) const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Longest `client_ref` accepted.
const MAX_REF: usize = 128;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/sync", post(sync))
}

/// Encodes a change sequence number as the opaque cursor clients store.
pub fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("syncflow:{seq}"))
}

/// Decodes a cursor made by `encode_cursor`.
pub fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("syncflow:").and_then(|n| n.parse::<i64>().ok()))
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::InvalidCursor("`cursor` is not a cursor this hub issued; sync without one to start over".into())
        })
}

/// Keys a sync request may have.
const REQUEST_KEYS: &[&str] = &["cursor", "changes", "conflict_policy", "limit"];
/// Keys one pushed change may have.
const ITEM_KEYS: &[&str] = &["entity", "op", "id", "client_ref", "fields", "updated_at", "base_version"];

/// A sync request, checked.
struct SyncRequest {
    after: i64,
    policy: ConflictPolicy,
    limit: i64,
    items: Vec<SyncItem>,
}

/// Parses and checks a request body, collecting every problem. `403` wins over
/// `422`: a client must not learn about the validity of data it may not write.
fn parse_request(body: &Map<String, Value>, principal: &Principal) -> Result<SyncRequest, ApiError> {
    let mut errors: Vec<ItemFieldError> = Vec::new();
    let top = |field: &str, message: String| ItemFieldError::new(None, field, message);
    for key in body.keys() {
        if !REQUEST_KEYS.contains(&key.as_str()) {
            let hint = if key == "last_sync_date" || key == "newly_created_records" {
                "; the seed protocol is served at POST /v1/sync/ (with the trailing slash)"
            } else {
                ""
            };
            errors.push(top(key, format!("is not a field of a sync request{hint}")));
        }
    }
    let after = match body.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => decode_cursor(c)?,
        Some(_) => {
            errors.push(top("cursor", "must be a string issued by the hub".into()));
            0
        }
    };
    let policy = match body.get("conflict_policy") {
        None | Some(Value::Null) => principal.default_policy(),
        Some(v) => match v.as_str().and_then(ConflictPolicy::parse) {
            Some(p) => p,
            None => {
                errors.push(top("conflict_policy", "must be last_writer_wins or reject_stale".into()));
                ConflictPolicy::default()
            }
        },
    };
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DEFAULT_PULL,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=MAX_PULL).contains(&n) => n,
            _ => {
                errors.push(top("limit", format!("must be an integer from 1 to {MAX_PULL}")));
                DEFAULT_PULL
            }
        },
    };
    let raw_items: &[Value] = match body.get("changes") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) if items.len() <= MAX_BATCH => items,
        Some(Value::Array(_)) => {
            errors.push(top("changes", format!("must have at most {MAX_BATCH} items; push in several requests")));
            &[]
        }
        Some(_) => {
            errors.push(top("changes", "must be an array".into()));
            &[]
        }
    };

    let now = Utc::now();
    let mut items = Vec::with_capacity(raw_items.len());
    let mut forbidden: Option<ApiError> = None;
    for (index, raw) in raw_items.iter().enumerate() {
        let Some(obj) = raw.as_object() else {
            errors.push(ItemFieldError::new(Some(index), format!("changes[{index}]"), "must be an object"));
            continue;
        };
        let mut fail = |field: &str, message: String| {
            errors.push(ItemFieldError::new(Some(index), format!("changes[{index}].{field}"), message))
        };
        for key in obj.keys() {
            if !ITEM_KEYS.contains(&key.as_str()) {
                fail(key, "is not a field of a sync change".into());
            }
        }
        let entity: Option<&'static Entity> = match obj.get("entity") {
            Some(Value::String(name)) => match Entity::by_name(name) {
                Some(e) => Some(e),
                None => {
                    fail(
                        "entity",
                        format!(
                            "unknown entity `{name}`; known: {}",
                            syncflow_core::ENTITIES.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
                        ),
                    );
                    None
                }
            },
            None | Some(Value::Null) => {
                fail("entity", "is required".into());
                None
            }
            Some(_) => {
                fail("entity", "must be a string".into());
                None
            }
        };
        if let Some(e) = entity {
            if !principal.may_access(e) && forbidden.is_none() {
                forbidden = Some(match principal.forbidden(e) {
                    ApiError::Forbidden(m) => {
                        ApiError::Forbidden(format!("changes[{index}]: {m}; nothing was applied"))
                    }
                    other => other,
                });
            }
        }
        let op = match obj.get("op") {
            None | Some(Value::Null) => Op::Upsert,
            Some(v) => match v.as_str().and_then(Op::parse) {
                Some(op) => op,
                None => {
                    fail("op", "must be upsert or delete".into());
                    Op::Upsert
                }
            },
        };
        let mut text = |key: &str, max: usize| -> Option<String> {
            match obj.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Some(s.clone()),
                Some(_) => {
                    fail(key, format!("must be a string of 1 to {max} characters"));
                    None
                }
            }
        };
        let id = text("id", 64);
        let client_ref = text("client_ref", MAX_REF);
        if id.is_some() && client_ref.is_some() {
            fail("client_ref", "give either id (the hub's) or client_ref (yours), not both".into());
        }
        if op == Op::Delete && id.is_none() && client_ref.is_none() {
            fail("id", "a delete needs id or client_ref".into());
        }
        let fields = match obj.get("fields") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) if op == Op::Delete && !m.is_empty() => {
                fail("fields", "must be absent on a delete".into());
                Map::new()
            }
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                fail("fields", "must be an object".into());
                Map::new()
            }
        };
        let edited_at = match obj.get("updated_at") {
            None | Some(Value::Null) => canonical(now),
            Some(Value::String(s)) => match parse_datetime(s) {
                Some(at) if (at - now).num_seconds() > MAX_CLOCK_SKEW_SECS => {
                    fail(
                        "updated_at",
                        format!("is more than {MAX_CLOCK_SKEW_SECS} s ahead of the hub's clock ({})", canonical(now)),
                    );
                    canonical(now)
                }
                Some(at) => canonical(at),
                None => {
                    fail("updated_at", "must be a date-time such as 2024-05-01T10:00:00Z".into());
                    canonical(now)
                }
            },
            Some(_) => {
                fail("updated_at", "must be a string".into());
                canonical(now)
            }
        };
        let base_version = match obj.get("base_version") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Some(n),
                _ => {
                    fail("base_version", "must be a non-negative integer".into());
                    None
                }
            },
        };
        if let Some(entity) = entity {
            items.push(SyncItem { entity, op, id, client_ref, fields, edited_at, base_version });
        }
    }
    if let Some(f) = forbidden {
        return Err(f);
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidItems(errors));
    }
    Ok(SyncRequest { after, policy, limit, items })
}

/// The store's per-item errors, as paths into the request.
pub(crate) fn batch_errors(e: StoreError, list: &str, strip_fields: bool) -> ApiError {
    match e {
        StoreError::InvalidBatch(items) => ApiError::InvalidItems(
            items
                .into_iter()
                .map(|e| {
                    let field = if strip_fields {
                        e.field.strip_prefix("fields.").unwrap_or(&e.field).to_string()
                    } else {
                        e.field
                    };
                    ItemFieldError::new(Some(e.index), format!("{list}[{}].{field}", e.index), e.message)
                })
                .collect(),
        ),
        other => other.into(),
    }
}

fn conflict_json(c: &ItemConflict) -> Value {
    json!({
        "policy": c.policy.as_str(),
        "winner": c.winner.as_str(),
        "reason": c.reason,
        "losing": {
            "op": c.losing.op.as_str(),
            "updated_at": c.losing.clock.edited_at,
            "writer": c.losing.clock.writer,
            "version": c.losing.version,
            "value": c.losing.value,
        },
    })
}

fn outcome_json(o: &ItemOutcome) -> Value {
    let mut m = Map::new();
    m.insert("index".into(), json!(o.index));
    m.insert("entity".into(), json!(o.entity.name));
    m.insert("status".into(), json!(o.status.as_str()));
    m.insert("id".into(), json!(o.record.as_ref().map(|r| r.id.clone())));
    if let Some(r) = &o.client_ref {
        m.insert("client_ref".into(), json!(r));
    }
    m.insert("version".into(), json!(o.record.as_ref().map(|r| r.version)));
    m.insert("updated_at".into(), json!(o.clock.as_ref().map(|c| c.edited_at.clone())));
    m.insert("writer".into(), json!(o.clock.as_ref().map(|c| c.writer.clone())));
    m.insert("record".into(), o.record.as_ref().map_or(Value::Null, |r| r.to_json()));
    if let Some(c) = &o.conflict {
        m.insert("conflict".into(), conflict_json(c));
    }
    Value::Object(m)
}

/// Counts outcomes by status and conflicts by winner.
fn record_metrics(state: &AppState, outcomes: &[ItemOutcome]) {
    for o in outcomes {
        state.metrics.inc(
            "syncflow_sync_items_total",
            &[("entity", o.entity.name), ("status", o.status.as_str())],
            1.0,
        );
        if let Some(c) = &o.conflict {
            state.metrics.inc(
                "syncflow_sync_conflicts_total",
                &[("entity", o.entity.name), ("policy", c.policy.as_str()), ("winner", c.winner.as_str())],
                1.0,
            );
        }
    }
}

async fn sync(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let client_id = principal.client_id(&headers)?;
    let request = parse_request(&body, &principal)?;
    let batch = SyncBatch { client_id: client_id.clone(), policy: request.policy, items: request.items };
    let outcomes = if batch.items.is_empty() {
        Vec::new()
    } else {
        state.store.apply_sync_batch(&batch).await.map_err(|e| batch_errors(e, "changes", false))?
    };
    record_metrics(&state, &outcomes);
    // Pulled after applying, so the client's own writes are in the log already and
    // are recognised (by writer) as its own rather than sent back.
    let page = state
        .store
        .pull(&client_writer(&client_id), request.after, request.limit as usize, &principal.entities())
        .await?;
    let changes: Vec<Value> = page
        .records
        .iter()
        .map(|p| {
            json!({
                "entity": p.entity.name,
                "id": p.id,
                "op": p.op.as_str(),
                "version": p.version,
                "updated_at": p.clock.edited_at,
                "writer": p.clock.writer,
                "record": p.record,
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "sync",
        "client_id": client_id,
        "conflict_policy": batch.policy.as_str(),
        "cursor": encode_cursor(page.next_after),
        "has_more": page.has_more,
        "results": outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
        "changes": changes,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(seq)).unwrap(), seq);
        }
        for bad in ["", "42", "not a cursor", &URL_SAFE_NO_PAD.encode("syncflow:-1")] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
