//! The `001` seed's sync protocol, served unchanged for its existing clients:
//! `POST /v1/sync/` (`last_sync_date` + `newly_created_records`) and
//! `GET /v1/readings/`, over the `stock_reading` entity.
//!
//! Invariant kept here — the fix over the seed: "changed since `last_sync_date`"
//! is judged by when the *hub* received a change, not by the client-supplied
//! `updated_at`, so an edit pushed late by a client that was offline (with an old
//! `updated_at`) still reaches every other client. The client's `updated_at` is the
//! record's sync clock and decides conflicts (last writer wins), as in the seed.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Map, Value};
use syncflow_core::clock::{canonical, display_canonical, parse_datetime};
use syncflow_core::{Clock, ConflictPolicy, Op, Record, STOCK_READING};
use syncflow_store::{ItemStatus, SyncBatch, SyncItem};

use crate::auth::Principal;
use crate::error::ItemFieldError;
use crate::extract::JsonObject;
use crate::sync::{batch_errors, MAX_BATCH, MAX_CLOCK_SKEW_SECS};
use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sync/", post(seed_sync))
        .route("/v1/readings/", get(readings))
        .route("/v1/readings", get(readings))
}

/// A reading in the seed's shape: `gtin`, `updated_at`, `expiration_date`.
fn reading_json(record: &Record, clock: &Clock) -> Value {
    json!({
        "gtin": record.fields.get("gtin").cloned().unwrap_or(Value::Null),
        "updated_at": display_canonical(&clock.edited_at),
        "expiration_date": record.fields.get("expiration_date").cloned().unwrap_or(Value::Null),
    })
}

fn check_access(principal: &Principal) -> Result<(), ApiError> {
    if principal.may_access(&STOCK_READING) {
        Ok(())
    } else {
        Err(principal.forbidden(&STOCK_READING))
    }
}

/// Reads a required date-time member, recording a problem if it is missing or bad.
fn required_time(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    index: Option<usize>,
    errors: &mut Vec<ItemFieldError>,
) -> Option<chrono::DateTime<Utc>> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            errors.push(ItemFieldError::new(index, path, "is required"));
            None
        }
        Some(Value::String(s)) => {
            let parsed = parse_datetime(s);
            if parsed.is_none() {
                errors.push(ItemFieldError::new(index, path, "must be a date-time such as 2021-11-12T01:11:00"));
            }
            parsed
        }
        Some(_) => {
            errors.push(ItemFieldError::new(index, path, "must be a string"));
            None
        }
    }
}

async fn seed_sync(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    check_access(&principal)?;
    let client_id = principal.client_id(&headers)?;
    let mut errors = Vec::new();
    // Like the seed, unknown members are ignored: its clients send what they send.
    let since = required_time(&body, "last_sync_date", "last_sync_date", None, &mut errors);
    let raw: &[Value] = match body.get("newly_created_records") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(list)) if list.len() <= MAX_BATCH => list,
        Some(Value::Array(_)) => {
            errors.push(ItemFieldError::new(
                None,
                "newly_created_records",
                format!("must have at most {MAX_BATCH} records"),
            ));
            &[]
        }
        Some(_) => {
            errors.push(ItemFieldError::new(None, "newly_created_records", "must be an array"));
            &[]
        }
    };
    let now = Utc::now();
    let mut items = Vec::with_capacity(raw.len());
    for (index, record) in raw.iter().enumerate() {
        let path = |field: &str| format!("newly_created_records[{index}].{field}");
        let Some(obj) = record.as_object() else {
            errors.push(ItemFieldError::new(
                Some(index),
                format!("newly_created_records[{index}]"),
                "must be an object",
            ));
            continue;
        };
        let edited = required_time(obj, "updated_at", &path("updated_at"), Some(index), &mut errors);
        if let Some(at) = edited {
            if (at - now).num_seconds() > MAX_CLOCK_SKEW_SECS {
                errors.push(ItemFieldError::new(
                    Some(index),
                    path("updated_at"),
                    format!("is more than {MAX_CLOCK_SKEW_SECS} s ahead of the hub's clock"),
                ));
            }
        }
        let mut fields = Map::new();
        for key in ["gtin", "expiration_date"] {
            match obj.get(key) {
                None | Some(Value::Null) => errors.push(ItemFieldError::new(Some(index), path(key), "is required")),
                Some(v) => {
                    fields.insert(key.to_string(), v.clone());
                }
            }
        }
        items.push(SyncItem {
            entity: &STOCK_READING,
            op: Op::Upsert,
            id: None,
            client_ref: None,
            fields,
            edited_at: canonical(edited.unwrap_or(now)),
            base_version: None,
        });
    }
    let Some(since) = since.filter(|_| errors.is_empty()) else {
        return Err(ApiError::InvalidItems(errors));
    };

    // The seed's rule is last writer wins by `updated_at`; its clients send no
    // base version, so a client's `reject_stale` setting cannot apply here.
    let batch = SyncBatch { client_id, policy: ConflictPolicy::LastWriterWins, items };
    let outcomes = if batch.items.is_empty() {
        Vec::new()
    } else {
        state.store.apply_sync_batch(&batch).await.map_err(|e| batch_errors(e, "newly_created_records", true))?
    };

    // What the client lacks: readings the hub received after `last_sync_date`,
    // less those this request just settled in the client's favour (it has them),
    // plus those where the hub's newer value beat the client's.
    let mut settled: HashSet<String> = HashSet::new();
    let mut lost: Vec<(Record, Clock)> = Vec::new();
    for o in outcomes {
        let (Some(record), Some(clock)) = (o.record, o.clock) else {
            continue;
        };
        settled.insert(record.id.clone());
        if o.status == ItemStatus::Conflict {
            lost.push((record, clock));
        }
    }
    let mut rows: Vec<(Record, Clock)> = state
        .store
        .records_changed_since(&STOCK_READING, Some(&canonical(since)))
        .await?
        .into_iter()
        .filter(|(r, _)| !settled.contains(&r.id))
        .collect();
    rows.extend(lost);
    // Newest edit first, as the seed orders.
    rows.sort_by(|a, b| b.1.order(&a.1).then_with(|| b.0.id.cmp(&a.0.id)));
    Ok(Json(json!({
        "data": rows.iter().map(|(r, c)| reading_json(r, c)).collect::<Vec<_>>()
    })))
}

async fn readings(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    check_access(&principal)?;
    let rows = state.store.records_changed_since(&STOCK_READING, None).await?;
    Ok(Json(json!({
        "data": rows.iter().map(|(r, c)| reading_json(r, c)).collect::<Vec<_>>()
    })))
}
