//! The HTTP error type. Every failure becomes JSON with a stable `code`; client
//! mistakes get 4xx with a precise message, internal failures a generic 500 (the
//! detail goes to the log, not to the caller).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use syncflow_core::FieldError;
use syncflow_store::StoreError;

/// A validation problem inside a list in the request body (a sync batch item):
/// `field` is a path such as `changes[2].fields.email`, `index` the item's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemFieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl ItemFieldError {
    pub fn new(index: Option<usize>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { index, field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidCursor(String),
    /// A cursor below the retention horizon: sync again from the start.
    #[error("{0}")]
    CursorExpired(String),
    #[error("{0}")]
    NotFound(String),
    #[error("version mismatch: If-Match names version {expected}, the record is at version {current}")]
    VersionMismatch { expected: i64, current: i64 },
    #[error("{0}")]
    Conflict(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// A body over the route's limit, or any body on a route that takes none.
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("validation failed")]
    Invalid(Vec<FieldError>),
    #[error("validation failed; nothing was applied")]
    InvalidItems(Vec<ItemFieldError>),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidCursor(_) => StatusCode::BAD_REQUEST,
            ApiError::CursorExpired(_) => StatusCode::GONE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) | ApiError::InvalidItems(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable and stable: clients branch on this, not on the message.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::InvalidCursor(_) => "invalid_cursor",
            ApiError::CursorExpired(_) => "cursor_expired",
            ApiError::NotFound(_) => "not_found",
            ApiError::VersionMismatch { .. } => "version_mismatch",
            ApiError::Conflict(_) => "conflict",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Invalid(_) | ApiError::InvalidItems(_) => "validation_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound(format!("no {what} with id `{id}`"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        match &self {
            ApiError::Invalid(fields) => body["error"]["fields"] = json!(fields),
            ApiError::InvalidItems(fields) => body["error"]["fields"] = json!(fields),
            ApiError::VersionMismatch { current, .. } => body["error"]["current_version"] = json!(current),
            _ => {}
        }
        let mut resp = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Maps storage outcomes onto HTTP. `expected` is the If-Match version, if any.
pub fn from_store(e: StoreError, what: &str, id: &str, expected: Option<i64>) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(what, id),
        StoreError::VersionMismatch { current } => {
            ApiError::VersionMismatch { expected: expected.unwrap_or_default(), current }
        }
        StoreError::Invalid(fields) => ApiError::Invalid(fields),
        other => other.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Invalid(fields) => ApiError::Invalid(fields),
            StoreError::VersionMismatch { current } => ApiError::VersionMismatch { expected: 0, current },
            StoreError::InvalidBatch(items) => ApiError::InvalidItems(
                items
                    .into_iter()
                    .map(|e| ItemFieldError::new(Some(e.index), format!("[{}].{}", e.index, e.field), e.message))
                    .collect(),
            ),
            StoreError::CursorAhead { .. } => ApiError::InvalidCursor(format!(
                "{message}: it was issued by another hub or before a restore; sync again without a cursor"
            )),
            StoreError::CursorExpired { .. } => ApiError::CursorExpired(format!(
                "{message}: changes after it are no longer kept; do a full resync (sync without a cursor, \
                 or read from after=0) and replace the local copy"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
