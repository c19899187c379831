//! Reconciliation runs and mass-delete holds for operators: the runs (counts per
//! drift class, samples, API calls, duration), and the deletions the breaker held,
//! released (applied through the inward pipeline) or discarded (the hub keeps the
//! record) on request.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use syncflow_store::deliveries::ms_to_timestamp;
use syncflow_store::{Hold, ReconcileRun};

use crate::extract::QueryMap;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/reconcile/runs", get(runs))
        .route("/v1/reconcile/runs/{id}", get(run))
        .route("/v1/systems/{name}/reconcile", post(start))
        .route("/v1/holds", get(holds))
        .route("/v1/holds/{id}/release", post(|st: State<AppState>, id: Path<String>| settle(st, id, true)))
        .route("/v1/holds/{id}/discard", post(|st: State<AppState>, id: Path<String>| settle(st, id, false)))
}

fn run_json(r: &ReconcileRun) -> Value {
    json!({
        "id": r.id, "object": "reconcile_run", "system": r.system, "entity": r.entity, "trigger": r.trigger,
        "repair": r.repair, "status": r.status, "counts": r.counts, "samples": r.samples, "api_calls": r.api_calls,
        "error": r.error, "started_at": ms_to_timestamp(r.started_at), "finished_at": r.finished_at.map(ms_to_timestamp),
        "duration_ms": r.duration_ms,
    })
}

fn hold_json(h: &Hold) -> Value {
    json!({
        "id": h.id, "object": "hold", "system": h.system, "entity": h.entity, "record_id": h.record_id,
        "external_id": h.external_id, "side": h.side, "origin": h.origin, "inbox_id": h.inbox_id,
        "delivery_id": h.delivery_id, "status": h.status, "reason": h.reason,
        "created_at": ms_to_timestamp(h.created_at), "settled_at": h.settled_at.map(ms_to_timestamp),
    })
}

fn id_param(what: &str, id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("no {what} `{id}`")))
}

async fn runs(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    let limit = q.number("limit", 20, 1, 200)? as usize;
    let before = q.get("before").map(|b| id_param("run", b)).transpose()?;
    let mut rows = state.store.reconcile_runs(q.get("system"), before, limit + 1).await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Ok(Json(json!({"object": "list", "data": rows.iter().map(run_json).collect::<Vec<_>>(), "has_more": has_more})))
}

async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let r = state.store.reconcile_run(id_param("run", &id)?).await?;
    Ok(Json(run_json(&r.ok_or_else(|| ApiError::NotFound(format!("no run `{id}`")))?)))
}

/// Starts a reconcile run of a two-way system in the background (`?repair=true`
/// to heal, `?entity=` for one entity); its row shows in `/v1/reconcile/runs`.
async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: QueryMap,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let system = state.system(&name)?;
    let pipeline = state.pipelines.get(&name).cloned().ok_or_else(|| {
        ApiError::BadRequest(format!("`{name}` only receives changes; reconcile needs a two-way system"))
    })?;
    let repair = match q.get("repair") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::BadRequest("`repair` must be true or false".into())),
    };
    let entities: Vec<&'static syncflow_core::Entity> = match q.get("entity") {
        Some(e) if system.entities.iter().any(|x| x == e) => syncflow_core::Entity::by_name(e).into_iter().collect(),
        Some(e) => return Err(ApiError::BadRequest(format!("`{name}` does not sync `{e}`"))),
        None => system.entities.iter().filter_map(|e| syncflow_core::Entity::by_name(e)).collect(),
    };
    tokio::spawn(async move {
        for entity in entities {
            let opts = syncflow_engine::reconcile::ReconcileOptions { repair, trigger: "api" };
            if let Err(e) = pipeline.reconcile(entity, opts, &mut |_| {}).await {
                tracing::warn!(system = %pipeline.system(), error = %e, "reconcile failed");
            }
        }
    });
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({"system": name, "repair": repair, "started": true}))))
}

async fn holds(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    let status = match q.get("status") {
        None => Some("held"),
        Some("all") => None,
        Some(s @ ("held" | "released" | "discarded")) => Some(s),
        Some(_) => return Err(ApiError::BadRequest("`status` must be held, released, discarded or all".into())),
    };
    let limit = q.number("limit", 100, 1, 1000)? as usize;
    let rows = state.store.holds(q.get("system"), status, limit).await?;
    Ok(Json(
        json!({"object": "list", "data": rows.iter().map(hold_json).collect::<Vec<_>>(), "has_more": rows.len() == limit}),
    ))
}

/// Releases or discards a hold. Inward: released, the deletion is applied through
/// the inward pipeline now; discarded, the hub keeps the record (`syncflow reconcile
/// --repair` re-pushes it). Outward: released, the delete delivery becomes pending;
/// discarded, it is skipped and the system keeps the record (and its link).
pub(crate) async fn settle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    release: bool,
) -> Result<Json<Value>, ApiError> {
    let hold_id = id_param("hold", &id)?;
    let hold = state.store.hold(hold_id).await?.ok_or_else(|| ApiError::NotFound(format!("no hold `{id}`")))?;
    if !state.store.settle_hold(hold_id, release).await? {
        return Err(ApiError::Conflict(format!("hold {id} is already {}", hold.status)));
    }
    if release && hold.side == "inward" {
        if let Some(pipeline) = state.pipelines.get(&hold.system) {
            // Apply now rather than at the next recovery round.
            if let Err(e) = pipeline.poll(false).await {
                tracing::warn!(system = %hold.system, error = %e, "released hold: applying it failed; recovery retries it");
            }
        }
    }
    let hold = state.store.hold(hold_id).await?.ok_or_else(|| ApiError::NotFound(format!("no hold `{id}`")))?;
    Ok(Json(hold_json(&hold)))
}
