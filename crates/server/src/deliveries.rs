//! Operator API over the transaction table: systems with their queues, pause and
//! resume, deliveries with their attempt history, retry of a dead letter and replay
//! of a whole system's dead letters.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{now_ms, Delivery, DeliveryFilter, DeliveryStatus, Route};

use crate::extract::QueryMap;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/systems", get(systems))
        .route("/v1/systems/{name}/pause", post(|st: State<AppState>, n: Path<String>| set_paused(st, n, true)))
        .route("/v1/systems/{name}/resume", post(|st: State<AppState>, n: Path<String>| set_paused(st, n, false)))
        .route("/v1/systems/{name}/replay", post(replay))
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}", get(show))
        .route("/v1/deliveries/{id}/retry", post(retry))
        .route("/v1/changes/{seq}/deliveries", get(of_change))
}

pub(crate) fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "change_seq": d.change_seq,
        "system": d.system,
        "kind": d.kind,
        "subject_id": d.subject_id,
        "entity": d.entity,
        "record_id": d.record_id,
        "op": d.op,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": (!d.status.is_final()).then(|| ms_to_timestamp(d.next_attempt_at)),
        "http_status": d.http_status,
        "external_id": d.external_id,
        "remarks": d.remarks,
        "created_at": ms_to_timestamp(d.created_at),
        "updated_at": ms_to_timestamp(d.updated_at),
        "finished_at": d.finished_at.map(ms_to_timestamp),
    })
}

async fn systems(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats = state.store.queue_stats().await?;
    let paused = state.store.paused_systems().await?;
    let held = state.store.held_counts().await?;
    let head = state.store.head_seq().await?;
    let cursor = state.store.dispatch_cursor().await?;
    // Only changes some system will receive count as lag: with no systems, or
    // none subscribed to what is waiting, nothing is behind.
    let routes: Vec<Route> =
        state.systems.iter().map(|s| Route { system: s.name.clone(), entities: s.entities.clone() }).collect();
    let lag = state.store.dispatch_lag(&routes).await?;
    let now = now_ms();
    let data: Vec<Value> = state
        .systems
        .iter()
        .map(|s| {
            let q = stats.get(&s.name).cloned().unwrap_or_default();
            json!({
                "name": s.name,
                "kind": s.kind,
                "entities": s.entities,
                "paused": paused.contains(&s.name),
                // Deletions the mass-delete breaker holds (flagged until released or discarded).
                "held_deletions": held.get(&s.name).copied().unwrap_or(0),
                "flagged": held.contains_key(&s.name),
                "rate_limit": s.rate_limit,
                "concurrency": s.concurrency,
                "max_attempts": s.max_attempts,
                "callbacks": s.callback_url.is_some(),
                // The system's API allowance (Salesforce's daily budget), when it has one.
                "api_usage": state.pipelines.get(&s.name).and_then(|p| p.connector().api_usage()),
                "queue": {
                    "depth": q.depth(), "pending": q.pending, "retrying": q.retrying,
                    "in_flight": q.in_flight, "dead": q.dead,
                    "oldest_age_seconds": q.oldest_unfinished_at.map(|t| (now - t).max(0) as f64 / 1000.0),
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "dispatch": {"cursor": cursor, "head": head, "lag": lag},
    })))
}

async fn set_paused(
    State(state): State<AppState>,
    Path(name): Path<String>,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    state.system(&name)?;
    state.store.set_paused(&name, paused).await?;
    Ok(Json(json!({"name": name, "paused": paused})))
}

async fn replay(State(state): State<AppState>, Path(name): Path<String>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    state.system(&name)?;
    let status = q.get("status").unwrap_or("dead");
    if status != "dead" {
        return Err(ApiError::BadRequest(format!("only dead deliveries can be replayed, not `{status}`")));
    }
    let n = state.store.replay(&name, DeliveryStatus::Dead).await?;
    Ok(Json(json!({"system": name, "replayed": n})))
}

async fn list(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    const PARAMS: &[&str] = &["system", "status", "record_id", "change", "after", "limit", "order"];
    if let Some((k, _)) = q.0.iter().find(|(k, _)| !PARAMS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("unknown query parameter `{k}`; use {}", PARAMS.join(", "))));
    }
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`status` must be one of: {}",
                DeliveryStatus::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
    };
    let limit = q.number("limit", 100, 1, 1000)?;
    let filter = DeliveryFilter {
        system: q.get("system").map(str::to_string),
        status,
        record_id: q.get("record_id").map(str::to_string),
        change_seq: q.get("change").map(|_| q.number("change", 0, 1, i64::MAX)).transpose()?,
        after_id: q.get("after").map(|_| q.number("after", 0, 0, i64::MAX)).transpose()?,
        limit: limit as usize + 1,
        // Newest first unless asked otherwise: what an operator looks for (the CLI agrees).
        descending: crate::catalog::descending(&q, true)?,
    };
    let mut rows = state.store.deliveries(&filter).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if has_more { rows.last().map(|d| d.id) } else { None };
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(delivery_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_after": next,
    })))
}

fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("no {what} `{raw}`")))
}

async fn show(State(state): State<AppState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw, "delivery")?;
    let d = state.store.delivery(id).await?.ok_or_else(|| ApiError::NotFound(format!("no delivery {id}")))?;
    let attempts: Vec<Value> = state
        .store
        .attempts(id)
        .await?
        .iter()
        .map(|a| {
            json!({"attempt": a.attempt, "outcome": a.outcome, "http_status": a.http_status,
                   "remarks": a.remarks, "duration_ms": a.duration_ms, "at": ms_to_timestamp(a.at)})
        })
        .collect();
    let mut body = delivery_json(&d);
    body["history"] = json!(attempts);
    Ok(Json(body))
}

async fn retry(State(state): State<AppState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&raw, "delivery")?;
    match state.store.retry_delivery(id).await? {
        Some(d) => Ok(Json(delivery_json(&d))),
        None => match state.store.delivery(id).await? {
            None => Err(ApiError::NotFound(format!("no delivery {id}"))),
            Some(d) => Err(ApiError::Conflict(format!(
                "delivery {id} is {}; only dead deliveries can be retried",
                d.status.as_str()
            ))),
        },
    }
}

async fn of_change(State(state): State<AppState>, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let seq = parse_id(&raw, "change")?;
    if state.store.change(seq).await?.is_none() {
        return Err(ApiError::NotFound(format!("no change {seq}")));
    }
    let rows =
        state.store.deliveries(&DeliveryFilter { change_seq: Some(seq), limit: 1000, ..Default::default() }).await?;
    Ok(Json(json!({"object": "list", "data": rows.iter().map(delivery_json).collect::<Vec<_>>()})))
}
