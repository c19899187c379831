//! Two-way sync bookkeeping shared by the engine (which decides) and the connectors
//! (which translate): links, inbox outcomes, the per-link sync snapshot and its
//! fingerprint, the 3-way field diff, and conflict policies. No I/O.
//!
//! Invariants this module gives the engine the means to keep: echo detection by
//! fingerprint (3), per-field staleness on one clock — the external system's (4),
//! and field-level merge against the last-synced snapshot (5).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The synced fields of one record in hub terms (hub field name → normalized value),
/// as one side holds them. Sorted, so its JSON is canonical.
pub type Fields = BTreeMap<String, Value>;

/// The link fingerprint of an object deleted on the external side.
pub const DELETED: &str = "deleted";

/// A record's link to its twin in one external system.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub entity: String,
    pub record_id: String,
    pub system: String,
    pub external_id: String,
    pub synced_version: Option<i64>,
    pub fingerprint: Option<String>,
    pub snapshot: Option<String>,
    pub updated_at: i64,
}

/// A link as a delivery or an inward apply wants it written. The store never moves
/// a link's `synced_version` backwards (fencing: a late outcome loses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUpdate {
    pub external_id: String,
    pub synced_version: i64,
    pub fingerprint: Option<String>,
    pub snapshot: Option<String>,
}

/// How an inward event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxOutcome {
    /// Recorded, not yet settled (or waiting for a retry).
    Received,
    /// Changed the catalog (or linked a record).
    Applied,
    /// The state we last synced (or are pushing) to that system: our own write coming back.
    Echo,
    /// Older than what is already known of the object.
    Stale,
    /// A type this system does not apply.
    Ignored,
    /// Can never be applied (invalid for the catalog, unreadable); see remarks. Replayable.
    Rejected,
    /// Kept failing for a transient reason after the retry budget; see remarks. Replayable.
    Dead,
    /// Older rows only: could not be applied. New rows end `rejected` or `dead`.
    Failed,
}

impl InboxOutcome {
    pub const ALL: [InboxOutcome; 8] = [
        InboxOutcome::Received,
        InboxOutcome::Applied,
        InboxOutcome::Echo,
        InboxOutcome::Stale,
        InboxOutcome::Ignored,
        InboxOutcome::Rejected,
        InboxOutcome::Dead,
        InboxOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InboxOutcome::Received => "received",
            InboxOutcome::Applied => "applied",
            InboxOutcome::Echo => "echo",
            InboxOutcome::Stale => "stale",
            InboxOutcome::Ignored => "ignored",
            InboxOutcome::Rejected => "rejected",
            InboxOutcome::Dead => "dead",
            InboxOutcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<InboxOutcome> {
        InboxOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Who wins when both sides changed one field since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergePolicy {
    /// The external edit wins (it reached us later than the hub's).
    #[default]
    ExternalWins,
    /// The hub's value stays; the external system gets it back on the next push.
    HubWins,
    /// The side whose edit is newer (external event time vs the hub's update time) wins.
    NewestWins,
    /// The hub value is held; an operator resolves the conflict.
    Manual,
}

impl MergePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MergePolicy::ExternalWins => "external_wins",
            MergePolicy::HubWins => "hub_wins",
            MergePolicy::NewestWins => "newest_wins",
            MergePolicy::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<MergePolicy> {
        [MergePolicy::ExternalWins, MergePolicy::HubWins, MergePolicy::NewestWins, MergePolicy::Manual]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// A same-field conflict as the engine records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewConflict {
    pub field: String,
    pub hub_value: Value,
    pub external_value: Value,
    pub policy: MergePolicy,
    /// `hub`, `external`, or `None` while a `manual` conflict is open.
    pub winner: Option<&'static str>,
}

/// Empty strings and nulls mean "absent" on most systems (Stripe clears a field with
/// ""), so both compare equal; object values (metadata maps) drop absent keys and
/// are sorted so equal maps serialise equally.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, normalize(v))).filter(|(_, v)| !v.is_null()).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        other => other.clone(),
    }
}

/// The synced `names` of a hub record's fields (or a change snapshot), normalized.
pub fn project(names: &[&str], fields: &Map<String, Value>) -> Fields {
    names.iter().map(|n| (n.to_string(), normalize(fields.get(*n).unwrap_or(&Value::Null)))).collect()
}

/// sha256 of the canonical JSON, shortened: what a link remembers of a state.
pub fn fingerprint(state: &Fields) -> String {
    let text = serde_json::to_string(&canonical(state)).expect("fields serialise");
    hex::encode(Sha256::digest(text.as_bytes()))[..32].to_string()
}

fn canonical(state: &Fields) -> BTreeMap<&String, Value> {
    state.iter().map(|(k, v)| (k, normalize(v))).collect()
}

fn field(state: &Fields, name: &str) -> Value {
    state.get(name).map(normalize).unwrap_or(Value::Null)
}

/// Fields (of `names`) whose values differ between two states.
pub fn changed_fields<'a>(a: &Fields, b: &Fields, names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    names.into_iter().filter(|f| field(a, f) != field(b, f)).cloned().collect()
}

