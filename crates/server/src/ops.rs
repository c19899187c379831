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
        let routes: Vec<syncflow_store::Route> = state
            .systems
            .iter()
            .map(|s| syncflow_store::Route { system: s.name.clone(), entities: s.entities.clone() })
            .collect();
        if let Ok(lag) = state.store.dispatch_lag(&routes).await {
            state.metrics.set("syncflow_dispatch_lag", &[], lag as f64);
        }
    }
    // Queue gauges come from the shared transaction table, so every node reports
    // the same, complete numbers.
    if let Ok(stats) = state.store.queue_stats().await {
        let now = syncflow_store::now_ms();
        for s in state.systems.iter() {
            let q = stats.get(&s.name).cloned().unwrap_or_default();
            let labels = [("system", s.name.as_str())];
            state.metrics.set("syncflow_queue_depth", &labels, q.depth() as f64);
            state.metrics.set("syncflow_queue_dead", &labels, q.dead as f64);
            let age = q.oldest_unfinished_at.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
            state.metrics.set("syncflow_queue_oldest_age_seconds", &labels, age);
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, syncflow_core::metrics::CONTENT_TYPE)], state.metrics.render())
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
