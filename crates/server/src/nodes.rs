//! `GET /v1/nodes`: the engines sharing this database, as their heartbeats report
//! them (a node that stopped is dropped by the others after the node timeout).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use syncflow_store::deliveries::{ms_to_timestamp, now_ms};

use crate::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/nodes", get(list))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let nodes = state.store.nodes().await?;
    let data: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "object": "node", "id": n.id, "host": n.host, "version": n.version, "started_at": n.started_at,
                "last_seen_at": ms_to_timestamp(n.last_seen_ms), "seen_ms_ago": (now - n.last_seen_ms).max(0),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})))
}