/// Every field name either state has.
pub fn all_names(a: &Fields, b: &Fields) -> BTreeSet<String> {
    a.keys().chain(b.keys()).cloned().collect()
}

/// A merge patch turning `from` into `to` on `names` only; object fields per key
/// (`null` removes a key, as the hub's merge patch expects).
pub fn hub_patch(from: &Fields, to: &Fields, names: &[String]) -> Map<String, Value> {
    let mut patch = Map::new();
    for f in names {
        let (a, b) = (field(from, f), field(to, f));
        if a == b {
            continue;
        }
        match (&a, &b) {
            (Value::Object(old), Value::Object(new)) => {
                let mut m = Map::new();
                for (k, v) in new {
                    if old.get(k) != Some(v) {
                        m.insert(k.clone(), v.clone());
                    }
                }
                for k in old.keys().filter(|k| !new.contains_key(*k)) {
                    m.insert(k.clone(), Value::Null);
                }
                patch.insert(f.clone(), Value::Object(m));
            }
            (Value::Object(old), Value::Null) => {
                patch.insert(f.clone(), Value::Object(old.keys().map(|k| (k.clone(), Value::Null)).collect()));
            }
            _ => {
                patch.insert(f.clone(), b);
            }
        }
    }
    patch
}

/// What a link remembers about the last sync with its system (the link's
/// `snapshot`): the external state as we know it, the hub's state at that sync,
/// and per field the external system's time of its last sync — on the external
/// system's clock only. A field last synced by our push has no external time (its
/// write time is the system's, unknown to us): it is in `pushed`, and an event
/// touching it is re-fetched rather than compared across clocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncSnapshot {
    /// `None` once the object is deleted on the external side.
    #[serde(alias = "stripe")]
    pub external: Option<Fields>,
    pub hub: Option<Fields>,
    #[serde(default)]
    pub at: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pushed: BTreeSet<String>,
}

impl SyncSnapshot {
    pub fn parse(text: Option<&str>) -> SyncSnapshot {
        text.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("snapshot serialises")
    }

    /// The link fingerprint: of the external state, or `deleted`.
    pub fn fingerprint(&self) -> String {
        self.external.as_ref().map_or_else(|| DELETED.to_string(), fingerprint)
    }

    /// Every field of `state` marked as synced at external time `t`.
    pub fn synced_at(state: &Fields, t: i64) -> BTreeMap<String, i64> {
        state.keys().map(|f| (f.clone(), t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn empty_strings_and_key_order_do_not_change_the_fingerprint() {
        let a = fields(json!({"name": "Ada", "email": "", "metadata": {"b": "2", "a": "1"}}));
        let b = fields(json!({"metadata": {"a": "1", "b": "2", "c": ""}, "name": "Ada", "email": null}));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = fields(json!({"name": "Ada", "email": "x@y", "metadata": {"a": "1", "b": "2"}}));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn patches_diff_object_fields_per_key() {
        let from = fields(json!({"name": "Ada", "metadata": {"a": "1", "b": "2"}}));
        let to = fields(json!({"name": "Ada L", "metadata": {"a": "1", "c": "3"}}));
        let names = changed_fields(&from, &to, &all_names(&from, &to));
        assert_eq!(names, vec!["metadata".to_string(), "name".to_string()]);
        let patch = hub_patch(&from, &to, &names);
        assert_eq!(Value::Object(patch), json!({"metadata": {"c": "3", "b": null}, "name": "Ada L"}));
    }

    #[test]
    fn old_snapshots_with_a_stripe_key_still_parse() {
        let snap = SyncSnapshot::parse(Some(
            r#"{"stripe":{"name":"A","email":null,"metadata":{}},"hub":{"name":"A"},"at":{"name":5}}"#,
        ));
        assert_eq!(snap.external.unwrap()["name"], json!("A"));
        assert_eq!(snap.at["name"], 5);
    }
}
