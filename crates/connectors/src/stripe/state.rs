//! Customer state in hub terms on both sides, the per-link sync snapshot and its
//! fingerprint. This is what echo detection (invariant 3), per-field staleness
//! (invariant 4) and field-level merge (invariant 5) compare against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The metadata key holding the hub id on Stripe objects.
pub const SYNCFLOW_ID: &str = "syncflow_id";

/// The link fingerprint of a customer deleted on the Stripe side.
pub const DELETED: &str = "deleted";

/// The synced fields of a customer. Stripe's other fields are not ours to mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    pub name: Option<String>,
    pub email: Option<String>,
    /// Without `syncflow_id`, which is bookkeeping, not data.
    pub metadata: BTreeMap<String, String>,
}

/// Top-level fields compared one by one (metadata keys are diffed inside).
pub const FIELDS: [&str; 3] = ["name", "email", "metadata"];

impl CustomerState {
    /// From a Stripe customer object.
    pub fn from_stripe(obj: &Value) -> CustomerState {
        CustomerState {
            name: non_empty(&obj["name"]),
            email: non_empty(&obj["email"]),
            metadata: string_map(&obj["metadata"]),
        }
    }

    /// From a hub record's fields (or a change snapshot, which has them too).
    pub fn from_hub(fields: &Value) -> CustomerState {
        CustomerState {
            name: non_empty(&fields["name"]),
            email: non_empty(&fields["email"]),
            metadata: string_map(&fields["metadata"]),
        }
    }

    pub fn field(&self, name: &str) -> Value {
        match name {
            "name" => self.name.clone().map_or(Value::Null, Value::String),
            "email" => self.email.clone().map_or(Value::Null, Value::String),
            _ => Value::Object(self.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
        }
    }

    pub fn set_field(&mut self, name: &str, from: &CustomerState) {
        match name {
            "name" => self.name = from.name.clone(),
            "email" => self.email = from.email.clone(),
            _ => self.metadata = from.metadata.clone(),
        }
    }

    /// sha256 of the canonical JSON (BTreeMap keys are sorted).
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("state serialises");
        hex::encode(Sha256::digest(text.as_bytes()))[..32].to_string()
    }
}

/// Stripe stores "" for a cleared field (and takes "" to clear one): same as absent.
fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != SYNCFLOW_ID)
                .filter_map(|(k, v)| non_empty(v).map(|s| (k.clone(), s)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a link remembers about the last sync with Stripe (stored as the link's
/// snapshot): Stripe's state as we know it, the hub's state at that sync, and
/// when each field was last synced (Stripe seconds), for per-field staleness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncSnapshot {
    /// `None` once the customer is deleted in Stripe.
    pub stripe: Option<CustomerState>,
    pub hub: Option<CustomerState>,
    #[serde(default)]
    pub at: BTreeMap<String, i64>,
}

impl SyncSnapshot {
    /// Every field marked as synced at `t` (a create, a delete, a first link).
    pub fn all_synced_at(t: i64) -> BTreeMap<String, i64> {
        FIELDS.iter().map(|f| (f.to_string(), t)).collect()
    }

    pub fn parse(text: Option<&str>) -> SyncSnapshot {
        text.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("snapshot serialises")
    }

    /// The link fingerprint: of Stripe's state, or `deleted`.
    pub fn fingerprint(&self) -> String {
        self.stripe.as_ref().map_or_else(|| DELETED.to_string(), CustomerState::fingerprint)
    }
}

/// A merge patch turning `from` into `to` on the changed fields only; metadata
/// per key (`null` removes a key, as the hub's merge patch expects).
pub fn hub_patch(from: &CustomerState, to: &CustomerState, fields: &[&str]) -> Map<String, Value> {
    let mut patch = Map::new();
    for f in fields {
        match *f {
            "metadata" => {
                let mut m = Map::new();
                for (k, v) in &to.metadata {
                    if from.metadata.get(k) != Some(v) {
                        m.insert(k.clone(), Value::String(v.clone()));
                    }
                }
                for k in from.metadata.keys().filter(|k| !to.metadata.contains_key(*k)) {
                    m.insert(k.clone(), Value::Null);
                }
                if !m.is_empty() {
                    patch.insert("metadata".into(), Value::Object(m));
                }
            }
            other => {
                if from.field(other) != to.field(other) {
                    patch.insert(other.to_string(), to.field(other));
                }
            }
        }
    }
    patch
}

/// A hub create body for a customer first seen in Stripe. The hub requires a
/// name; Stripe does not, so the e-mail (or the Stripe id) stands in, and the
/// second value says so.
pub fn hub_create_body(state: &CustomerState, external_id: &str) -> (Map<String, Value>, Option<String>) {
    let name = state.name.clone().or_else(|| state.email.clone()).unwrap_or_else(|| external_id.to_string());
    let remark = state
        .name
        .is_none()
        .then(|| format!("Stripe customer has no name; the hub's required name is set to `{name}`"));
    let mut body = Map::new();
    body.insert("name".into(), Value::String(name));
    body.insert("email".into(), state.email.clone().map_or(Value::Null, Value::String));
    body.insert("metadata".into(), state.field("metadata"));
    (body, remark)
}

/// Fields whose values differ between two states.
pub fn changed_fields(a: &CustomerState, b: &CustomerState) -> Vec<&'static str> {
    FIELDS.into_iter().filter(|f| a.field(f) != b.field(f)).collect()
}
