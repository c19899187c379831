//! `GET /openapi.json`, generated from the entity descriptors so the document
//! cannot drift from what the API accepts.

use axum::Json;
use serde_json::{json, Map, Value};
use syncflow_core::{Entity, ENTITIES};

use crate::catalog::{filterable, DEFAULT_LIMIT, MAX_LIMIT};
use crate::changes::MAX_CHANGES;

pub(crate) async fn document() -> Json<Value> {
    Json(build())
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

pub fn build() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": ["bad_request", "unauthorized", "not_found", "version_mismatch",
                "conflict", "unsupported_media_type", "payload_too_large", "validation_failed", "unavailable", "internal"]},
            "message": {"type": "string"},
            "fields": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "message": {"type": "string"}}}},
            "current_version": {"type": "integer"}
        }}}}),
    );
    schemas.insert(
        "Change".into(),
        json!({"type": "object", "properties": {
            "seq": {"type": "integer"}, "entity": {"type": "string"}, "record_id": {"type": "string"},
            "op": {"type": "string", "enum": ["upsert", "delete"]}, "version": {"type": "integer"},
            "origin": {"type": "string", "description": "api, sql, a system name, or client:<id>"},
            "snapshot": {"type": "object", "description": "the record right after the change"},
            "created_at": {"type": "string", "format": "date-time"}}}),
    );
    let if_match = json!({"name": "If-Match", "in": "header", "required": false,
        "description": "Record version (as in the ETag); the write fails with 412 if it has moved on.",
        "schema": {"type": "string"}});
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    for entity in ENTITIES.iter().copied() {
        let (record, input, patch) = schemas_for(entity);
        let title = capitalise(entity.name);
        schemas.insert(title.clone(), record);
        schemas.insert(format!("{title}Input"), input);
        schemas.insert(format!("{title}Patch"), patch);
        let reference = |s: &str| json!({"$ref": format!("#/components/schemas/{s}")});
        let mut list_params = vec![
            json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}),
            json!({"name": "after", "in": "query", "description": "id of the last record of the previous page", "schema": {"type": "string"}}),
            json!({"name": "include_deleted", "in": "query", "schema": {"type": "boolean", "default": false}}),
        ];
        for f in filterable(entity) {
            list_params.push(json!({"name": f, "in": "query", "description": format!("only records whose {f} equals this"), "schema": {"type": "string"}}));
        }
        let tag = [entity.plural];
        paths.insert(
            format!("/v1/{}", entity.plural),
            json!({
                "get": {"tags": tag, "summary": format!("List {}", entity.plural), "parameters": list_params,
                    "responses": {"200": ok("a page", json!({"type": "object", "properties": {
                        "data": {"type": "array", "items": reference(&title)}, "has_more": {"type": "boolean"},
                        "next_after": {"type": ["string", "null"]}}})),
                        "400": error_response("bad query parameter"), "401": error_response("missing token")}},
                "post": {"tags": tag, "summary": format!("Create a {}", entity.name),
                    "requestBody": json_body(reference(&format!("{title}Input"))),
                    "responses": {"201": ok("created", reference(&title)), "400": error_response("malformed JSON"),
                        "415": error_response("not JSON"), "422": error_response("invalid fields"),
                        "401": error_response("missing token")}}
            }),
        );
        paths.insert(
            format!("/v1/{}/{{id}}", entity.plural),
            json!({
                "get": {"tags": tag, "summary": format!("Get a {}", entity.name), "parameters": [id_param],
                    "responses": {"200": ok("the record; ETag is its version", reference(&title)), "404": error_response("unknown or deleted")}},
                "patch": {"tags": tag, "summary": format!("Update a {} (merge patch)", entity.name), "parameters": [id_param, if_match],
                    "requestBody": json_body(reference(&format!("{title}Patch"))),
                    "responses": {"200": ok("updated", reference(&title)), "400": error_response("malformed JSON or If-Match"),
                        "404": error_response("unknown or deleted"), "412": error_response("version mismatch"),
                        "422": error_response("invalid fields")}},
                "delete": {"tags": tag, "summary": format!("Delete a {} (tombstone)", entity.name), "parameters": [id_param, if_match],
                    "responses": {"200": ok("the tombstone", reference(&title)), "404": error_response("unknown or deleted"),
                        "412": error_response("version mismatch")}}
            }),
        );
    }
    paths.insert(
        "/v1/changes".into(),
        json!({"get": {"tags": ["changes"], "summary": "Read the change log in order",
            "parameters": [
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHANGES, "default": 100}}],
            "responses": {"200": ok("changes with seq > after", json!({"type": "object", "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
                "next_after": {"type": "integer"}}}))}}}),
    );
    for (path, summary) in
        [("/healthz", "Liveness"), ("/readyz", "Readiness: the database answers"), ("/metrics", "Prometheus metrics")]
    {
        paths.insert(
            path.into(),
            json!({"get": {"tags": ["operations"], "summary": summary, "security": [],
            "responses": {"200": {"description": "ok"}}}}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Syncflow", "version": env!("CARGO_PKG_VERSION"),
            "description": "Two-way data sync hub: catalog, change log and sync API."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    })
}

/// Record, create-input and patch schemas of one entity.
fn schemas_for(entity: &Entity) -> (Value, Value, Value) {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in entity.fields {
        let mut schema = f.ty.json_schema();
        if !f.required {
            schema["nullable"] = json!(true);
        }
        props.insert(f.name.into(), schema);
        if f.required {
            required.push(f.name);
        }
    }
    let input = json!({"type": "object", "additionalProperties": false, "required": required, "properties": props});
    let patch = json!({"type": "object", "additionalProperties": false, "properties": props});
    let mut record_props = props.clone();
    record_props.insert("id".into(), json!({"type": "string", "readOnly": true}));
    record_props.insert("object".into(), json!({"type": "string", "const": entity.name}));
    record_props.insert("version".into(), json!({"type": "integer", "readOnly": true}));
    for ts in ["created_at", "updated_at"] {
        record_props.insert(ts.into(), json!({"type": "string", "format": "date-time", "readOnly": true}));
    }
    record_props.insert("deleted_at".into(), json!({"type": ["string", "null"], "format": "date-time"}));
    let record = json!({"type": "object", "properties": record_props});
    (record, input, patch)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}
