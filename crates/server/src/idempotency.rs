//! `Idempotency-Key` on `POST`/`PATCH`/`DELETE` under `/v1`: a retried request
//! (same key, same method, path, `If-Match` and body, same caller) gets the first response
//! again — status, body, `ETag`, `Location` — for 24 hours, instead of running
//! twice. The same key with a different request is a 422
//! (`idempotency_key_reused`). Keys belong to the caller's token (a hash of it,
//! never the token itself); requests without a token share one anonymous scope.
//!
//! Invariant kept here: of concurrent requests with one key, one runs; the store's
//! primary key on (scope, key) decides, and the others wait for its response.

use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use syncflow_store::{KeyClaim, StoredResponse};

use crate::{ApiError, AppState};

pub(crate) const HEADER: &str = "idempotency-key";
/// Set on a response that is a replay of an earlier one.
pub(crate) const REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted.
const MAX_KEY: usize = 255;
/// Largest request or response body handled: the largest route body limit (the
/// edge holds each route's request body to its own limit before this runs).
const MAX_BODY: usize = crate::edge::SYNC_BODY_LIMIT;
/// How long a duplicate waits for the first request with its key to finish.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(10);
/// Response headers a replay repeats.
const KEPT_HEADERS: [&str; 3] = ["content-type", "etag", "location"];

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller's scope: a hash of its `Authorization` header, or `anonymous`.
fn scope(headers: &HeaderMap) -> String {
    match headers.get("authorization") {
        Some(v) => format!("token:{}", sha256_hex(&[v.as_bytes()])),
        None => "anonymous".to_string(),
    }
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Body::from(stored.body));
    *resp.status_mut() = status;
    if let Ok(Value::Object(headers)) = serde_json::from_str::<Value>(&stored.headers) {
        for (name, value) in headers {
            if let (Ok(n), Some(Ok(v))) =
                (HeaderName::try_from(name.as_str()), value.as_str().map(HeaderValue::from_str))
            {
                resp.headers_mut().insert(n, v);
            }
        }
    }
    resp.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// The middleware (a route layer on `/v1`, inside authentication).
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PATCH | Method::DELETE) {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match raw.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| b.is_ascii_graphic()) => k.to_string(),
        _ => {
            return ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters (a UUID is a good choice)"
            ))
            .into_response()
        }
    };
    let scope = scope(req.headers());
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return ApiError::PayloadTooLarge("request body over this route's limit".into()).into_response();
    };
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    // `If-Match` is part of the request: the same body against another version is another request.
    let if_match = parts.headers.get("if-match").map_or(&b""[..], |v| v.as_bytes());
    let hash = sha256_hex(&[parts.method.as_str().as_bytes(), target.as_bytes(), if_match, &bytes]);
    let store = &state.store;
    let deadline = Instant::now() + WAIT_FOR_FIRST;
    loop {
        match store.idempotency_claim(&scope, &key, &hash).await {
            Err(e) => return ApiError::from(e).into_response(),
            Ok(KeyClaim::Replay(stored)) => return replay(stored),
            Ok(KeyClaim::Mismatch) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    format!(
                        "Idempotency-Key `{key}` was already used with a different request (method, path or body); \
                         use a new key for a new request"
                    ),
                )
            }
            Ok(KeyClaim::InProgress) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(KeyClaim::InProgress) => {
                return error(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    format!("a request with Idempotency-Key `{key}` is still running; retry shortly"),
                )
            }
            Ok(KeyClaim::Run) => break,
        }
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = resp.into_parts();
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let _ = store.idempotency_release(&scope, &key).await;
            return ApiError::Internal(format!("reading the response to keep it for Idempotency-Key: {e}"))
                .into_response();
        }
    };
    let text = String::from_utf8(body.to_vec()).ok();
    match text {
        // Our own failures are not remembered: a retry with the key runs again.
        Some(text) if !parts.status.is_server_error() => {
            let mut kept = Map::new();
            for name in KEPT_HEADERS {
                if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                    kept.insert(name.to_string(), Value::String(v.to_string()));
                }
            }
            let stored =
                StoredResponse { status: parts.status.as_u16(), headers: Value::Object(kept).to_string(), body: text };
            if let Err(e) = store.idempotency_complete(&scope, &key, &stored).await {
                tracing::warn!(error = %e, "could not keep a response for its Idempotency-Key");
                let _ = store.idempotency_release(&scope, &key).await;
            }
        }
        _ => {
            let _ = store.idempotency_release(&scope, &key).await;
        }
    }
    Response::from_parts(parts, Body::from(body))
}
