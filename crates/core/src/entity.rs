//! Entity descriptors: the one place that says which catalog entities exist, which
//! fields they have and how each field is validated. Storage, the REST API and the
//! OpenAPI document are all driven from these tables, so adding an entity is one
//! descriptor here plus one migration per backend.

use serde_json::{Map, Value};

use crate::error::FieldError;

/// How a field's value is checked and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Free text, at most `max` characters.
    Text { max: usize },
    /// An e-mail address (light syntax check; the mailbox is not verified).
    Email,
    /// A signed integer with a lower bound (amounts in minor units).
    Integer { min: i64 },
    /// A three-letter ISO 4217 currency code, stored lowercase.
    Currency,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An instant, given as RFC 3339 or as a naive `YYYY-MM-DDTHH:MM:SS[.f]` (read as
    /// UTC, as clients without a zone send it); stored as RFC 3339 UTC text, `Z`.
    DateTime,
    /// A string → string map (Stripe-compatible metadata limits).
    Metadata,
    /// The hub id of a live record of another entity.
    Reference(&'static str),
}

/// How a field is stored, which is all the storage layer needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Text,
    Integer,
    Date,
    Json,
}

impl FieldType {
    pub fn storage(self) -> Storage {
        match self {
            FieldType::Integer { .. } => Storage::Integer,
            FieldType::Date => Storage::Date,
            FieldType::Metadata => Storage::Json,
            _ => Storage::Text,
        }
    }

    /// JSON-schema fragment for the OpenAPI document.
    pub fn json_schema(self) -> Value {
        use serde_json::json;
        match self {
            FieldType::Text { max } => json!({"type": "string", "maxLength": max}),
            FieldType::Email => json!({"type": "string", "format": "email", "maxLength": 320}),
            FieldType::Integer { min } => {
                json!({"type": "integer", "format": "int64", "minimum": min})
            }
            FieldType::Currency => json!({"type": "string", "pattern": "^[a-zA-Z]{3}$"}),
            FieldType::Enum(values) => json!({"type": "string", "enum": values}),
            FieldType::Date => json!({"type": "string", "format": "date"}),
            FieldType::DateTime => json!({"type": "string", "format": "date-time"}),
            FieldType::Metadata => json!({
                "type": "object", "maxProperties": METADATA_MAX_KEYS,
                "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE}
            }),
            FieldType::Reference(entity) => {
                json!({"type": "string", "description": format!("hub id of a {entity}")})
            }
        }
    }
}

pub const METADATA_MAX_KEYS: usize = 50;
pub const METADATA_MAX_KEY: usize = 40;
pub const METADATA_MAX_VALUE: usize = 500;

#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    /// Value used on create when the field is absent (only for optional fields).
    pub default: Option<&'static str>,
}

const fn field(name: &'static str, ty: FieldType, required: bool) -> FieldDef {
    FieldDef { name, ty, required, default: None }
}

/// A catalog entity: its API name, table, id prefix and fields.
#[derive(Debug)]
pub struct Entity {
    /// Singular name used in change rows and snapshots (`customer`).
    pub name: &'static str,
    /// Plural name used in URLs and as the table name (`customers`).
    pub plural: &'static str,
    /// Prefix of hub ids; deliberately unlike any external system's prefixes.
    pub id_prefix: &'static str,
    pub fields: &'static [FieldDef],
    /// A text field that identifies a record outside the hub (a barcode, a SKU), unique
    /// among live records. Sync clients may address a record by it instead of its id.
    pub natural_key: Option<&'static str>,
}

/// Entities are static singletons: two are equal when they are the same one.
impl PartialEq for Entity {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

pub static CUSTOMER: Entity = Entity {
    name: "customer",
    plural: "customers",
    id_prefix: "cust",
    natural_key: None,
    fields: &[
        field("name", FieldType::Text { max: 256 }, true),
        field("email", FieldType::Email, false),
        FieldDef { name: "metadata", ty: FieldType::Metadata, required: false, default: Some("{}") },
    ],
};

pub const INVOICE_STATUSES: &[&str] = &["draft", "open", "paid", "void", "uncollectible"];

pub static INVOICE: Entity = Entity {
    name: "invoice",
    plural: "invoices",
    id_prefix: "invc",
    natural_key: None,
    fields: &[
        field("customer_id", FieldType::Reference("customer"), true),
        field("amount", FieldType::Integer { min: 0 }, true),
        field("currency", FieldType::Currency, true),
        FieldDef { name: "status", ty: FieldType::Enum(INVOICE_STATUSES), required: false, default: Some("\"draft\"") },
        field("due_date", FieldType::Date, false),
        FieldDef { name: "metadata", ty: FieldType::Metadata, required: false, default: Some("{}") },
    ],
};

/// A stock reading from a shop's client app (the `001` seed's `StockReading`): which
/// product (`gtin`, unique) expires when. The seed's client-supplied `updated_at` is
/// not a field: it is the record's sync clock (see `clock`), kept by the hub.
pub static STOCK_READING: Entity = Entity {
    name: "stock_reading",
    plural: "stock_readings",
    id_prefix: "strd",
    natural_key: Some("gtin"),
    fields: &[field("gtin", FieldType::Text { max: 64 }, true), field("expiration_date", FieldType::DateTime, true)],
};

/// Every entity the hub knows, in dependency order (referenced entities first).
pub static ENTITIES: &[&Entity] = &[&CUSTOMER, &INVOICE, &STOCK_READING];

/// Fields every record carries that clients may read but never write.
pub const SYSTEM_FIELDS: &[&str] = &["id", "object", "version", "created_at", "updated_at", "deleted_at"];

impl Entity {
    pub fn by_name(name: &str) -> Option<&'static Entity> {
        ENTITIES.iter().copied().find(|e| e.name == name)
    }

