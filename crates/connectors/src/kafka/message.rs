//! The messages on Syncflow's topics, as pure functions (see `docs/kafka.md` and
//! `docs/kafka-envelope.schema.json`):
//!
//! * changes out — key `<entity>/<record_id>`, value the `http` connector's body
//!   (change metadata + the record), headers `id` (the change seq),
//!   `syncflow-origin`, `syncflow-delivery`, `content-type`;
//! * delivery outcomes out — same key, value one `DeliveryOutcome`;
//! * events in — `{"event_id"?, "entity", "op", "id"?, "external_id"?, "fields",
//!   "occurred_at"?}`, checked against the entity's fields.

use serde_json::{Map, Value};
use syncflow_core::Entity;

use crate::{DeliveryOutcome, InwardEvent, PushRequest};

pub const CONTENT_TYPE: &str = "application/json";

/// The partition key of a record's messages: per-record order.
pub fn key(entity: &str, record_id: &str) -> String {
    format!("{entity}/{record_id}")
}

/// The topic a change goes to (`{entity}` replaced).
pub fn topic_for(pattern: &str, entity: &str) -> String {
    pattern.replace("{entity}", entity)
}

/// The value of a change message: the same envelope the `http` connector POSTs.
pub fn change_value(req: &PushRequest<'_>) -> Vec<u8> {
    crate::http::push_body(req)
}

/// Headers of a change message, as (name, value).
pub fn change_headers(req: &PushRequest<'_>) -> [(&'static str, String); 4] {
    [
        ("id", req.change.seq.to_string()),
        ("syncflow-origin", req.change.origin.clone()),
        ("syncflow-delivery", req.delivery_id.to_string()),
        ("content-type", CONTENT_TYPE.to_string()),
    ]
}

/// The value of a delivery-outcome message.
pub fn status_value(o: &DeliveryOutcome) -> Vec<u8> {
    serde_json::to_vec(o).expect("JSON values serialise")
}

/// The `id` header of a delivery-outcome message: one per final outcome (a
/// replayed delivery's next outcome gets another).
pub fn status_id(o: &DeliveryOutcome) -> String {
    format!("{}@{}", o.delivery_id, o.finished_at)
}

/// Where an inbound message came from, its fallback event id.
pub fn position(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Splits a `position` back into topic, partition and offset (topic names have no `/`).
pub fn parse_position(position: &str) -> Option<(&str, i32, i64)> {
    let mut parts = position.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((parts.next()?, partition, offset))
}

/// Reads an inbound message: `bytes` is its value, `fallback_id` its event id when
/// the value names none (the `id` header, else the position), `timestamp`
/// (seconds) its time when the value gives none. Returns the event and the message
/// normalised for the inbox (event id and time filled in), which `parse_stored`
/// reads back to the same event.
pub fn parse_inbound(bytes: &[u8], fallback_id: &str, timestamp: i64) -> Result<(InwardEvent, String), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut msg) = value else { return Err("not a JSON object".into()) };
    if msg.get("event_id").is_none_or(|v| v.as_str().is_none_or(str::is_empty)) {
        msg.insert("event_id".into(), Value::String(fallback_id.to_string()));
    }
    let at = match msg.get("occurred_at") {
        None | Some(Value::Null) => timestamp,
        Some(Value::Number(n)) => n.as_i64().ok_or("`occurred_at` must be whole seconds or RFC 3339")?,
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("`occurred_at` `{s}` is not RFC 3339: {e}"))?
            .timestamp(),
        Some(_) => return Err("`occurred_at` must be whole seconds or RFC 3339".into()),
    };
    msg.insert("occurred_at".into(), Value::from(at));
    let event = parse_normalised(&msg)?;
    Ok((event, Value::Object(msg).to_string()))
}

/// Reads a message as `parse_inbound` stored it.
pub fn parse_stored(payload: &str) -> Result<InwardEvent, String> {
    match serde_json::from_str(payload) {
        Ok(Value::Object(msg)) => parse_normalised(&msg),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn text<'a>(msg: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` must be a non-empty string")),
    }
}

