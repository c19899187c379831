//! Hub → Stripe: customer create/update/delete as form-encoded calls. Only the
//! fields that differ from Stripe's last-synced state are sent (so a concurrent
//! edit of another field in Stripe survives, invariant 5), every write carries an
//! idempotency key derived from the delivery and its exact parameters
//! (invariant 2), and the returned link remembers what was sent, for echo
//! detection of the webhook that follows (invariant 3).

use serde_json::Value;
use syncflow_core::sync::{changed_fields, project, Fields, LinkUpdate, SyncSnapshot, DELETED};
use syncflow_core::Op;

use super::client::{idempotency_key, Form};
use super::state::{customer_fields, CUSTOMER_FIELDS, SYNCFLOW_ID};
use super::StripeConnector;
use crate::{Outcome, PushRequest};

fn hub_fields(snapshot: &Value) -> Fields {
    project(CUSTOMER_FIELDS, snapshot.as_object().unwrap_or(&serde_json::Map::new()))
}

/// Fields a push wrote: their write time is Stripe's, unknown to us, so they are
/// marked `pushed` rather than given a time from our clock (one clock per decision).
fn all_pushed() -> std::collections::BTreeSet<String> {
    CUSTOMER_FIELDS.iter().map(|f| f.to_string()).collect()
}

impl StripeConnector {
    pub(super) async fn push_customer(&self, req: PushRequest<'_>) -> Outcome {
        let change = req.change;
        let link = req.link;
        let snap = SyncSnapshot::parse(link.and_then(|l| l.snapshot.as_deref()));
        // A change older than the last sync (an inward apply wrote a newer hub
        // version since) must not bring back old values: the link's hub state is
        // newer and contains this change's effect.
        let link_version = link.and_then(|l| l.synced_version).unwrap_or(0);
        let hub_state = match &snap.hub {
            Some(hub) if link_version > change.version => hub.clone(),
            _ => hub_fields(&change.snapshot),
        };
        let synced_version = change.version.max(link_version);
        let existing = link.filter(|_| snap.external.is_some()).map(|l| l.external_id.as_str());
        let deleted_in_stripe = link.and_then(|l| l.fingerprint.as_deref()) == Some(DELETED);
        if deleted_in_stripe && change.op == Op::Upsert {
            // The customer was deleted (in Stripe, or by an earlier delivery) after
            // this change was made: the hub record is a tombstone by now, and an
            // older upsert must not bring the customer back.
            return Outcome::Delivered {
                http_status: None,
                external_id: link.map(|l| l.external_id.clone()),
                link: None,
            };
        }

        if change.op == Op::Delete {
            let Some(external_id) = link.map(|l| l.external_id.as_str()) else {
                // Never reached Stripe: nothing to delete there.
                return Outcome::Delivered { http_status: None, external_id: None, link: None };
            };
            let status = match self.client.delete(&format!("/v1/customers/{external_id}")).await {
                Ok(_) => Some(200),
                // Already gone (deleted in Stripe, or an earlier attempt got through).
                Err(f) if f.is_not_found() => Some(404),
                Err(f) => return f.outcome(&self.system),
            };
            let snapshot =
                SyncSnapshot { external: None, hub: Some(hub_state), at: snap.at.clone(), pushed: all_pushed() };
            return delivered(status, external_id, synced_version, &snapshot);
        }

        let Some(external_id) = existing else {
            let mut form = full_form(&hub_state);
            form.push((format!("metadata[{SYNCFLOW_ID}]"), change.record_id.clone()));
            let path = "/v1/customers";
            let key = idempotency_key(req.delivery_id, "POST", path, &form);
            return match self.client.post(path, &form, Some(&key)).await {
                Ok(obj) => {
                    let Some(id) = obj["id"].as_str() else {
                        return Outcome::Retry {
                            http_status: Some(200),
                            reason: format!("{} answered a customer create without an id", self.system),
                            retry_after: None,
                        };
                    };
                    let snapshot = SyncSnapshot {
                        external: Some(customer_fields(&obj)),
                        hub: Some(hub_state),
                        at: Default::default(),
                        pushed: all_pushed(),
                    };
                    delivered(Some(200), id, synced_version, &snapshot)
                }
                Err(f) => f.outcome(&self.system),
            };
        };

        let stripe_state = snap.external.clone().unwrap_or_default();
        let names: Vec<String> = CUSTOMER_FIELDS.iter().map(|f| f.to_string()).collect();
        let changed = changed_fields(&stripe_state, &hub_state, &names);
        let mut sent = stripe_state.clone();
        let mut pushed = snap.pushed.clone();
        for f in &changed {
            sent.insert(f.clone(), hub_state.get(f).cloned().unwrap_or(Value::Null));
            pushed.insert(f.clone());
        }
        let snapshot = SyncSnapshot { external: Some(sent), hub: Some(hub_state.clone()), at: snap.at.clone(), pushed };
        if changed.is_empty() {
            // Stripe already has this state (e.g. the change only touched fields we
            // do not sync): no call, but the link moves to this version.
            return delivered(None, external_id, synced_version, &snapshot);
        }
        let form = diff_form(&stripe_state, &hub_state, &changed);
        let path = format!("/v1/customers/{external_id}");
        let key = idempotency_key(req.delivery_id, "POST", &path, &form);
        match self.client.post(&path, &form, Some(&key)).await {
            Ok(_) => delivered(Some(200), external_id, synced_version, &snapshot),
            Err(f) => f.outcome(&self.system),
        }
    }
}

fn delivered(status: Option<u16>, external_id: &str, synced_version: i64, snapshot: &SyncSnapshot) -> Outcome {
    Outcome::Delivered {
        http_status: status,
        external_id: Some(external_id.to_string()),
        link: Some(LinkUpdate {
            external_id: external_id.to_string(),
            synced_version,
            fingerprint: Some(snapshot.fingerprint()),
            snapshot: Some(snapshot.to_text()),
        }),
    }
}

fn text(state: &Fields, field: &str) -> String {
    state.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn object(state: &Fields, field: &str) -> serde_json::Map<String, Value> {
    state.get(field).and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Every synced field, for a create.
fn full_form(state: &Fields) -> Form {
    let mut form = Form::new();
    for f in ["name", "email"] {
        let v = text(state, f);
        if !v.is_empty() {
            form.push((f.into(), v));
        }
    }
    for (k, v) in object(state, "metadata") {
        form.push((format!("metadata[{k}]"), v.as_str().map_or_else(|| v.to_string(), str::to_string)));
    }
    form
}

/// Only the changed fields; an empty string is how Stripe clears a field or
/// removes a metadata key.
fn diff_form(from: &Fields, to: &Fields, changed: &[String]) -> Form {
    let mut form = Form::new();
    for f in changed {
        if f != "metadata" {
            form.push((f.clone(), text(to, f)));
            continue;
        }
        let (old, new) = (object(from, f), object(to, f));
        for (k, v) in &new {
            if old.get(k) != Some(v) {
                form.push((format!("metadata[{k}]"), v.as_str().map_or_else(|| v.to_string(), str::to_string)));
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            form.push((format!("metadata[{k}]"), String::new()));
        }
    }
    form
}
