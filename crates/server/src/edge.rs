//! The HTTP edge: what every request passes before a handler sees it — request
//! ids, the request log line, body limits, time limits, and the refusal of text a
//! backend cannot store.
//!
//! Invariants kept here: a request is refused the same way on every backend
//! (U+0000 in a path, query parameter or JSON body is a 4xx naming where, never a
//! PostgreSQL 500); no route reads more body than its limit, and a route that takes
//! no body refuses one at once instead of leaving the client blocked; a request
//! that is not a stream or long-poll gets its response head within
//! `AppState::request_timeout` (default `REQUEST_TIMEOUT`; a streamed body, such as
//! an SSE feed, is not cut); the log line carries the route template, never the
//! raw path, query or a token.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use serde_json::{Map, Value};
use tower::{Layer, ServiceExt};
use tower_http::body::Limited;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::timeout::TimeoutLayer;

use crate::error::{ApiError, ItemFieldError};
use crate::AppState;

/// Body limit of the sync routes: a full batch of 1000 items with metadata.
pub const SYNC_BODY_LIMIT: usize = 32 << 20;
/// Body limit of inward webhooks (Stripe events are far smaller).
pub const WEBHOOK_BODY_LIMIT: usize = 4 << 20;
/// Body limit of every other route that takes a body (a record is at most ~30 KiB).
pub const BODY_LIMIT: usize = 256 << 10;
/// Longest a request may run, except event streams and long-polls.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `x-request-id` kept from a client; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// `POST` routes that take no body (operator actions named by their path).
const NO_BODY_POSTS: &[&str] = &[
    "/v1/systems/{name}/pause",
    "/v1/systems/{name}/resume",
    "/v1/systems/{name}/replay",
    "/v1/systems/{name}/inbox/replay",
    "/v1/deliveries/{id}/retry",
    "/v1/systems/{name}/reconcile",
    "/v1/holds/{id}/release",
    "/v1/holds/{id}/discard",
];

fn route(req: &Request) -> Option<&str> {
    req.extensions().get::<MatchedPath>().map(MatchedPath::as_str)
}

/// The body limit of a route, or `None` when it takes no body at all.
fn body_limit(method: &Method, route: Option<&str>) -> Option<usize> {
    let takes_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        && !route.is_some_and(|r| NO_BODY_POSTS.contains(&r));
    if !takes_body {
        return None;
    }
    Some(match route {
        Some("/v1/sync" | "/v1/sync/") => SYNC_BODY_LIMIT,
        Some(r) if r.starts_with("/webhooks/") => WEBHOOK_BODY_LIMIT,
        _ => BODY_LIMIT,
    })
}

/// Whether a request says it carries a body (a length above zero, a chunked body,
/// or one whose size is not known up front).
fn has_body(req: &Request) -> bool {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    declared.is_some_and(|n| n > 0)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
        || req.body().size_hint().exact() != Some(0)
}

fn is_json(resp: &Response) -> bool {
    resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

fn kib(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

/// Refuses a body on routes that take none (at once, without reading it, so the
/// client is never left waiting) and holds every other body to its route's limit
/// with tower-http's `RequestBodyLimit`; both answer `413` with a JSON error.
pub(crate) async fn limit_body(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let Some(limit) = body_limit(&method, route(&req)) else {
        if has_body(&req) {
            let what = route(&req).unwrap_or("this route");
            return ApiError::PayloadTooLarge(format!("{method} {what} takes no request body")).into_response();
        }
        return next.run(req).await;
    };
    // tower-http hands the inner service a `Limited` body; axum wants its own.
    let inner = next.map_request(|r: axum::http::Request<Limited<Body>>| r.map(Body::new));
    let resp = match RequestBodyLimitLayer::new(limit).layer(inner).oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    };
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&resp) {
        return ApiError::PayloadTooLarge(format!("request body over this route's {} limit", kib(limit)))
            .into_response();
    }
    resp
}

/// Event streams and long-polls (`/v1/changes?wait=`) end by themselves (at most
/// `LiveSettings::max_wait` for a long-poll) and get no time limit here.
fn is_live(req: &Request) -> bool {
    match route(req) {
        Some("/v1/stream") => true,
        Some("/v1/changes") => Query::<Vec<(String, String)>>::try_from_uri(req.uri())
            .is_ok_and(|Query(params)| params.iter().any(|(k, _)| k == "wait")),
        _ => false,
    }
}

/// Ends a request that runs over `AppState::request_timeout` (reading its body
/// included) with a JSON `503`, through tower-http's `Timeout`; the handler's
/// future is dropped, so an open transaction rolls back.
pub(crate) async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if is_live(&req) {
        return next.run(req).await;
    }
    let limit = state.request_timeout;
    let layer = TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limit);
    let resp = match layer.layer(next).oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && !is_json(&resp) {
        return ApiError::Unavailable(format!("the request took longer than {} ms", limit.as_millis())).into_response();
    }
    resp
}

