//! Syncflow's HTTP API: `router(state)` builds the whole axum app, so tests drive it
//! with `tower::ServiceExt::oneshot` and the binary only binds a socket.
//!
//! Invariant kept here: a client mistake never yields a 500 and never writes
//! anything (validation happens before or inside the write transaction).

mod auth;
mod catalog;
mod changes;
mod conflicts;
mod dashboard;
mod deliveries;
mod edge;
pub mod error;
mod extract;
mod idempotency;
mod nodes;
mod openapi;
mod openapi_ops;
mod ops;
mod reconcile;
mod seed;
mod stream;
mod sync;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use syncflow_core::metrics::Registry;
use syncflow_engine::{Pipeline, SystemConfig};
use syncflow_store::Store;
use tokio::sync::watch;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{ApiTokens, ClientConfigError, ClientSpec, Clients, Principal};
pub use error::{ApiError, ItemFieldError};
pub use openapi::build as openapi_document;
pub use sync::{decode_cursor, encode_cursor};

/// Timing of the live endpoints (`/v1/stream`, long-polls on `/v1/changes`).
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Comment sent on an idle event stream, so proxies and clients keep it open.
    pub keep_alive: Duration,
    /// Waiters re-read the change log at least this often even without a wake-up.
    pub fallback_poll: Duration,
    /// Longest `wait` a long-poll may ask for.
    pub max_wait: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            fallback_poll: Duration::from_secs(5),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Registry>,
    pub tokens: ApiTokens,
    /// The configured external systems (empty when none are).
    pub systems: Arc<Vec<SystemConfig>>,
    /// The inward pipelines of two-way systems by name, for webhooks.
    pub pipelines: Arc<BTreeMap<String, Arc<Pipeline>>>,
    /// Sync clients and their entity grants (`[[clients]]`).
    pub clients: Clients,
    pub live: LiveSettings,
    /// Longest a request other than a stream or long-poll may run.
    pub request_timeout: Duration,
    /// Flipped to `true` when the server starts shutting down, so event streams and
    /// long-polls end instead of holding graceful shutdown open.
    shutdown: Arc<watch::Sender<bool>>,
}

impl AppState {
    pub fn new(store: Store, tokens: ApiTokens) -> Self {
        Self {
            metrics: store.metrics(),
            store,
            tokens,
            systems: Arc::default(),
            pipelines: Arc::default(),
            clients: Clients::default(),
            live: LiveSettings::default(),
            request_timeout: edge::REQUEST_TIMEOUT,
            shutdown: Arc::new(watch::channel(false).0),
        }
    }

    pub fn with_pipelines(mut self, pipelines: BTreeMap<String, Arc<Pipeline>>) -> Self {
        self.pipelines = Arc::new(pipelines);
        self
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

    pub fn with_clients(mut self, clients: Clients) -> Self {
        self.clients = clients;
        self
    }

    pub fn with_live(mut self, live: LiveSettings) -> Self {
        self.live = live;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Ends open event streams and long-polls (call when shutdown begins).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// The whole HTTP surface. `/v1/*` requires a bearer token when tokens are
/// configured (checked before routing, so unknown `/v1` paths are a 401 too);
/// health, readiness, metrics and the OpenAPI document stay open. Every request
/// passes the edge layers (see `edge`): request id, one log line, metrics,
/// compression, authentication, body limits, storable-text checks, time limits.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for entity in syncflow_core::ENTITIES.iter().copied() {
        api = api.merge(catalog::routes(entity));
    }
    let api = api
        .merge(changes::routes())
        .merge(deliveries::routes())
        .merge(conflicts::routes())
        .merge(nodes::routes())
        .merge(reconcile::routes())
        .merge(sync::routes())
        .merge(seed::routes())
        .merge(stream::routes())
        // After authentication (an outer layer below): keys are per caller.
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::guard));

    Router::new()
        .merge(api)
        .merge(dashboard::routes(state.clone()))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        // Outside the bearer-token check: a webhook is authenticated by its signature.
        .route("/webhooks/{system}", axum::routing::post(webhooks::receive))
        .fallback(ops::not_found)
        // Innermost first: each `layer` wraps the ones above it.
        .layer(middleware::from_fn_with_state(state.clone(), edge::time_limit))
        .layer(middleware::from_fn(edge::storable_uri))
        .layer(middleware::from_fn(edge::limit_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .compress_when(SizeAbove::new(1024).and(NotForContentType::SSE).and(NotForContentType::IMAGES)),
        )
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(edge::MakeId))
        .layer(middleware::from_fn(edge::screen_request_id))
        .with_state(state)
}

/// Probes scraped every few seconds: logged at `debug`, so an idle hub is quiet.
const PROBES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The span of one request: method, route template (never the raw path or query,
/// which may hold ids or secrets) and request id. Handler logs inherit it.
fn request_span(req: &Request) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let id = edge::request_id(req.headers());
    if PROBES.contains(&route) {
        tracing::debug_span!("request", method = %req.method(), route = %route, request_id = %id)
    } else {
        tracing::info_span!("request", method = %req.method(), route = %route, request_id = %id)
    }
}

/// The one log line per request, once its response head is ready.
fn log_response(resp: &Response, latency: Duration, span: &tracing::Span) {
    if span.is_disabled() {
        return;
    }
    tracing::info!(parent: span, status = resp.status().as_u16(), ms = latency.as_millis() as u64, "request");
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
