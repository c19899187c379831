//! The operator dashboard: server-rendered HTML (maud) at `/` and `/ui/*`, static
//! assets compiled into the binary, live updates over server-sent events.
//!
//! Invariants kept here: every page reads the hub's own tables (never a metrics
//! scrape), so what it shows is what every node sees; every state change is a POST
//! that passes the cross-site check in `session`; with API tokens configured nothing
//! but the login page and the assets is served without a valid session cookie; no
//! secret (token, system secret, URL credentials) is ever rendered.

mod conflicts;
mod deliveries;
mod inbox;
mod overview;
mod record;
mod session;
mod system;
mod views;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use futures_util::stream;
use syncflow_store::StoreError;

use crate::{ApiError, AppState};

/// Shortest gap between two `refresh` events on one stream (bursts of commits
/// coalesce into one refresh).
const MIN_REFRESH_GAP: Duration = Duration::from_millis(700);
/// A `refresh` is sent at least this often, so queue ages and delivery outcomes
/// (which do not wake the change watchers) stay current and the page can tell a
/// live hub from a silent one.
const REFRESH_TICK: Duration = Duration::from_secs(2);

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/ui/deliveries", get(deliveries::list))
        .route("/ui/deliveries/{id}", get(deliveries::show))
        .route("/ui/deliveries/{id}/retry", post(deliveries::retry))
        .route("/ui/systems/{name}/pause", post(|s: State<AppState>, n: Path<String>| overview::set_paused(s, n, true)))
        .route(
            "/ui/systems/{name}/resume",
            post(|s: State<AppState>, n: Path<String>| overview::set_paused(s, n, false)),
        )
        .route("/ui/systems/{name}/replay", post(deliveries::replay_system))
        .route("/ui/systems/{name}", get(system::page))
        .route("/ui/reconcile/runs/{id}", get(system::run))
        .route(
            "/ui/holds/{id}/release",
            post(|s: State<AppState>, id: Path<String>, f: axum::Form<system::Back>| system::settle(s, id, true, f)),
        )
        .route(
            "/ui/holds/{id}/discard",
            post(|s: State<AppState>, id: Path<String>, f: axum::Form<system::Back>| system::settle(s, id, false, f)),
        )
        .route("/ui/inbox", get(inbox::page))
        .route("/ui/systems/{name}/inbox/replay", post(inbox::replay))
        .route("/ui/conflicts", get(conflicts::page))
        .route("/ui/conflicts/{id}/resolve", post(conflicts::resolve))
        .route("/ui/records", get(record::page))
        .route("/ui/events", get(events))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{file}", get(asset))
        .route_layer(middleware::from_fn_with_state(state, session::guard))
}

/// A page that could not be built, as an HTML error page.
pub(crate) struct DashError(StatusCode, String);

impl DashError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, what.into())
    }
}

impl From<StoreError> for DashError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "dashboard query failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, "the hub's database did not answer; see the hub's log".into())
    }
}

impl From<ApiError> for DashError {
    fn from(e: ApiError) -> Self {
        Self(e.status(), e.to_string())
    }
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let body = views::bare(
            "Error",
            maud::html! { main { h1 { (self.0) } p.error { (self.1) } p { a href="/" { "Back to the overview" } } } },
        );
        (self.0, Html(body.into_string())).into_response()
    }
}

pub(crate) type Page = Result<Html<String>, DashError>;

/// Where a POST form sends the browser back to: its `back` field when it is a
/// local path, else the overview.
pub(crate) fn back_to(back: Option<&str>) -> Redirect {
    match back {
        Some(b) if b.starts_with('/') && !b.starts_with("//") && !b.contains('\\') => Redirect::to(b),
        _ => Redirect::to("/"),
    }
}

/// `refresh` events: one at once, then on every commit (throttled) and at least
/// every `REFRESH_TICK`; the stream ends when the server shuts down.
async fn events(State(state): State<AppState>) -> Response {
    let wake = state.store.subscribe();
    let shutdown = state.shutdown_receiver();
    let refreshes = stream::unfold((wake, shutdown, true), |(mut wake, mut shutdown, first)| async move {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(MIN_REFRESH_GAP) => {}
                r = shutdown.changed() => if r.is_err() { return None },
            }
            let woken = tokio::select! {
                r = wake.changed() => r.is_ok(),
                _ = tokio::time::sleep(REFRESH_TICK) => true,
                r = shutdown.changed() => r.is_ok(),
            };
            if !woken {
                // The store or the app state is gone: fall back to the tick.
                tokio::time::sleep(REFRESH_TICK).await;
            }
        }
        let stopping = *shutdown.borrow();
        if stopping {
            return None;
        }
        wake.borrow_and_update();
        let now = syncflow_store::deliveries::ms_to_timestamp(syncflow_store::now_ms());
        Some((Ok::<_, Infallible>(Event::default().event("refresh").data(now)), (wake, shutdown, false)))
    });
    let mut resp = Sse::new(refreshes).into_response();
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

const HTMX: &str = include_str!("assets/htmx.min.js");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");
/// Bumped with the assets, so browsers may cache them.
pub(crate) const ASSET_VERSION: &str = "2";

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx-2.0.11.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return DashError::not_found(format!("no asset {file}")).into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}
