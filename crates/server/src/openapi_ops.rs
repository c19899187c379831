//! The two-way operator part of `/openapi.json`: conflicts, the inbox and nodes (systems
//! and deliveries are in `openapi.rs`). `tests/api.rs` checks that every route the
//! router serves is described.

use serde_json::{json, Map, Value};

fn list_of(description: &str, item: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object", "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": item}, "has_more": {"type": "boolean"}}}}}})
}

fn one(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn param(name: &str, place: &str, description: &str) -> Value {
    json!({"name": name, "in": place, "required": place == "path", "description": description, "schema": {"type": "string"}})
}

/// Adds the operator paths and their schemas.
pub(crate) fn add(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    schemas.insert(
        "Conflict".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "system": {"type": "string"}, "entity": {"type": "string"},
            "record_id": {"type": "string"}, "field": {"type": "string"}, "hub_value": {}, "external_value": {},
            "policy": {"type": "string", "enum": ["external_wins", "hub_wins", "newest_wins", "manual"]},
            "winner": {"type": ["string", "null"], "enum": ["hub", "external", null]},
            "status": {"type": "string", "enum": ["open", "resolved"]},
            "resolution": {"type": ["string", "null"]}, "created_at": {"type": "string", "format": "date-time"}}}),
    );
    schemas.insert(
        "InboxEvent".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "system": {"type": "string"}, "event_id": {"type": "string"},
            "type": {"type": "string"}, "external_id": {"type": ["string", "null"]},
            "outcome": {"type": "string", "enum": ["received", "applied", "echo", "stale", "ignored", "rejected", "dead", "failed"]},
            "attempts": {"type": "integer"}, "record_id": {"type": ["string", "null"]},
            "remarks": {"type": ["string", "null"]}}}),
    );
    let conflict = json!({"$ref": "#/components/schemas/Conflict"});
    let name = param("name", "path", "system name");
    let id = param("id", "path", "id");
    let ops = |summary: &str| json!({"tags": ["operations"], "summary": summary});
    let with = |mut op: Value, params: Vec<Value>, responses: Value| {
        op["parameters"] = Value::Array(params);
        op["responses"] = responses;
        op
    };
    paths.insert(
        "/v1/systems/{name}/inbox/replay".into(),
        json!({"post": with(ops("Apply a system's rejected and dead inward events again (?event_id= for one)"),
            vec![name, param("event_id", "query", "one event only")],
            json!({"200": one("requeued", json!({"type": "object", "properties": {"requeued": {"type": "integer"}}})),
                "404": error("no such system")}))}),
    );
    paths.insert(
        "/v1/conflicts".into(),
        json!({"get": with(ops("Same-field conflicts, newest first"), vec![
                param("system", "query", "system name"), param("record_id", "query", "hub record id"),
                param("status", "query", "open or resolved"), param("before", "query", "conflict id (paging)"),
                param("limit", "query", "1–500")],
            json!({"200": list_of("conflicts", conflict.clone()), "400": error("bad filter")}))}),
    );
    paths.insert(
        "/v1/conflicts/{id}".into(),
        json!({"get": with(ops("One conflict"), vec![id.clone()],
            json!({"200": one("the conflict", conflict.clone()), "404": error("no such conflict")}))}),
    );
    paths.insert(
        "/v1/conflicts/{id}/resolve".into(),
        json!({"post": {
            "tags": ["operations"],
            "summary": "Resolve an open conflict: keep the hub's value, the external one, or a new value",
            "parameters": [id],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                "required": ["keep"], "properties": {"keep": {"type": "string", "enum": ["hub", "external", "value"]},
                "value": {"description": "with keep = value"}}}}}},
            "responses": {"200": one("resolved; the record as written", json!({"type": "object", "properties": {
                    "conflict": conflict, "record": {"type": "object"}}})),
                "400": error("bad body"), "404": error("no such conflict"), "409": error("already resolved")}}}),
    );
    schemas.insert(
        "Node".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "string"}, "host": {"type": "string"}, "version": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "last_seen_at": {"type": "string", "format": "date-time"}, "seen_ms_ago": {"type": "integer"}}}),
    );
    paths.insert(
        "/v1/nodes".into(),
        json!({"get": with(ops("Engines sharing this database (heartbeats; silent nodes are dropped)"), vec![],
            json!({"200": list_of("nodes", json!({"$ref": "#/components/schemas/Node"}))}))}),
    );
    schemas.insert(
        "ReconcileRun".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "system": {"type": "string"}, "entity": {"type": "string"},
            "trigger": {"type": "string", "enum": ["cli", "schedule", "api"]}, "repair": {"type": "boolean"},
            "status": {"type": "string", "enum": ["running", "completed", "failed"]},
            "counts": {"type": "object", "description": "checked, in_flight, missing_remote, missing_local, field_drift, orphan_link, duplicate, repaired, repair_failed"},
            "samples": {"type": "array", "items": {"type": "object"}}, "api_calls": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]}, "started_at": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": ["integer", "null"]}}}),
    );
    schemas.insert(
        "Hold".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "system": {"type": "string"}, "entity": {"type": "string"},
            "record_id": {"type": "string"}, "external_id": {"type": "string"},
            "side": {"type": "string", "enum": ["inward", "outward"],
                "description": "inward: a system's deletion held before the hub applies it; outward: a hub deletion held before it is delivered to the system"},
            "origin": {"type": "string", "description": "who deleted: the system (inward), or api, sql, a client (outward)"},
            "inbox_id": {"type": ["integer", "null"]}, "delivery_id": {"type": ["integer", "null"]},
            "status": {"type": "string", "enum": ["held", "released", "discarded"]}, "reason": {"type": "string"}}}),
    );
    let run = json!({"$ref": "#/components/schemas/ReconcileRun"});
    let hold = json!({"$ref": "#/components/schemas/Hold"});
    paths.insert(
        "/v1/reconcile/runs".into(),
        json!({"get": with(ops("Reconcile runs, newest first"), vec![param("system", "query", "system name"),
                param("before", "query", "run id (paging)"), param("limit", "query", "1–200")],
            json!({"200": list_of("runs", run.clone()), "400": error("bad filter")}))}),
    );
    paths.insert(
        "/v1/reconcile/runs/{id}".into(),
        json!({"get": with(ops("One reconcile run"), vec![id.clone()],
            json!({"200": one("the run", run), "404": error("no such run")}))}),
    );
    paths.insert(
        "/v1/systems/{name}/reconcile".into(),
        json!({"post": with(ops("Start a reconcile run of a two-way system in the background"), vec![param("name", "path", "system name"),
                param("repair", "query", "true: heal what is found"), param("entity", "query", "one entity only")],
            json!({"202": one("started; the run shows in /v1/reconcile/runs", json!({"type": "object"})),
                "400": error("not a two-way system, or a bad parameter"), "404": error("no such system")}))}),
    );
    paths.insert(
        "/v1/holds".into(),
        json!({"get": with(ops("Deletions held by the mass-delete breaker"), vec![param("system", "query", "system name"),
                param("status", "query", "held (default), released, discarded or all"), param("limit", "query", "1–1000")],
            json!({"200": list_of("holds", hold.clone()), "400": error("bad filter")}))}),
    );
    for (action, summary) in [
        ("release", "Apply (inward) or deliver (outward) a held deletion"),
        ("discard", "Drop a held deletion: the hub (inward) or the system (outward) keeps the record"),
    ] {
        paths.insert(
            format!("/v1/holds/{{id}}/{action}"),
            json!({"post": with(ops(summary), vec![id.clone()],
                json!({"200": one("the hold", hold.clone()), "404": error("no such hold"), "409": error("not held any more")}))}),
        );
    }
    paths.insert(
        "/v1/inbox".into(),
        json!({"get": with(ops("Inward events of a system, oldest first"), vec![
                json!({"name": "system", "in": "query", "required": true, "schema": {"type": "string"}}),
                param("outcome", "query", "received, applied, echo, stale, ignored, rejected, dead"),
                param("after", "query", "inbox id (paging)"), param("limit", "query", "1–500")],
            json!({"200": list_of("inward events", json!({"$ref": "#/components/schemas/InboxEvent"})),
                "400": error("bad filter"), "404": error("no such system")}))}),
    );
}
