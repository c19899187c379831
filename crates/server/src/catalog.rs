//! `/v1/<entity>` routes, one set per entity descriptor: create, read, list, patch,
//! delete, with `ETag`/`If-Match` optimistic concurrency.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use syncflow_core::{Entity, FieldType, Record, Storage};
use syncflow_store::ListQuery;

use crate::error::from_store;
use crate::extract::{IfMatch, JsonObject, QueryMap};
use crate::{ApiError, AppState};

pub(crate) const DEFAULT_LIMIT: i64 = 50;
pub(crate) const MAX_LIMIT: i64 = 500;

pub(crate) fn routes(entity: &'static Entity) -> Router<AppState> {
    Router::new()
        .route(
            &format!("/v1/{}", entity.plural),
            get(move |st: State<AppState>, q: QueryMap| list(entity, st, q))
                .post(move |st: State<AppState>, body: JsonObject| create(entity, st, body)),
        )
        .route(
            &format!("/v1/{}/{{id}}", entity.plural),
            get(move |st: State<AppState>, id: Path<String>| fetch(entity, st, id))
                .patch(move |st: State<AppState>, id: Path<String>, m: IfMatch, body: JsonObject| {
                    patch(entity, st, id, m, body)
                })
                .delete(move |st: State<AppState>, id: Path<String>, m: IfMatch| remove(entity, st, id, m)),
        )
}

/// A record as JSON with its version as a strong ETag.
fn record_response(status: StatusCode, record: &Record) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", record.version)) {
        headers.insert("etag", v);
    }
    (status, headers, Json(record.to_json())).into_response()
}

async fn create(
    entity: &'static Entity,
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let record = state.store.create(entity, &body, "api").await.map_err(|e| from_store(e, entity.name, "", None))?;
    let mut resp = record_response(StatusCode::CREATED, &record);
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/{}/{}", entity.plural, record.id)) {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

async fn fetch(
    entity: &'static Entity,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.get(entity, &id).await? {
        Some(r) if r.deleted_at.is_none() => Ok(record_response(StatusCode::OK, &r)),
        _ => Err(ApiError::not_found(entity.name, &id)),
    }
}

async fn patch(
    entity: &'static Entity,
    State(state): State<AppState>,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let record = state
        .store
        .update(entity, &id, &body, expected, "api")
        .await
        .map_err(|e| from_store(e, entity.name, &id, expected))?;
    Ok(record_response(StatusCode::OK, &record))
}

async fn remove(
    entity: &'static Entity,
    State(state): State<AppState>,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> Result<Response, ApiError> {
    let record = state
        .store
        .delete(entity, &id, expected, "api")
        .await
        .map_err(|e| from_store(e, entity.name, &id, expected))?;
    Ok(record_response(StatusCode::OK, &record))
}

/// Query parameters a list accepts besides field filters.
const LIST_PARAMS: &[&str] = &["limit", "after", "include_deleted"];

async fn list(entity: &'static Entity, State(state): State<AppState>, q: QueryMap) -> Result<Response, ApiError> {
    let mut query = ListQuery {
        after: q.get("after").map(str::to_string),
        limit: q.number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)? as usize,
        include_deleted: q.flag("include_deleted")?,
        filters: Vec::new(),
    };
    for (name, value) in &q.0 {
        if LIST_PARAMS.contains(&name.as_str()) {
            continue;
        }
        match entity.field(name) {
            Some(def) if def.ty.storage() == Storage::Text && def.ty != FieldType::Metadata => {
                query.filters.push((def.name, value.clone()));
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{name}`; filter by one of: {}",
                    filterable(entity).join(", ")
                )))
            }
        }
    }
    let page = state.store.list(entity, &query).await?;
    let next = if page.has_more { page.data.last().map(|r| Value::String(r.id.clone())) } else { None };
    Ok(Json(json!({
        "object": "list",
        "data": page.data.iter().map(Record::to_json).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "next_after": next,
    }))
    .into_response())
}

/// Fields usable as `?field=value` list filters.
pub(crate) fn filterable(entity: &Entity) -> Vec<&'static str> {
    entity.fields.iter().filter(|f| f.ty.storage() == Storage::Text).map(|f| f.name).collect()
}
