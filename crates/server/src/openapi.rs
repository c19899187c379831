//! `GET /openapi.json`, generated from the entity descriptors so the document
//! cannot drift from what the API accepts.

use axum::Json;
use serde_json::{json, Map, Value};
use syncflow_core::{Entity, ENTITIES};

use crate::catalog::{filterable, DEFAULT_LIMIT, MAX_LIMIT};
use crate::changes::MAX_CHANGES;
use crate::sync::{DEFAULT_PULL, MAX_BATCH, MAX_PULL};

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
                "code": {"type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "invalid_cursor", "cursor_expired", "not_found", "version_mismatch", "conflict",
                    "unsupported_media_type", "payload_too_large", "validation_failed", "unavailable", "internal",
                    "idempotency_key_reused", "idempotency_key_in_use"]},
                "message": {"type": "string"},
                "fields": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string", "description": "field name, or a path such as changes[2].fields.email"},
                    "message": {"type": "string"},
                    "index": {"type": "integer", "description": "position of the bad item in a batch"}}}},
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
    let idempotency_key = json!({"name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Makes the write safe to retry: the same key with the same request (per token) within 24 h \
            gets the first response again (status, body, ETag; header Idempotent-Replayed: true) instead of running \
            twice; the same key with a different request is a 422 idempotency_key_reused.",
        "schema": {"type": "string", "maxLength": 255}});
    let order = |default: &str, what: &str| {
        json!({"name": "order", "in": "query", "description": format!("asc: oldest first; desc: newest first ({what}). \
            `after` continues in the chosen direction."), "schema": {"type": "string", "enum": ["asc", "desc"], "default": default}})
    };
    schemas.insert(
        "Links".into(),
        json!({"type": "object", "description": "the record's id in each external system, by system name",
            "additionalProperties": {"type": "object", "properties": {
                "id": {"type": "string", "description": "the external id, e.g. cus_…"},
                "synced_version": {"type": ["integer", "null"], "description": "record version last in agreement with that system"},
                "synced_at": {"type": "string", "format": "date-time"}}}}),
    );
    schemas.insert(
        "History".into(),
        json!({"type": "object", "properties": {
            "entity": {"type": "string"}, "record_id": {"type": "string"},
            "record": {"type": ["object", "null"], "description": "current state (a tombstone when deleted)"},
            "links": {"$ref": "#/components/schemas/Links"},
            "timeline": {"type": "array", "description": "everything below, in time order", "items": {"type": "object", "properties": {
                "at": {"type": "string", "format": "date-time"},
                "kind": {"type": "string", "enum": ["change", "delivery", "inward", "conflict"]},
                "system": {"type": "string", "description": "a change's origin, a delivery's target, an event's source"},
                "outcome": {"type": "string", "description": "upsert v3, delivered, retrying, dead, skipped, applied, echo, stale, …"},
                "reference": {"type": "string"}, "remarks": {"type": ["string", "null"]}}}},
            "changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
            "deliveries": {"type": "object", "description": "per system: deliveries with status, remarks and attempt history",
                "additionalProperties": {"type": "array", "items": {"type": "object"}}},
            "inward": {"type": "array", "description": "inbox rows (webhooks, polls) applied to this record or naming its external ids",
                "items": {"type": "object", "properties": {"system": {"type": "string"}, "event_id": {"type": "string"},
                    "type": {"type": "string"}, "outcome": {"type": "string"}, "remarks": {"type": ["string", "null"]}}}},
            "conflicts": {"type": "array", "items": {"type": "object"}, "description": "same-field conflicts recorded for it"}}}),
    );
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
            order("asc", "by id, which is creation time"),
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
                "post": {"tags": tag, "summary": format!("Create a {}", entity.name), "parameters": [idempotency_key],
                    "requestBody": json_body(reference(&format!("{title}Input"))),
                    "responses": {"201": ok("created", reference(&title)), "400": error_response("malformed JSON"),
                        "415": error_response("not JSON"), "422": error_response("invalid fields, or an Idempotency-Key reused with another body"),
                        "409": error_response("a request with this Idempotency-Key is still running"),
                        "401": error_response("missing token")}}
            }),
        );
        paths.insert(
            format!("/v1/{}/{{id}}", entity.plural),
            json!({
                "get": {"tags": tag, "summary": format!("Get a {} (with its links)", entity.name), "parameters": [id_param,
                        {"name": "include_deleted", "in": "query", "description": "true: a deleted record is returned as its tombstone instead of 404",
                         "schema": {"type": "boolean", "default": false}}],
                    "responses": {"200": ok("the record; ETag is its version", reference(&title)), "404": error_response("unknown or deleted")}},
                "patch": {"tags": tag, "summary": format!("Update a {} (merge patch)", entity.name), "parameters": [id_param, if_match, idempotency_key],
                    "requestBody": json_body(reference(&format!("{title}Patch"))),
                    "responses": {"200": ok("updated", reference(&title)), "400": error_response("malformed JSON or If-Match"),
                        "404": error_response("unknown or deleted"), "412": error_response("version mismatch"),
                        "422": error_response("invalid fields")}},
                "delete": {"tags": tag, "summary": format!("Delete a {} (tombstone)", entity.name), "parameters": [id_param, if_match, idempotency_key],
                    "responses": {"200": ok("the tombstone", reference(&title)), "404": error_response("unknown or deleted"),
                        "412": error_response("version mismatch")}}
            }),
        );
        paths.insert(
            format!("/v1/{}/{{id}}/history", entity.plural),
            json!({"get": {"tags": tag, "summary": format!("A {}'s history: changes, deliveries, inward events, conflicts, in time order", entity.name),
                "parameters": [id_param],
                "responses": {"200": ok("the history", reference("History")), "404": error_response("no such record")}}}),
        );
    }
    let entity_names: Vec<&str> = ENTITIES.iter().map(|e| e.name).collect();
    let entity_filter = json!({"name": "entity", "in": "query",
        "description": "comma-separated entity names; default: every entity the token may see",
        "schema": {"type": "string"}, "example": entity_names.join(",")});
    paths.insert(
        "/v1/changes".into(),
        json!({"get": {"tags": ["changes"], "summary": "Read the change log in order (long-poll with wait)",
            "parameters": [
                {"name": "after", "in": "query", "description": "continue past this seq (below it with order=desc)", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CHANGES, "default": 100}},
                {"name": "wait", "in": "query", "description": "hold the request until a change arrives or this long passes: 30s, 500ms, 1m (at most 60s); order=asc only",
                    "schema": {"type": "string"}},
                {"name": "record_id", "in": "query", "description": "only this record's changes (the response then has has_more)", "schema": {"type": "string"}},
                order("asc", "the log's own order"),
                entity_filter.clone()],
            "responses": {"200": ok("changes with seq > after", json!({"type": "object", "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
                "has_more": {"type": "boolean", "description": "with record_id or order=desc"},
                "next_after": {"type": ["integer", "null"], "description": "pass as `after` next time (null: the last page of a newest-first read)"}}})),
                "400": error_response("bad parameter, or `after` beyond the log (invalid_cursor)"),
                "410": error_response("`after` is older than the retained log (cursor_expired): read again from after=0"),
                "403": error_response("entity not allowed for this client")}}}),
    );
    paths.insert(
        "/v1/stream".into(),
        json!({"get": {"tags": ["changes"], "summary": "Server-sent events: one `change` event per change, id = change seq",
            "parameters": [
                {"name": "Last-Event-ID", "in": "header", "description": "resume after this change seq (sent by EventSource on reconnect)", "schema": {"type": "string"}},
                {"name": "after", "in": "query", "description": "start after this seq; default: the head (new changes only)", "schema": {"type": "integer", "minimum": 0}},
                entity_filter],
            "responses": {"200": {"description": "text/event-stream; data is a Change; idle streams get `: keep-alive` comments",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "400": error_response("bad parameter, or a position beyond the log"),
                "410": error_response("a position older than the retained log (cursor_expired): start again without one"),
                "403": error_response("entity not allowed for this client")}}}),
    );
    schemas.insert("SyncChange".into(), json!({"type": "object", "required": ["entity"],
        "additionalProperties": false, "properties": {
            "entity": {"type": "string", "enum": entity_names},
            "op": {"type": "string", "enum": ["upsert", "delete"], "default": "upsert"},
            "id": {"type": "string", "description": "hub id of an existing record"},
            "client_ref": {"type": "string", "maxLength": 128, "description": "the client's own id for a record it created; mapped to a hub id per client"},
            "fields": {"type": "object", "description": "upsert: merge patch (whole record on create); absent on delete"},
            "updated_at": {"type": "string", "format": "date-time", "description": "when the client made the edit (last-writer-wins clock); default: now"},
            "base_version": {"type": "integer", "minimum": 0, "description": "hub version the edit was based on; 0 or absent: a new record"}}}));
    schemas.insert(
        "SyncResult".into(),
        json!({"type": "object", "properties": {
        "index": {"type": "integer"}, "entity": {"type": "string"},
        "status": {"type": "string", "enum": ["created", "updated", "deleted", "unchanged", "conflict"]},
        "id": {"type": ["string", "null"]}, "client_ref": {"type": "string"}, "version": {"type": ["integer", "null"]},
        "updated_at": {"type": ["string", "null"]}, "writer": {"type": ["string", "null"]},
        "record": {"type": ["object", "null"], "description": "the record as the hub now has it"},
        "conflict": {"type": "object", "properties": {
            "policy": {"type": "string", "enum": ["last_writer_wins", "reject_stale"]},
            "winner": {"type": "string", "enum": ["client", "hub"]},
            "reason": {"type": "string", "enum": ["older_edit", "stale_base_version", "deleted"]},
            "losing": {"type": "object", "description": "the value that lost, to show the user",
                "properties": {"op": {"type": "string"}, "updated_at": {"type": "string"}, "writer": {"type": "string"},
                    "version": {"type": ["integer", "null"]}, "value": {}}}}}}}),
    );
    paths.insert(
        "/v1/sync".into(),
        json!({"post": {"tags": ["sync"], "summary": "Push a batch of client edits (atomically) and pull what the client lacks",
            "parameters": [{"name": "Syncflow-Client", "in": "header", "description": "client id, for full-access tokens only (client tokens carry their id)", "schema": {"type": "string"}}],
            "requestBody": json_body(json!({"type": "object", "additionalProperties": false, "properties": {
                "cursor": {"type": ["string", "null"], "description": "opaque; from the previous response; absent on first sync"},
                "changes": {"type": "array", "maxItems": MAX_BATCH, "items": {"$ref": "#/components/schemas/SyncChange"}},
                "conflict_policy": {"type": "string", "enum": ["last_writer_wins", "reject_stale"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PULL, "default": DEFAULT_PULL}}})),
            "responses": {"200": ok("results of the push, then what the client lacks", json!({"type": "object", "properties": {
                    "cursor": {"type": "string"}, "has_more": {"type": "boolean"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/SyncResult"}},
                    "changes": {"type": "array", "items": {"type": "object", "properties": {
                        "entity": {"type": "string"}, "id": {"type": "string"}, "op": {"type": "string", "enum": ["upsert", "delete"]},
                        "version": {"type": "integer"}, "updated_at": {"type": "string"}, "writer": {"type": "string"},
                        "record": {"type": "object", "description": "current state; a tombstone (deleted_at set) for a delete"}}}}}})),
                "400": error_response("malformed JSON or invalid cursor"),
                "410": error_response("cursor older than the retained change log (cursor_expired): sync again without a cursor (full resync)"),
                "401": error_response("missing token"),
                "403": error_response("entity not allowed for this client; nothing applied"),
                "422": error_response("invalid items, listed with their index; nothing applied")}}}),
    );
    let reading = json!({"type": "object", "properties": {
        "gtin": {"type": "string"}, "updated_at": {"type": "string", "format": "date-time"},
        "expiration_date": {"type": "string", "format": "date-time"}}});
    paths.insert(
        "/v1/sync/".into(),
        json!({"post": {"tags": ["sync"], "summary": "The 001 seed's sync protocol (stock readings), kept for its clients",
            "requestBody": json_body(json!({"type": "object", "required": ["last_sync_date"], "properties": {
                "last_sync_date": {"type": "string", "format": "date-time"},
                "newly_created_records": {"type": "array", "items": reading.clone()}}})),
            "responses": {"200": ok("readings the client lacks", json!({"type": "object", "properties": {
                    "data": {"type": "array", "items": reading.clone()}}})),
                "422": error_response("invalid records; nothing applied")}}}),
    );
    let readings = json!({"get": {"tags": ["sync"], "summary": "All stock readings in the seed's shape, newest first",
        "responses": {"200": ok("readings", json!({"type": "object", "properties": {
            "data": {"type": "array", "items": reading}}}))}}});
    paths.insert("/v1/readings".into(), readings.clone());
    paths.insert("/v1/readings/".into(), readings);
    paths.insert(
        "/webhooks/{system}".into(),
        json!({"post": {"tags": ["webhooks"], "security": [],
            "summary": "Receive a signed event from an external system (Stripe: `Stripe-Signature`)",
            "parameters": [{"name": "system", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {
                "200": ok("recorded in the inbox (and applied)", json!({"type": "object", "properties": {
                    "event_id": {"type": "string"},
                    "outcome": {"type": "string", "enum": ["received", "applied", "echo", "stale", "ignored", "rejected", "dead"],
                        "description": "received: recorded, not applied yet (retried with backoff; see remarks)"},
                    "duplicate": {"type": "boolean"},
                    "remarks": {"type": "string"}}})),
                "400": error_response("missing, malformed, wrong or expired signature, or not an event; nothing stored"),
                "404": error_response("no such system, or it takes no webhooks"),
                "503": error_response("could not be recorded; retry")}}}),
    );
    let delivery = json!({"type": "object", "properties": {
        "id": {"type": "integer"}, "change_seq": {"type": "integer"}, "system": {"type": "string"},
        "kind": {"type": "string", "enum": ["change", "callback"]}, "entity": {"type": "string"}, "record_id": {"type": "string"},
        "op": {"type": "string"}, "status": {"type": "string", "enum": ["pending", "in_flight", "delivered", "retrying", "dead", "skipped", "held"]},
        "attempts": {"type": "integer"}, "next_attempt_at": {"type": ["string", "null"]}, "http_status": {"type": ["integer", "null"]},
        "external_id": {"type": ["string", "null"]}, "remarks": {"type": ["string", "null"], "description": "why it failed, in words"},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "finished_at": {"type": ["string", "null"]}}});
    schemas.insert("Delivery".into(), delivery);
    let delivery_ref = json!({"$ref": "#/components/schemas/Delivery"});
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let num_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "integer"}});
    paths.insert(
        "/v1/systems".into(),
        json!({"get": {"tags": ["operations"], "summary": "Systems with their queues, and the dispatcher's position",
            "responses": {"200": ok("systems", json!({"type": "object", "properties": {
                "data": {"type": "array", "items": {"type": "object"}},
                "dispatch": {"type": "object", "properties": {"cursor": {"type": "integer"}, "head": {"type": "integer"},
                    "lag": {"type": "integer", "description": "changes past the cursor that some system will receive (0 when none subscribes)"}}}}}))}}}),
    );
    for (action, summary) in [
        ("pause", "Stop delivering to a system"),
        ("resume", "Resume delivering to a system"),
        ("replay", "Requeue all of a system's dead deliveries"),
    ] {
        paths.insert(
            format!("/v1/systems/{{name}}/{action}"),
            json!({"post": {"tags": ["operations"], "summary": summary, "parameters": [name_param],
                "responses": {"200": ok("done", json!({"type": "object"})), "404": error_response("no such system")}}}),
        );
    }
    paths.insert(
        "/v1/deliveries".into(),
        json!({"get": {"tags": ["operations"], "summary": "The transaction table, newest first by default",
            "parameters": [
                {"name": "system", "in": "query", "schema": {"type": "string"}},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "in_flight", "delivered", "retrying", "dead", "skipped", "held"]}},
                {"name": "record_id", "in": "query", "schema": {"type": "string"}},
                {"name": "change", "in": "query", "description": "change seq", "schema": {"type": "integer"}},
                {"name": "after", "in": "query", "description": "delivery id of the last row of the previous page", "schema": {"type": "integer"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                order("desc", "newest first is the default here, as in `syncflow deliveries`")],
            "responses": {"200": ok("a page", json!({"type": "object", "properties": {
                "data": {"type": "array", "items": delivery_ref.clone()}, "has_more": {"type": "boolean"},
                "next_after": {"type": ["integer", "null"]}}})), "400": error_response("bad parameter")}}}),
    );
    paths.insert(
        "/v1/deliveries/{id}".into(),
        json!({"get": {"tags": ["operations"], "summary": "One delivery with its attempt history", "parameters": [num_param("id")],
            "responses": {"200": ok("the delivery; `history` lists attempts", delivery_ref.clone()), "404": error_response("no such delivery")}}}),
    );
    paths.insert(
        "/v1/deliveries/{id}/retry".into(),
        json!({"post": {"tags": ["operations"], "summary": "Requeue a dead delivery", "parameters": [num_param("id")],
            "responses": {"200": ok("requeued", delivery_ref.clone()), "404": error_response("no such delivery"),
                "409": error_response("not dead")}}}),
    );
    paths.insert(
        "/v1/changes/{seq}/deliveries".into(),
        json!({"get": {"tags": ["operations"], "summary": "The deliveries of one change", "parameters": [num_param("seq")],
            "responses": {"200": ok("deliveries", json!({"type": "object", "properties": {
                "data": {"type": "array", "items": delivery_ref}}})), "404": error_response("no such change")}}}),
    );
    crate::openapi_ops::add(&mut paths, &mut schemas);
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
    record_props.insert(
        "links".into(),
        json!({"$ref": "#/components/schemas/Links", "readOnly": true,
        "description": "on GET and lists: the record's ids in external systems"}),
    );
    let record = json!({"type": "object", "properties": record_props});
    (record, input, patch)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}
