//! `/v1/<entity>` routes, one set per entity descriptor: create, read, list, patch,
//! delete, with `ETag`/`If-Match` optimistic concurrency, and a record's history.
//! Reads show each record's links (its ids in external systems).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use syncflow_core::{Entity, FieldType, Record, Storage};
use syncflow_store::{links_json, Link, ListQuery};

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
            get(move |st: State<AppState>, id: Path<String>, q: QueryMap| fetch(entity, st, id, q))
                .patch(move |st: State<AppState>, id: Path<String>, m: IfMatch, body: JsonObject| {
                    patch(entity, st, id, m, body)
                })
                .delete(move |st: State<AppState>, id: Path<String>, m: IfMatch| remove(entity, st, id, m)),
        )
        .route(
            &format!("/v1/{}/{{id}}/history", entity.plural),
            get(move |st: State<AppState>, id: Path<String>| history(entity, st, id)),
        )
}

/// `order=asc|desc` (default `default_desc`): whether a list runs newest first.
pub(crate) fn descending(q: &QueryMap, default_desc: bool) -> Result<bool, ApiError> {
    match q.get("order") {
        None => Ok(default_desc),
        Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!("`order` must be asc or desc, not `{other}`"))),
    }
}

/// A record's JSON with its links: `"links": {"stripe": {"id": "cus_…", …}}`.
fn with_links(record: &Record, links: &[Link]) -> Value {
    let mut v = record.to_json();
    v["links"] = links_json(links);
    v
}

/// A record as JSON with its version as a strong ETag.
fn record_response(status: StatusCode, record: &Record) -> Response {
    json_with_etag(status, record, record.to_json())
}

fn json_with_etag(status: StatusCode, record: &Record, body: Value) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", record.version)) {
        headers.insert("etag", v);
    }
    (status, headers, Json(body)).into_response()
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
    q: QueryMap,
) -> Result<Response, ApiError> {
    if let Some((name, _)) = q.0.iter().find(|(k, _)| k != "include_deleted") {
        return Err(ApiError::BadRequest(format!("unknown query parameter `{name}`; use include_deleted")));
    }
    let include_deleted = q.flag("include_deleted")?;
    match state.store.get(entity, &id).await? {
        Some(r) if include_deleted || r.deleted_at.is_none() => {
            let links = state.store.links_of(entity, std::slice::from_ref(&r.id)).await?.remove(&r.id);
            Ok(json_with_etag(StatusCode::OK, &r, with_links(&r, &links.unwrap_or_default())))
        }
        _ => Err(ApiError::not_found(entity.name, &id)),
    }
}

/// `GET /v1/<plural>/{id}/history`: changes, deliveries, inward events and
/// conflicts of one record, in time order (deleted records included).
async fn history(
    entity: &'static Entity,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.record_history(entity, &id).await? {
        Some(h) => Ok(Json(h.to_json())),
        None => Err(ApiError::not_found(entity.name, &id)),
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
const LIST_PARAMS: &[&str] = &["limit", "after", "include_deleted", "order"];

async fn list(entity: &'static Entity, State(state): State<AppState>, q: QueryMap) -> Result<Response, ApiError> {
    let mut query = ListQuery {
        after: q.get("after").map(str::to_string),
        limit: q.number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)? as usize,
        include_deleted: q.flag("include_deleted")?,
        descending: descending(&q, false)?,
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
    // One read for the whole page's links.
    let ids: Vec<String> = page.data.iter().map(|r| r.id.clone()).collect();
    let mut links = state.store.links_of(entity, &ids).await?;
    Ok(Json(json!({
        "object": "list",
        "data": page.data.iter().map(|r| with_links(r, &links.remove(&r.id).unwrap_or_default())).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "next_after": next,
    }))
    .into_response())
}

/// Fields usable as `?field=value` list filters.
pub(crate) fn filterable(entity: &Entity) -> Vec<&'static str> {
    entity.fields.iter().filter(|f| f.ty.storage() == Storage::Text).map(|f| f.name).collect()
}