fn parse_normalised(msg: &Map<String, Value>) -> Result<InwardEvent, String> {
    const KNOWN: [&str; 7] = ["event_id", "entity", "op", "id", "external_id", "fields", "occurred_at"];
    if let Some(k) = msg.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}` (known: {})", KNOWN.join(", ")));
    }
    let event_id = text(msg, "event_id")?.ok_or("`event_id` is missing")?;
    let entity_name = text(msg, "entity")?.ok_or("`entity` is required")?;
    let entity = Entity::by_name(entity_name).ok_or_else(|| format!("unknown entity `{entity_name}`"))?;
    let deleted = match text(msg, "op")? {
        Some("upsert") => false,
        Some("delete") => true,
        Some(other) => return Err(format!("`op` must be upsert or delete, not `{other}`")),
        None => return Err("`op` is required (upsert or delete)".into()),
    };
    let hub_id = text(msg, "id")?;
    let fields = match msg.get("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return Err("`fields` must be an object".into()),
    };
    if let Some(k) = fields.keys().find(|k| !entity.fields.iter().any(|d| d.name == k.as_str())) {
        return Err(format!("`{k}` is not a {entity_name} field"));
    }
    if !deleted && fields.is_empty() && hub_id.is_none() {
        return Err("an upsert needs `fields`".into());
    }
    // The sender's id links the hub record; without one, the hub id, else (a
    // create with no id at all) the event id.
    let external_id = match (text(msg, "external_id")?, hub_id) {
        (Some(x), _) => x.to_string(),
        (None, Some(id)) => id.to_string(),
        (None, None) if deleted => return Err("a delete needs `id` or `external_id`".into()),
        (None, None) => event_id.to_string(),
    };
    let occurred_at = msg.get("occurred_at").and_then(Value::as_i64).ok_or("`occurred_at` is missing")?;
    let mut object = Map::new();
    object.insert("fields".into(), Value::Object(fields));
    if let Some(id) = hub_id {
        object.insert("id".into(), Value::String(id.to_string()));
    }
    Ok(InwardEvent {
        event_id: event_id.to_string(),
        event_type: format!("{entity_name}.{}", if deleted { "delete" } else { "upsert" }),
        entity: Some(entity),
        external_id: Some(external_id),
        occurred_at,
        deleted,
        object: Value::Object(object),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_documented_schema_names_the_envelope_fields() {
        let schema: Value = serde_json::from_str(include_str!("../../../../docs/kafka-envelope.schema.json")).unwrap();
        let change = syncflow_core::Change {
            seq: 41,
            entity: "customer".into(),
            record_id: "cust_1".into(),
            op: syncflow_core::Op::Upsert,
            version: 3,
            origin: "api".into(),
            snapshot: json!({"id": "cust_1", "name": "Ada"}),
            created_at: "2026-12-02T06:00:00.000000Z".into(),
        };
        let req = PushRequest { delivery_id: 12, attempt: 1, change: &change, link: None };
        let value: Value = serde_json::from_slice(&change_value(&req)).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let required = |v: &Value| {
            v["required"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(keys(&value), required(&schema));
        assert_eq!(keys(&value["change"]), required(&schema["properties"]["change"]));
        let headers = change_headers(&req);
        assert_eq!(headers[0], ("id", "41".to_string()));
        assert_eq!(headers[1], ("syncflow-origin", "api".to_string()));
    }

    #[test]
    fn positions_round_trip() {
        assert_eq!(position("in.events", 3, 42), "in.events/3/42");
        assert_eq!(parse_position("in.events/3/42"), Some(("in.events", 3, 42)));
        assert_eq!(parse_position("nonsense"), None);
    }

    #[test]
    fn inbound_messages_are_read_and_normalised() {
        let msg = json!({"event_id": "e1", "entity": "customer", "op": "upsert", "external_id": "crm-7",
                         "fields": {"name": "Ada", "email": "ada@example.com"}, "occurred_at": "2026-01-02T03:04:05Z"});
        let (event, stored) = parse_inbound(msg.to_string().as_bytes(), "t/0/9", 1).unwrap();
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.external_id.as_deref(), Some("crm-7"));
        assert_eq!(event.occurred_at, 1_767_323_045);
        assert_eq!(event.event_type, "customer.upsert");
        assert!(!event.deleted);
        assert_eq!(event.object["fields"]["name"], "Ada");
        let again = parse_stored(&stored).unwrap();
        assert_eq!(
            (again.event_id, again.occurred_at, again.object),
            (event.event_id, event.occurred_at, event.object)
        );

        // No event id: the position; no time: the message timestamp; no ids: the event id links it.
        let (event, _) =
            parse_inbound(br#"{"entity":"customer","op":"upsert","fields":{"name":"B"}}"#, "t/1/5", 77).unwrap();
        assert_eq!((event.event_id.as_str(), event.occurred_at), ("t/1/5", 77));
        assert_eq!(event.external_id.as_deref(), Some("t/1/5"));

        let (event, _) = parse_inbound(br#"{"entity":"customer","op":"delete","id":"cus_1"}"#, "t/0/1", 5).unwrap();
        assert!(event.deleted);
        assert_eq!(event.external_id.as_deref(), Some("cus_1"));
        assert_eq!(event.object["id"], "cus_1");
    }

    #[test]
    fn bad_inbound_messages_say_why() {
        let bad = |m: &str| parse_inbound(m.as_bytes(), "t/0/1", 1).unwrap_err();
        assert!(bad("{not json").starts_with("not JSON"));
        assert_eq!(bad("[1]"), "not a JSON object");
        assert_eq!(bad(r#"{"entity":"widget","op":"upsert","fields":{}}"#), "unknown entity `widget`");
        assert_eq!(
            bad(r#"{"entity":"customer","op":"merge","fields":{"name":"x"}}"#),
            "`op` must be upsert or delete, not `merge`"
        );
        assert_eq!(
            bad(r#"{"entity":"customer","op":"upsert","fields":{"colour":"x"}}"#),
            "`colour` is not a customer field"
        );
        assert_eq!(bad(r#"{"entity":"customer","op":"delete"}"#), "a delete needs `id` or `external_id`");
        assert!(bad(r#"{"entity":"customer","op":"upsert","fields":{"name":"x"},"extra":1}"#)
            .starts_with("unknown key `extra`"));
    }
}
