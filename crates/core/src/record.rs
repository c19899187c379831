//! Records and changes as the hub sees them, independent of the storage backend.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::entity::Entity;

/// One catalog row. `fields` holds the entity's own fields; the rest is bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub entity: &'static Entity,
    pub id: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub fields: Map<String, Value>,
}

impl Record {
    /// A new record at version 1 with a fresh hub id, created now.
    pub fn new(entity: &'static Entity, fields: Map<String, Value>) -> Record {
        let now = now_timestamp();
        Record {
            entity,
            id: crate::id::new_id(entity.id_prefix),
            version: 1,
            created_at: now.clone(),
            updated_at: now,
            deleted_at: None,
            fields,
        }
    }

    /// The JSON shape used by the API and by change snapshots (one shape for both,
    /// so a consumer of the change log can treat a snapshot like an API response).
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(self.fields.len() + 6);
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("object".into(), Value::String(self.entity.name.into()));
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        m.insert("version".into(), Value::from(self.version));
        m.insert("created_at".into(), Value::String(self.created_at.clone()));
        m.insert("updated_at".into(), Value::String(self.updated_at.clone()));
        m.insert("deleted_at".into(), self.deleted_at.clone().map_or(Value::Null, Value::String));
        Value::Object(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "upsert" => Some(Op::Upsert),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One row of the change log: what happened to which record, where it came from,
/// and the record's full state right after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: i64,
    pub entity: String,
    pub record_id: String,
    pub op: Op,
    pub version: i64,
    /// `api`, `sql`, a system name such as `stripe`, or `client:<id>`.
    pub origin: String,
    pub snapshot: Value,
    pub created_at: String,
}

/// Current time in the one timestamp format the hub writes: RFC 3339, UTC,
/// microseconds, `Z` — sortable as text, identical on both backends.
pub fn now_timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