/// Where U+0000 is not allowed and what to call it in an error.
pub(crate) fn unstorable(text: &str) -> Option<&'static str> {
    text.contains('\0').then_some("must not contain the NUL character (U+0000)")
}

/// `parent.key` (or `key` at the top).
fn member_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Collects every place in a JSON value holding text no backend may store.
fn find_unstorable(value: &Value, path: &str, out: &mut Vec<ItemFieldError>) {
    match value {
        Value::String(s) => {
            if let Some(message) = unstorable(s) {
                out.push(ItemFieldError::new(None, path, message));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_unstorable(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => find_in_members(map, path, out),
        _ => {}
    }
}

/// `find_unstorable` over an object's members; `path` is the object's own.
pub(crate) fn find_in_members(map: &Map<String, Value>, path: &str, out: &mut Vec<ItemFieldError>) {
    for (key, item) in map {
        if unstorable(key).is_some() {
            let at = if path.is_empty() { "(body)" } else { path };
            out.push(ItemFieldError::new(None, at, "has a member name containing the NUL character (U+0000)"));
        } else {
            find_unstorable(item, &member_path(path, key), out);
        }
    }
}

/// Checks the path and query of a request: percent-decoded, each must be UTF-8
/// text without U+0000 (PostgreSQL refuses it; refusing it here answers the same
/// on every backend).
fn check_uri(uri: &Uri) -> Result<(), ApiError> {
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("the path is not valid UTF-8 once percent-decoded".into()))?;
    if let Some(message) = unstorable(&path) {
        return Err(ApiError::BadRequest(format!("the path {message}")));
    }
    if uri.query().is_some() {
        let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
        for (name, value) in &params {
            if let Some(message) = unstorable(name) {
                return Err(ApiError::BadRequest(format!("a query parameter name {message}")));
            }
            if let Some(message) = unstorable(value) {
                return Err(ApiError::BadRequest(format!("query parameter `{name}` {message}")));
            }
        }
    }
    Ok(())
}

/// Refuses a request whose path or query holds text a backend cannot store.
pub(crate) async fn storable_uri(req: Request, next: Next) -> Response {
    match check_uri(req.uri()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Request ids for requests that come without a usable `x-request-id`.
#[derive(Clone, Copy, Default)]
pub(crate) struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&syncflow_core::id::new_id("req")).ok().map(RequestId::new)
    }
}

/// Drops a client's `x-request-id` that is too long or not plain printable ASCII,
/// so `SetRequestId` makes a fresh one and logs stay one readable line.
pub(crate) async fn screen_request_id(mut req: Request, next: Next) -> Response {
    let usable = |h: &HeaderMap| {
        h.get("x-request-id").is_none_or(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
    };
    if !usable(req.headers()) {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// The request id as set by `SetRequestId` (for logs).
pub(crate) fn request_id(headers: &HeaderMap) -> &str {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_with_nul_or_bad_utf8_are_refused() {
        for bad in ["/v1/customers/%00", "/v1/customers?after=%00", "/v1/customers?na%00me=x", "/v1/customers/%FF"] {
            assert!(check_uri(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        for good in ["/v1/customers/cust_1", "/v1/customers?after=x&name=%C3%A9", "/v1/changes?wait=1s"] {
            assert!(check_uri(&good.parse().unwrap()).is_ok(), "{good}");
        }
        let e = check_uri(&"/v1/deliveries?record_id=a%00".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("`record_id`"), "{e}");
    }

    #[test]
    fn limits_follow_the_route() {
        assert_eq!(body_limit(&Method::GET, Some("/v1/customers")), None);
        assert_eq!(body_limit(&Method::DELETE, Some("/v1/customers/{id}")), None);
        assert_eq!(body_limit(&Method::POST, Some("/v1/systems/{name}/replay")), None);
        assert_eq!(body_limit(&Method::POST, Some("/v1/sync")), Some(SYNC_BODY_LIMIT));
        assert_eq!(body_limit(&Method::POST, Some("/webhooks/{system}")), Some(WEBHOOK_BODY_LIMIT));
        assert_eq!(body_limit(&Method::PATCH, Some("/v1/customers/{id}")), Some(BODY_LIMIT));
        assert_eq!(body_limit(&Method::POST, None), Some(BODY_LIMIT));
    }

    #[test]
    fn nul_is_found_with_its_path() {
        let mut out = Vec::new();
        let v = serde_json::json!({"a": [{"b": "x\u{0}"}], "m": {"k\u{0}": "v"}, "\u{0}": 1, "ok": "y"});
        find_in_members(v.as_object().unwrap(), "", &mut out);
        let fields: Vec<_> = out.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["a[0].b", "m", "(body)"]);
    }
}
