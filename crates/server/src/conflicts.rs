//! Conflicts and the inbox for operators: same-field conflicts as data (list,
//! resolve — the resolution flows out as an ordinary change), and inward events by
//! system and outcome with replay of the ones that were rejected or went dead.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use syncflow_core::Entity;
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{Conflict, ConflictFilter, InboxEvent, InboxOutcome, InwardWrite};

use crate::extract::{JsonObject, QueryMap};
use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/conflicts", get(list))
        .route("/v1/conflicts/{id}", get(show))
        .route("/v1/conflicts/{id}/resolve", post(resolve))
        .route("/v1/inbox", get(inbox))
        .route("/v1/systems/{name}/inbox/replay", post(replay_inbox))
}

pub(crate) fn conflict_json(c: &Conflict) -> Value {
    json!({
        "id": c.id, "object": "conflict", "system": c.system, "entity": c.entity, "record_id": c.record_id,
        "field": c.field, "hub_value": c.hub_value, "external_value": c.external_value, "policy": c.policy,
        "winner": c.winner, "status": c.status, "resolution": c.resolution, "inbox_id": c.inbox_id,
        "created_at": ms_to_timestamp(c.created_at), "resolved_at": c.resolved_at.map(ms_to_timestamp),
    })
}

fn id_param(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("no conflict `{id}`")))
}

async fn list(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    let status = match q.get("status") {
        None => None,
        Some(s @ ("open" | "resolved")) => Some(s.to_string()),
        Some(_) => return Err(ApiError::BadRequest("`status` must be open or resolved".into())),
    };
    let limit = q.number("limit", 50, 1, 500)? as usize;
    let before = q.get("before").map(|b| b.parse::<i64>()).transpose();
    let before_id = before.map_err(|_| ApiError::BadRequest("`before` must be a conflict id".into()))?;
    let filter = ConflictFilter {
        system: q.get("system").map(str::to_string),
        record_id: q.get("record_id").map(str::to_string),
        status,
        before_id,
        limit: limit + 1,
    };
    let mut rows = state.store.conflicts(&filter).await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(conflict_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_before": rows.last().filter(|_| has_more).map(|c| c.id),
    })))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let c =
        state.store.conflict(id_param(&id)?).await?.ok_or_else(|| ApiError::NotFound(format!("no conflict `{id}`")))?;
    Ok(Json(conflict_json(&c)))
}

/// `{"keep": "hub" | "external"}` or `{"keep": "value", "value": …}`. Keeping the
/// external value or a new value writes it to the hub record (an ordinary change,
/// delivered everywhere); keeping the hub's re-pushes it to the conflicting system.
pub(crate) async fn resolve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let c =
        state.store.conflict(id_param(&id)?).await?.ok_or_else(|| ApiError::NotFound(format!("no conflict `{id}`")))?;
    if c.status != "open" {
        return Err(ApiError::Conflict(format!("conflict {id} is already resolved")));
    }
    let entity = Entity::by_name(&c.entity).ok_or_else(|| ApiError::Internal(format!("entity `{}`", c.entity)))?;
    let (winner, value) = match body["keep"].as_str() {
        Some("hub") => ("hub", None),
        Some("external") => ("external", Some(c.external_value.clone())),
        Some("value") if body.contains_key("value") => ("value", Some(body["value"].clone())),
        _ => {
            return Err(ApiError::BadRequest(
                "body must be {\"keep\": \"hub\"}, {\"keep\": \"external\"} or {\"keep\": \"value\", \"value\": …}"
                    .into(),
            ))
        }
    };
    // A value the record would refuse is a 422 before anything is written, so a
    // refused resolution leaves the conflict open.
    let patch = value.map(|v| Map::from_iter([(c.field.clone(), v)]));
    if let Some(patch) = &patch {
        let current =
            state.store.get(entity, &c.record_id).await?.ok_or_else(|| ApiError::NotFound("no such record".into()))?;
        entity.apply_patch(&current.fields, patch).map_err(ApiError::Invalid)?;
    }
    // Close first: of two operators resolving at once, one wins.
    let closed_as = if winner == "hub" { "hub" } else { "external" };
    if !state.store.close_conflict(c.id, closed_as, winner).await? {
        return Err(ApiError::Conflict(format!("conflict {id} is already resolved")));
    }
    let record = match patch {
        Some(patch) => state.store.update(entity, &c.record_id, &patch, None, "api").await?,
        None => {
            // The hub keeps its value: push it back to the system that disagrees.
            let write =
                InwardWrite { system: c.system.clone(), inbox: None, link: None, conflicts: Vec::new(), resync: true };
            let op = syncflow_store::InwardOp::Update { id: &c.record_id, patch: &Map::new(), expected_version: None };
            state.store.apply_inward(entity, op, &write).await?
        }
    };
    let c = state.store.conflict(c.id).await?.ok_or_else(|| ApiError::Internal("conflict vanished".into()))?;
    Ok(Json(json!({"conflict": conflict_json(&c), "record": record.to_json()})))
}

fn inbox_json(e: &InboxEvent) -> Value {
    json!({
        "id": e.id, "object": "inbox_event", "system": e.system, "event_id": e.event_id, "type": e.event_type,
        "entity": e.entity, "external_id": e.external_id, "event_created": e.event_created, "source": e.source,
        "outcome": e.outcome, "record_id": e.record_id, "remarks": e.remarks, "attempts": e.attempts,
        "received_at": ms_to_timestamp(e.received_at), "settled_at": e.settled_at.map(ms_to_timestamp),
    })
}

/// `GET /v1/inbox?system=&outcome=&after=&limit=`: inward events, oldest first.
async fn inbox(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    let system = q.get("system").ok_or_else(|| ApiError::BadRequest("`system` is required".into()))?;
    state.system(system)?;
    let outcome = match q.get("outcome") {
        None => None,
        Some(o) => Some(InboxOutcome::parse(o).ok_or_else(|| {
            let known: Vec<&str> = InboxOutcome::ALL.iter().map(|o| o.as_str()).collect();
            ApiError::BadRequest(format!("`outcome` must be one of {}", known.join(", ")))
        })?),
    };
    let limit = q.number("limit", 50, 1, 500)? as usize;
    let after = q.number("after", 0, 0, i64::MAX)?;
    let rows = state.store.inbox_filtered(system, outcome, after, limit + 1).await?;
    let has_more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(inbox_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_after": rows.last().filter(|_| has_more).map(|e| e.id),
    })))
}

/// Puts a system's `rejected` and `dead` inward events (or one, `?event_id=`) back to
/// be applied again; the poller's recovery applies them within its interval.
async fn replay_inbox(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: QueryMap,
) -> Result<Json<Value>, ApiError> {
    state.system(&name)?;
    let n = state.store.inbox_replay(&name, q.get("event_id")).await?;
    Ok(Json(json!({"system": name, "requeued": n})))
}
