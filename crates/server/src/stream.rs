//! `GET /v1/stream`: the change log as server-sent events, one event per change
//! with the change's sequence number as the event id, filtered to the entities the
//! caller asks for and may see, with keep-alive comments while idle.
//!
//! Invariant kept here: a stream resumed with `Last-Event-ID: N` (or `?after=N`)
//! delivers every matching change with a sequence number above N, in order, each
//! once — it reads the change log (which never skips, see the store), and is only
//! *woken* by commit notifications, never fed by them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use syncflow_core::metrics::Registry;
use syncflow_core::{Change, Entity};
use syncflow_store::Store;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::extract::QueryMap;
use crate::{ApiError, AppState};

/// Changes read from the log per query while catching up.
const PAGE: usize = 500;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/stream", get(stream_changes))
}

/// Where a stream starts: `Last-Event-ID` (what browsers' `EventSource` sends on
/// reconnect) wins over `?after=`; with neither, the stream starts at the head
/// and carries only new changes.
fn start_position(headers: &HeaderMap, q: &QueryMap) -> Result<Option<i64>, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("").trim();
        return match text.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::BadRequest(format!("Last-Event-ID must be a change sequence number, got `{text}`"))),
        };
    }
    match q.get("after") {
        None => Ok(None),
        Some(_) => Ok(Some(q.number("after", 0, 0, i64::MAX)?)),
    }
}

async fn stream_changes(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    q: QueryMap,
) -> Result<Response, ApiError> {
    if let Some((name, _)) = q.0.iter().find(|(k, _)| k != "after" && k != "entity") {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter `{name}`; use `entity` and `after` (or Last-Event-ID)"
        )));
    }
    let entities = principal.entity_filter(q.get("entity"))?;
    let cursor = state.store.reader_start(start_position(&headers, &q)?).await?;
    let follow = Follow {
        store: state.store.clone(),
        entities,
        cursor,
        buffer: VecDeque::new(),
        wake: state.store.subscribe(),
        shutdown: state.shutdown_receiver(),
        fallback: state.live.fallback_poll,
        _open: OpenStream::new(state.metrics.clone()),
    };
    let mut resp = Sse::new(events(follow))
        .keep_alive(KeepAlive::new().interval(state.live.keep_alive).text("keep-alive"))
        .into_response();
    // Tell buffering proxies to pass events through as they come.
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Counts open streams for `syncflow_stream_clients`; the count drops when the
/// response body is dropped (client gone or server stopping).
struct OpenStream(Arc<Registry>);

impl OpenStream {
    fn new(metrics: Arc<Registry>) -> Self {
        metrics.inc("syncflow_stream_clients", &[], 1.0);
        Self(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.inc("syncflow_stream_clients", &[], -1.0);
    }
}

/// One stream's position in the change log.
struct Follow {
    store: Store,
    entities: Vec<&'static Entity>,
    /// Everything up to here has been sent or filtered out.
    cursor: i64,
    buffer: VecDeque<Change>,
    wake: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// Re-read the log at least this often even without a wake-up (a missed
    /// notification from another node costs at most this much delay).
    fallback: Duration,
    _open: OpenStream,
}

impl Follow {
    /// The next matching change; `None` when the stream should end (server
    /// shutting down, or the store failing — the client then resumes from its
    /// last event id and loses nothing).
    async fn next(&mut self) -> Option<Change> {
        loop {
            if let Some(c) = self.buffer.pop_front() {
                return Some(c);
            }
            if *self.shutdown.borrow() {
                return None;
            }
            // Mark the current wake-up seen *before* reading, so a commit landing
            // between the read and the wait still wakes us.
            self.wake.borrow_and_update();
            match self.store.change_page(self.cursor, PAGE, Some(&self.entities)).await {
                Ok(page) => {
                    self.cursor = page.next_after;
                    if !page.changes.is_empty() {
                        self.buffer.extend(page.changes);
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change stream stopped; the client will resume");
                    return None;
                }
            }
            tokio::select! {
                _ = self.wake.changed() => {}
                // An error means the app state is gone: stop rather than spin.
                r = self.shutdown.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep(self.fallback) => {}
            }
        }
    }
}

fn events(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(follow, |mut f| async move {
        let change = f.next().await?;
        let data = serde_json::to_string(&change).unwrap_or_else(|_| "{}".into());
        let event = Event::default().id(change.seq.to_string()).event("change").data(data);
        Some((Ok(event), f))
    })
}