    pub fn by_plural(plural: &str) -> Option<&'static Entity> {
        ENTITIES.iter().copied().find(|e| e.plural == plural)
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Validates a create body: every required field present, every value valid, no
    /// unknown or read-only field. Returns the full field map (defaults filled in,
    /// values normalised) or every problem found, not just the first.
    pub fn validate_create(&self, body: &Map<String, Value>) -> Result<Map<String, Value>, Vec<FieldError>> {
        let mut errors = self.reject_unknown(body);
        let mut out = Map::new();
        for def in self.fields {
            match body.get(def.name) {
                None | Some(Value::Null) if def.required => {
                    errors.push(FieldError::new(def.name, "is required"));
                }
                // An explicit null on an optional field means "not given" (as in a
                // patch): its default, never a NULL where the store wants a value.
                None | Some(Value::Null) => {
                    let value = def
                        .default
                        .map_or(Value::Null, |d| serde_json::from_str(d).expect("entity default is valid JSON"));
                    out.insert(def.name.to_string(), value);
                }
                Some(value) => match normalise(def, value) {
                    Ok(v) => {
                        out.insert(def.name.to_string(), v);
                    }
                    Err(e) => errors.push(e),
                },
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Validates a merge-patch body against the current fields and returns the new
    /// field map. `null` clears an optional field; for `metadata`, keys are merged
    /// and a `null` value removes a key (as Stripe does with an empty string).
    pub fn apply_patch(
        &self,
        current: &Map<String, Value>,
        patch: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<FieldError>> {
        let mut errors = self.reject_unknown(patch);
        let mut out = current.clone();
        for (name, value) in patch {
            let Some(def) = self.field(name) else {
                continue;
            };
            if value.is_null() {
                if def.required {
                    errors.push(FieldError::new(name, "is required and cannot be null"));
                } else {
                    let cleared = def
                        .default
                        .map_or(Value::Null, |d| serde_json::from_str(d).expect("entity default is valid JSON"));
                    out.insert(name.clone(), cleared);
                }
                continue;
            }
            let value = if def.ty == FieldType::Metadata {
                match merge_metadata(current.get(name), value) {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(FieldError::new(name, e));
                        continue;
                    }
                }
            } else {
                value.clone()
            };
            match normalise(def, &value) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    fn reject_unknown(&self, body: &Map<String, Value>) -> Vec<FieldError> {
        body.keys()
            .filter(|k| self.field(k).is_none())
            .map(|k| {
                if SYSTEM_FIELDS.contains(&k.as_str()) {
                    FieldError::new(k, "is read-only")
                } else {
                    FieldError::new(k, "is not a field of this object")
                }
            })
            .collect()
    }

    /// Names of the `Reference` fields and the entity each points to.
    pub fn references(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.fields.iter().filter_map(|f| match f.ty {
            FieldType::Reference(target) => Some((f.name, target)),
            _ => None,
        })
    }
}

fn merge_metadata(current: Option<&Value>, patch: &Value) -> Result<Value, String> {
    let Value::Object(patch) = patch else {
        return Err("must be an object of string values".into());
    };
    let mut merged = match current {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(merged))
}

/// Checks one value against its field definition and returns its canonical form.
fn normalise(def: &FieldDef, value: &Value) -> Result<Value, FieldError> {
    let err = |msg: &str| FieldError::new(def.name, msg);
    if value.is_null() {
        return if def.required { Err(err("is required")) } else { Ok(Value::Null) };
    }
    // PostgreSQL cannot store U+0000 in text or jsonb (SQLite can): refuse it for
    // every backend and every way in (API, sync, inward events) alike.
    if holds_nul(value) {
        return Err(err("must not contain the NUL character (U+0000)"));
    }
    match def.ty {
        FieldType::Text { max } => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            if s.trim().is_empty() && def.required {
                return Err(err("must not be empty"));
            }
            if s.chars().count() > max {
                return Err(err(&format!("must be at most {max} characters")));
            }
            Ok(Value::String(s.to_string()))
        }
        FieldType::Email => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?.trim();
            if !is_plausible_email(s) {
                return Err(err("is not a valid e-mail address"));
            }
            Ok(Value::String(s.to_string()))
        }
        FieldType::Integer { min } => {
            let n = value.as_i64().ok_or_else(|| err("must be an integer"))?;
            if n < min {
                return Err(err(&format!("must be at least {min}")));
            }
            Ok(Value::from(n))
        }
        FieldType::Currency => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            if s.len() != 3 || !s.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(err("must be a three-letter ISO 4217 code"));
            }
            Ok(Value::String(s.to_ascii_lowercase()))
        }
        FieldType::Enum(values) => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            if !values.contains(&s) {
                return Err(err(&format!("must be one of: {}", values.join(", "))));
            }
            Ok(Value::String(s.to_string()))
        }
        FieldType::Date => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            // Years 1 to 9999 only: both backends store (and sort) those alike.
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .filter(|d| (1..=9999).contains(&chrono::Datelike::year(d)) && s.len() == 10)
                .ok_or_else(|| err("must be a date as YYYY-MM-DD"))?;
            Ok(Value::String(s.to_string()))
        }
        FieldType::DateTime => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            let at = crate::clock::parse_datetime(s)
                .ok_or_else(|| err("must be a date-time such as 2022-05-01T01:11:00Z"))?;
            Ok(Value::String(crate::clock::display_datetime(at)))
        }
        FieldType::Metadata => {
            let map = value.as_object().ok_or_else(|| err("must be an object of string values"))?;
            if map.len() > METADATA_MAX_KEYS {
                return Err(err(&format!("must have at most {METADATA_MAX_KEYS} keys")));
            }
            for (k, v) in map {
                if k.is_empty() || k.chars().count() > METADATA_MAX_KEY {
                    return Err(err(&format!("keys must be 1 to {METADATA_MAX_KEY} characters")));
                }
                let s = v.as_str().ok_or_else(|| err(&format!("value of `{k}` must be a string")))?;
                if s.chars().count() > METADATA_MAX_VALUE {
                    return Err(err(&format!("value of `{k}` must be at most {METADATA_MAX_VALUE} characters")));
                }
            }
            Ok(value.clone())
        }
        FieldType::Reference(_) => {
            let s = value.as_str().ok_or_else(|| err("must be a string"))?;
            if s.is_empty() {
                return Err(err("must not be empty"));
            }
            Ok(Value::String(s.to_string()))
        }
    }
}

