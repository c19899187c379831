//! Hub customers as Salesforce records: `Contact` (the hub's `name` split into
//! `FirstName`/`LastName` at the last space, `Email`) or `Account` (`Name`), hub
//! metadata keys to custom fields, and the external-id field holding the hub id.
//! Only mapped metadata keys are synced, so both sides' states are compared on the
//! same fields (an unmapped key never looks like a change).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use syncflow_core::sync::{normalize, Fields};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Contact,
    Account,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub sobject: String,
    pub external_id_field: String,
    shape: Shape,
    /// Hub metadata key → custom field.
    metadata: BTreeMap<String, String>,
}

const CONTACT_SYNCED: &[&str] = &["name", "email", "metadata"];
const ACCOUNT_SYNCED: &[&str] = &["name", "metadata"];

impl Mapping {
    pub fn new(sobject: &str, external_id_field: &str, metadata: BTreeMap<String, String>) -> Result<Mapping, String> {
        let shape = match sobject {
            "Contact" => Shape::Contact,
            "Account" => Shape::Account,
            other => return Err(format!("sobject `{other}`: customers map to Contact or Account")),
        };
        if !external_id_field.ends_with("__c") {
            return Err(format!("external_id_field `{external_id_field}` must be a custom field (ending in __c)"));
        }
        Ok(Mapping { sobject: sobject.into(), external_id_field: external_id_field.into(), shape, metadata })
    }

    pub fn synced(&self) -> &'static [&'static str] {
        match self.shape {
            Shape::Contact => CONTACT_SYNCED,
            Shape::Account => ACCOUNT_SYNCED,
        }
    }

    /// Every field a poll or fetch reads.
    pub fn soql_fields(&self) -> Vec<String> {
        let mut f: Vec<String> = match self.shape {
            Shape::Contact => ["Id", "FirstName", "LastName", "Email"].map(String::from).to_vec(),
            Shape::Account => ["Id", "Name"].map(String::from).to_vec(),
        };
        f.extend(self.metadata.values().cloned());
        f.extend([
            self.external_id_field.clone(),
            "IsDeleted".into(),
            "SystemModstamp".into(),
            "LastModifiedById".into(),
        ]);
        f
    }

    /// The hub's state as Salesforce can hold it: the synced fields, metadata
    /// restricted to mapped keys.
    pub fn hub_view(&self, fields: &Map<String, Value>) -> Fields {
        let mut out = Fields::new();
        for name in self.synced() {
            let v = fields.get(*name).map(normalize).unwrap_or(Value::Null);
            let v = if *name == "metadata" { self.only_mapped(&v) } else { v };
            out.insert(name.to_string(), v);
        }
        out
    }

    fn only_mapped(&self, metadata: &Value) -> Value {
        let m = metadata.as_object().cloned().unwrap_or_default();
        normalize(&Value::Object(m.into_iter().filter(|(k, _)| self.metadata.contains_key(k)).collect()))
    }

    /// A Salesforce record in hub terms.
    pub fn to_hub(&self, rec: &Value) -> Fields {
        let mut out = Fields::new();
        let text = |f: &str| rec[f].as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let name = match self.shape {
            Shape::Contact => {
                let parts: Vec<String> = [text("FirstName"), text("LastName")].into_iter().flatten().collect();
                (!parts.is_empty()).then(|| parts.join(" "))
            }
            Shape::Account => text("Name"),
        };
        out.insert("name".into(), name.map_or(Value::Null, Value::String));
        if self.shape == Shape::Contact {
            out.insert("email".into(), text("Email").map_or(Value::Null, Value::String));
        }
        let metadata: Map<String, Value> = self
            .metadata
            .iter()
            .filter_map(|(key, field)| text(field).map(|v| (key.clone(), Value::String(v))))
            .collect();
        out.insert("metadata".into(), Value::Object(metadata));
        out
    }

    /// The Salesforce body for `only` of the hub's fields (all when `None`). A cleared
    /// field is sent as null; a removed metadata key clears its custom field.
    pub fn to_sf(&self, state: &Fields, previous: Option<&Fields>, only: Option<&[String]>) -> Map<String, Value> {
        let wanted = |f: &str| only.is_none_or(|o| o.iter().any(|x| x == f));
        let mut body = Map::new();
        let text = |f: &str| state.get(f).and_then(Value::as_str).map(str::to_string);
        if wanted("name") {
            let name = text("name");
            match self.shape {
                Shape::Contact => {
                    let (first, last) = split_name(name.as_deref().unwrap_or_default());
                    body.insert("FirstName".into(), first.map_or(Value::Null, Value::String));
                    body.insert("LastName".into(), Value::String(last));
                }
                Shape::Account => {
                    body.insert("Name".into(), name.map_or(Value::Null, Value::String));
                }
            }
        }
        if self.shape == Shape::Contact && wanted("email") {
            body.insert("Email".into(), text("email").map_or(Value::Null, Value::String));
        }
        if wanted("metadata") {
            let now = state.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
            let before =
                previous.and_then(|p| p.get("metadata")).and_then(Value::as_object).cloned().unwrap_or_default();
            for (key, field) in &self.metadata {
                let (a, b) = (before.get(key), now.get(key));
                if previous.is_none() || a != b {
                    body.insert(field.clone(), b.cloned().unwrap_or(Value::Null));
                }
            }
        }
        body
    }
}

/// `Ada Lovelace` → (`Ada`, `Lovelace`); `Plato` → (none, `Plato`): LastName is
/// required on a Contact, FirstName is not.
pub fn split_name(name: &str) -> (Option<String>, String) {
    let name = name.trim();
    match name.rsplit_once(' ') {
        Some((first, last)) if !first.trim().is_empty() => (Some(first.trim().to_string()), last.to_string()),
        _ => (None, name.to_string()),
    }
}
