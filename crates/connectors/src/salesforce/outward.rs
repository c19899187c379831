//! Hub → Salesforce: upsert by external id (the hub id), so a retried push can never
//! create a twin; only fields that differ from Salesforce's last-synced state are
//! sent (a concurrent edit of another field there survives); with a backlog, up to
//! 200 upserts go in one sObject Collections call, each item's result mapped back to
//! its delivery. Deletes go by the linked Salesforce id.

use reqwest::Method;
use serde_json::{json, Value};
use syncflow_core::sync::{changed_fields, Fields, LinkUpdate, SyncSnapshot};
use syncflow_core::Op;

use super::client::SfError;
use super::SalesforceConnector;
use crate::{Outcome, PushRequest};

/// What one push request needs, decided before any call.
enum Plan {
    /// Nothing to send: already in the state the link records (or never there).
    Done(Outcome),
    Delete {
        sf_id: String,
        snapshot: SyncSnapshot,
        version: i64,
    },
    Upsert {
        hub_id: String,
        body: serde_json::Map<String, Value>,
        snapshot: SyncSnapshot,
        version: i64,
        known_id: Option<String>,
    },
}

impl SalesforceConnector {
    fn plan(&self, req: &PushRequest<'_>) -> Plan {
        let change = req.change;
        if change.entity != "customer" {
            return Plan::Done(Outcome::Reject {
                http_status: None,
                reason: format!(
                    "{} receives customers only; remove `{}` from its entities",
                    self.system, change.entity
                ),
            });
        }
        let link = req.link;
        let snap = SyncSnapshot::parse(link.and_then(|l| l.snapshot.as_deref()));
        let link_version = link.and_then(|l| l.synced_version).unwrap_or(0);
        let hub_state = match &snap.hub {
            Some(hub) if link_version > change.version => hub.clone(),
            _ => self.mapping.hub_view(change.snapshot.as_object().unwrap_or(&serde_json::Map::new())),
        };
        let version = change.version.max(link_version);
        let deleted_there = link.is_some() && snap.external.is_none() && snap.hub.is_some();
        if change.op == Op::Delete || deleted_there {
            let Some(l) = link.filter(|_| !deleted_there) else {
                // Never reached Salesforce, or already deleted there: nothing to do, and
                // an upsert older than the deletion must not bring the record back.
                return Plan::Done(Outcome::Delivered {
                    http_status: None,
                    external_id: link.map(|l| l.external_id.clone()),
                    link: None,
                });
            };
            let snapshot =
                SyncSnapshot { external: None, hub: Some(hub_state), at: snap.at.clone(), pushed: snap.pushed.clone() };
            return Plan::Delete { sf_id: l.external_id.clone(), snapshot, version };
        }
        let names: Vec<String> = self.mapping.synced().iter().map(|s| s.to_string()).collect();
        let (body, external_after, pushed) = match (&snap.external, link) {
            (Some(external), Some(_)) => {
                let changed = changed_fields(external, &hub_state, &names);
                if changed.is_empty() {
                    let snapshot = SyncSnapshot { hub: Some(hub_state), ..snap.clone() };
                    return Plan::Done(delivered(None, &link.unwrap().external_id, version, &snapshot));
                }
                let mut after: Fields = external.clone();
                let mut pushed = snap.pushed.clone();
                for f in &changed {
                    after.insert(f.clone(), hub_state.get(f).cloned().unwrap_or(Value::Null));
                    pushed.insert(f.clone());
                }
                (self.mapping.to_sf(&hub_state, Some(external), Some(&changed)), after, pushed)
            }
            _ => (self.mapping.to_sf(&hub_state, None, None), hub_state.clone(), names.iter().cloned().collect()),
        };
        let snapshot =
            SyncSnapshot { external: Some(external_after), hub: Some(hub_state), at: snap.at.clone(), pushed };
        Plan::Upsert {
            hub_id: change.record_id.clone(),
            body,
            snapshot,
            version,
            known_id: link.map(|l| l.external_id.clone()),
        }
    }

    pub(super) async fn push_one(&self, req: PushRequest<'_>) -> Outcome {
        match self.plan(&req) {
            Plan::Done(outcome) => outcome,
            Plan::Delete { sf_id, snapshot, version } => self.delete(&sf_id, &snapshot, version).await,
            Plan::Upsert { hub_id, body, snapshot, version, known_id } => {
                let path = self.client.data_path(&format!(
                    "/sobjects/{}/{}/{}",
                    self.mapping.sobject,
                    self.mapping.external_id_field,
                    encode_path(&hub_id)
                ));
                match self.client.call(Method::PATCH, &path, Some(&Value::Object(body))).await {
                    // 201 created, 200 updated (API 46+), 204 updated (older versions).
                    Ok((status, answer)) => match answer["id"].as_str().map(str::to_string).or(known_id) {
                        Some(id) => delivered(Some(status), &id, version, &snapshot),
                        None => self.find_id(&hub_id, status, version, &snapshot).await,
                    },
                    Err(e) => e.outcome(&self.system),
                }
            }
        }
    }

