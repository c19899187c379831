//! `GET /v1/changes`: the change log, paged by sequence number.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::extract::QueryMap;
use crate::{ApiError, AppState};

pub(crate) const MAX_CHANGES: i64 = 1000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/changes", get(list))
}

async fn list(State(state): State<AppState>, q: QueryMap) -> Result<Json<Value>, ApiError> {
    if let Some((name, _)) = q.0.iter().find(|(k, _)| k != "after" && k != "limit") {
        return Err(ApiError::BadRequest(format!("unknown query parameter `{name}`; use `after` and `limit`")));
    }
    let after = q.number("after", 0, 0, i64::MAX)?;
    let limit = q.number("limit", 100, 1, MAX_CHANGES)?;
    let data = state.store.changes_after(after, limit as usize).await?;
    let next_after = data.last().map_or(after, |c| c.seq);
    Ok(Json(json!({"object": "list", "data": data, "next_after": next_after})))
}
