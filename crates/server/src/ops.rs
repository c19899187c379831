//! Operational endpoints: liveness, readiness, metrics, and the JSON 404.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::{ApiError, AppState};

pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.ping().await.map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
    Ok(Json(json!({"status": "ready", "database": state.store.backend_name()})))
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The head is read at scrape time, so it covers writes by every node and by SQL.
    if let Ok(head) = state.store.head_seq().await {
        state.metrics.set("syncflow_change_log_head", &[], head as f64);
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
