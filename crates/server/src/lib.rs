//! Syncflow's HTTP API: `router(state)` builds the whole axum app, so tests drive it
//! with `tower::ServiceExt::oneshot` and the binary only binds a socket.
//!
//! Invariant kept here: a client mistake never yields a 500 and never writes
//! anything (validation happens before or inside the write transaction).

mod auth;
mod catalog;
mod changes;
mod deliveries;
pub mod error;
mod extract;
mod openapi;
mod ops;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use syncflow_core::metrics::Registry;
use syncflow_engine::SystemConfig;
use syncflow_store::Store;

pub use auth::ApiTokens;
pub use error::ApiError;

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Registry>,
    pub tokens: ApiTokens,
    /// The configured external systems (empty when none are).
    pub systems: Arc<Vec<SystemConfig>>,
}

impl AppState {
    pub fn new(store: Store, tokens: ApiTokens) -> Self {
        Self { metrics: store.metrics(), store, tokens, systems: Arc::default() }
    }

    pub fn with_systems(mut self, systems: Vec<SystemConfig>) -> Self {
        self.systems = Arc::new(systems);
        self
    }

    pub(crate) fn system(&self, name: &str) -> Result<&SystemConfig, ApiError> {
        self.systems
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("no system named `{name}`")))
    }
}

/// The whole HTTP surface. `/v1/*` requires a bearer token when tokens are
/// configured; health, readiness, metrics and the OpenAPI document stay open.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for entity in syncflow_core::ENTITIES.iter().copied() {
        api = api.merge(catalog::routes(entity));
    }
    let api = api
        .merge(changes::routes())
        .merge(deliveries::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));

    Router::new()
        .merge(api)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(ops::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// Counts and times every request by its route template (not its raw path, which
/// would make one series per record id).
async fn record_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    state.metrics.inc(
        "syncflow_http_requests_total",
        &[("method", &method), ("route", &route), ("status", &status)],
        1.0,
    );
    state.metrics.observe(
        "syncflow_http_request_duration_seconds",
        &[("route", &route)],
        started.elapsed().as_secs_f64(),
    );
    resp
}
