//! Stripe objects in hub terms: which customer fields are synced, how a Stripe
//! customer or invoice maps to hub fields, and the hub create body for a customer
//! first seen in Stripe. The engine compares these (echo, staleness, merge).

use serde_json::{json, Map, Value};
use syncflow_core::entity::INVOICE_STATUSES;
use syncflow_core::sync::{normalize, Fields};
use syncflow_core::CUSTOMER;

use crate::{ExternalRef, Mapped};

/// The metadata key holding the hub id on Stripe objects.
pub const SYNCFLOW_ID: &str = "syncflow_id";

/// The customer fields synced both ways. Stripe's other fields are not ours to mirror.
pub const CUSTOMER_FIELDS: &[&str] = &["name", "email", "metadata"];

/// The invoice fields Stripe owns (invoices flow Stripe → hub only).
pub const INVOICE_FIELDS: &[&str] = &["customer_id", "amount", "currency", "status", "due_date", "metadata"];

/// Stripe metadata without `syncflow_id`, which is bookkeeping, not data.
fn metadata(obj: &Value) -> Value {
    let mut m = obj["metadata"].as_object().cloned().unwrap_or_default();
    m.remove(SYNCFLOW_ID);
    normalize(&Value::Object(m))
}

/// A Stripe customer object's synced fields. Stripe stores "" for a cleared field.
pub fn customer_fields(obj: &Value) -> Fields {
    let mut f = Fields::new();
    f.insert("name".into(), normalize(&obj["name"]));
    f.insert("email".into(), normalize(&obj["email"]));
    f.insert("metadata".into(), metadata(obj));
    f
}

/// A Stripe invoice in hub terms; its customer is a Stripe id to resolve by link.
pub fn invoice_mapped(obj: &Value) -> Mapped {
    let mut f = Fields::new();
    f.insert("amount".into(), json!(obj["amount_due"].as_i64().or(obj["total"].as_i64()).unwrap_or(0)));
    f.insert("currency".into(), json!(obj["currency"].as_str().unwrap_or("usd")));
    if let Some(status) = obj["status"].as_str().filter(|s| INVOICE_STATUSES.contains(s)) {
        f.insert("status".into(), json!(status));
    }
    let due = obj["due_date"].as_i64().and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    f.insert("due_date".into(), json!(due.map(|d| d.format("%Y-%m-%d").to_string())));
    f.insert("metadata".into(), metadata(obj));
    let refs = obj["customer"]
        .as_str()
        .map(|c| ExternalRef { field: "customer_id".into(), entity: &CUSTOMER, external_id: c.to_string() })
        .into_iter()
        .collect();
    Mapped { fields: f, refs, owned: true }
}

/// A hub create body for a customer first seen in Stripe. The hub requires a name;
/// Stripe does not, so the e-mail (or the Stripe id) stands in, and the remark says so.
pub fn customer_create_body(fields: &Fields, external_id: &str) -> (Map<String, Value>, Option<String>) {
    let mut body: Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if body.get("name").is_none_or(Value::is_null) {
        let name = fields.get("email").and_then(Value::as_str).unwrap_or(external_id).to_string();
        let remark = format!("Stripe customer has no name; the hub's required name is set to `{name}`");
        body.insert("name".into(), Value::String(name));
        return (body, Some(remark));
    }
    (body, None)
}