/// Whether any string or member name inside `value` contains U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn is_plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && s.len() <= 320
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn create_lists_every_bad_field() {
        let errs = CUSTOMER.validate_create(&obj(json!({"email": "nope", "id": "x", "colour": 1}))).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"name"), "{errs:?}");
        assert!(fields.contains(&"email"));
        assert!(fields.contains(&"id"));
        assert!(fields.contains(&"colour"));
    }

    #[test]
    fn create_fills_defaults_and_normalises() {
        let f =
            INVOICE.validate_create(&obj(json!({"customer_id": "cust_1", "amount": 100, "currency": "EUR"}))).unwrap();
        assert_eq!(f["currency"], "eur");
        assert_eq!(f["status"], "draft");
        assert_eq!(f["metadata"], json!({}));
        assert_eq!(f["due_date"], Value::Null);
        let f = CUSTOMER.validate_create(&obj(json!({"name": "A", "metadata": null}))).unwrap();
        assert_eq!(f["metadata"], json!({}));
    }

    #[test]
    fn patch_merges_metadata_and_rejects_null_required() {
        let cur = obj(json!({"name": "A", "email": null, "metadata": {"a": "1", "b": "2"}}));
        let out = CUSTOMER.apply_patch(&cur, &obj(json!({"metadata": {"a": null, "c": "3"}}))).unwrap();
        assert_eq!(out["metadata"], json!({"b": "2", "c": "3"}));
        let errs = CUSTOMER.apply_patch(&cur, &obj(json!({"name": null}))).unwrap_err();
        assert_eq!(errs[0].field, "name");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let bad = [
            json!({"customer_id": "c", "amount": -1, "currency": "eur"}),
            json!({"customer_id": "c", "amount": 1, "currency": "euro"}),
            json!({"customer_id": "c", "amount": 1, "currency": "eur", "status": "lost"}),
            json!({"customer_id": "c", "amount": 1, "currency": "eur", "due_date": "2026-13-01"}),
            json!({"customer_id": "c", "amount": 1.5, "currency": "eur"}),
            json!({"customer_id": "c", "amount": 1, "currency": "eur", "due_date": "-0001-01-01"}),
            json!({"customer_id": "c", "amount": 1, "currency": "eur", "due_date": "12345-01-01"}),
            json!({"customer_id": "c\u{0}", "amount": 1, "currency": "eur"}),
            json!({"customer_id": "c", "amount": 1, "currency": "eur", "metadata": {"k\u{0}": "v"}}),
        ];
        for body in bad {
            assert!(INVOICE.validate_create(&obj(body.clone())).is_err(), "{body}");
        }
    }
}