    /// The Salesforce id of the record holding `hub_id` (an update answered 204, no body).
    async fn find_id(&self, hub_id: &str, status: u16, version: i64, snapshot: &SyncSnapshot) -> Outcome {
        let path = self.client.data_path(&format!(
            "/sobjects/{}/{}/{}?fields=Id",
            self.mapping.sobject,
            self.mapping.external_id_field,
            encode_path(hub_id)
        ));
        match self.client.call(Method::GET, &path, None).await {
            Ok((_, rec)) => match rec["Id"].as_str() {
                Some(id) => delivered(Some(status), id, version, snapshot),
                None => Outcome::Retry {
                    http_status: Some(status),
                    reason: format!("{}: upserted record has no Id", self.system),
                    retry_after: None,
                },
            },
            Err(e) => e.outcome(&self.system),
        }
    }

    async fn delete(&self, sf_id: &str, snapshot: &SyncSnapshot, version: i64) -> Outcome {
        let path = self.client.data_path(&format!("/sobjects/{}/{sf_id}", self.mapping.sobject));
        match self.client.call(Method::DELETE, &path, None).await {
            Ok((status, _)) => delivered(Some(status), sf_id, version, snapshot),
            // Already gone (deleted there, or an earlier attempt got through).
            Err(e) if e.is_gone() => delivered(e.status, sf_id, version, snapshot),
            Err(e) => e.outcome(&self.system),
        }
    }

    /// Upserts in sObject Collections of up to `batch_size`; deletes one by one.
    pub(super) async fn push_many(&self, reqs: &[PushRequest<'_>]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; reqs.len()];
        let mut upserts = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.plan(req) {
                Plan::Done(o) => outcomes[i] = Some(o),
                Plan::Delete { sf_id, snapshot, version } => {
                    outcomes[i] = Some(self.delete(&sf_id, &snapshot, version).await)
                }
                Plan::Upsert { hub_id, body, snapshot, version, .. } => {
                    upserts.push((i, hub_id, body, snapshot, version))
                }
            }
        }
        for chunk in upserts.chunks(self.batch) {
            let records: Vec<Value> = chunk
                .iter()
                .map(|(_, hub_id, body, _, _)| {
                    let mut r = body.clone();
                    r.insert("attributes".into(), json!({"type": self.mapping.sobject}));
                    r.insert(self.mapping.external_id_field.clone(), Value::String(hub_id.clone()));
                    Value::Object(r)
                })
                .collect();
            let path = self
                .client
                .data_path(&format!("/composite/sobjects/{}/{}", self.mapping.sobject, self.mapping.external_id_field));
            let body = json!({"allOrNone": false, "records": records});
            match self.client.call(Method::PATCH, &path, Some(&body)).await {
                Ok((status, results)) => {
                    let results = results.as_array().cloned().unwrap_or_default();
                    for (k, (i, _, _, snapshot, version)) in chunk.iter().enumerate() {
                        outcomes[*i] = Some(match results.get(k) {
                            Some(r) if r["success"] == true => match r["id"].as_str() {
                                Some(id) => delivered(Some(status), id, *version, snapshot),
                                None => Outcome::Retry {
                                    http_status: Some(status),
                                    reason: format!("{}: result without id", self.system),
                                    retry_after: None,
                                },
                            },
                            Some(r) => item_error(r).outcome(&self.system),
                            None => Outcome::Retry {
                                http_status: Some(status),
                                reason: format!("{}: no result for this record in the collection answer", self.system),
                                retry_after: None,
                            },
                        });
                    }
                }
                Err(e) => {
                    let outcome = e.outcome(&self.system);
                    for (i, ..) in chunk {
                        outcomes[*i] = Some(outcome.clone());
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Retry {
                    http_status: None,
                    reason: "not pushed".into(),
                    retry_after: None,
                })
            })
            .collect()
    }
}

/// A collection item's error: `{"statusCode","message","fields"}`.
fn item_error(r: &Value) -> SfError {
    let e = &r["errors"][0];
    let mut message = e["message"].as_str().unwrap_or("failed").to_string();
    if let Some(fields) = e["fields"].as_array().filter(|f| !f.is_empty()) {
        let names: Vec<&str> = fields.iter().filter_map(Value::as_str).collect();
        message.push_str(&format!(" (fields: {})", names.join(", ")));
    }
    SfError { status: None, code: e["statusCode"].as_str().unwrap_or("UNKNOWN").to_string(), message, hold: None }
        .with_item_status()
}

impl SfError {
    /// Item errors come inside a 200: a permanent one gets a 4xx-like status so it
    /// is not mistaken for a network failure.
    fn with_item_status(mut self) -> SfError {
        if !self.is_transient_code() {
            self.status = Some(400);
        }
        self
    }

    fn is_transient_code(&self) -> bool {
        matches!(self.code.as_str(), "UNABLE_TO_LOCK_ROW" | "REQUEST_LIMIT_EXCEEDED")
    }
}

fn delivered(status: Option<u16>, sf_id: &str, synced_version: i64, snapshot: &SyncSnapshot) -> Outcome {
    Outcome::Delivered {
        http_status: status,
        external_id: Some(sf_id.to_string()),
        link: Some(LinkUpdate {
            external_id: sf_id.to_string(),
            synced_version,
            fingerprint: Some(snapshot.fingerprint()),
            snapshot: Some(snapshot.to_text()),
        }),
    }
}

/// Hub ids are `[a-z0-9_]`; anything else is percent-encoded for the path.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
