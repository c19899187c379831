//! Salesforce → hub translation. The REST API has no webhooks, so changes come by
//! polling: `queryAll` (deleted rows too, `IsDeleted`) on `SystemModstamp` from the
//! cursor minus an overlap window — SOQL ignores milliseconds and records commit late —
//! paging through `nextRecordsUrl`; the inbox drops what the overlap reads twice
//! (an event is a record in one state at one `SystemModstamp`). The engine decides the rest.

use reqwest::Method;
use serde_json::{Map, Value};
use syncflow_core::sync::{fingerprint, Fields};
use syncflow_core::{Entity, CUSTOMER};

use super::SalesforceConnector;
use crate::{Inward, InwardEvent, Mapped, ObjectPage, PolledEvent, RemoteError, WebhookError};

/// Objects per backfill page.
const PAGE: usize = 200;

/// `2026-05-20T20:49:32.000+0000` (Salesforce) or RFC 3339 → epoch seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.timestamp())
}

/// A SOQL datetime literal (UTC, whole seconds).
pub fn soql_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl SalesforceConnector {
    /// One record as an event: the record at its `SystemModstamp`.
    fn record_event(&self, rec: &Value) -> Result<InwardEvent, String> {
        let id = rec["Id"].as_str().filter(|s| !s.is_empty()).ok_or("record has no Id")?;
        let stamp = rec["SystemModstamp"].as_str().ok_or("record has no SystemModstamp")?;
        let at = parse_time(stamp).ok_or_else(|| format!("SystemModstamp `{stamp}` is not a time"))?;
        let deleted = rec["IsDeleted"] == true;
        // A record at one second is one event only if its state is the same: two
        // edits within a second share a SystemModstamp, so the state is in the id.
        let state = if deleted { "deleted".to_string() } else { fingerprint(&self.mapping.to_hub(rec)) };
        Ok(InwardEvent {
            event_id: format!("{id}@{at}:{}", &state[..state.len().min(12)]),
            event_type: format!("{}.{}", self.mapping.sobject, if deleted { "deleted" } else { "changed" }),
            entity: Some(&CUSTOMER),
            external_id: Some(id.to_string()),
            occurred_at: at,
            deleted,
            object: rec.clone(),
        })
    }

    fn select(&self) -> String {
        format!("SELECT {} FROM {}", self.mapping.soql_fields().join(", "), self.mapping.sobject)
    }

    /// Every page of a query, following `nextRecordsUrl`.
    async fn query_all_pages(&self, resource: &str, soql: &str) -> Result<Vec<Value>, RemoteError> {
        let mut path = self.client.data_path(&format!("/{resource}?q={}", encode_query(soql)));
        let mut out = Vec::new();
        loop {
            let (_, page) = self
                .client
                .call(Method::GET, &path, None)
                .await
                .map_err(|e| RemoteError(format!("querying {}: {e}", self.system)))?;
            out.extend(page["records"].as_array().cloned().unwrap_or_default());
            match page["nextRecordsUrl"].as_str().filter(|_| page["done"] != true) {
                Some(next) => path = next.to_string(),
                None => return Ok(out),
            }
        }
    }
}

#[async_trait::async_trait]
impl Inward for SalesforceConnector {
    fn parse_webhook(&self, _: &reqwest::header::HeaderMap, _: &[u8], _: i64) -> Result<InwardEvent, WebhookError> {
        Err(WebhookError::NotConfigured) // Salesforce's REST API sends none: we poll
    }

    fn parse_stored(&self, payload: &str) -> Result<InwardEvent, String> {
        let rec: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        self.record_event(&rec)
    }

    fn poll_interval(&self) -> Option<std::time::Duration> {
        self.poll_interval
    }

    fn start_position(&self) -> String {
        chrono::Utc::now().timestamp().to_string()
    }

    async fn events_since(&self, position: &str) -> Result<Vec<PolledEvent>, RemoteError> {
        let cursor: i64 = position.parse().map_err(|_| RemoteError(format!("bad poll position `{position}`")))?;
        let from = cursor - self.overlap.as_secs() as i64;
        let soql = format!("{} WHERE SystemModstamp >= {} ORDER BY SystemModstamp, Id", self.select(), soql_time(from));
        let records = self.query_all_pages("queryAll", &soql).await?;
        let mut events: Vec<PolledEvent> = records
            .iter()
            .filter_map(|rec| match self.record_event(rec) {
                Ok(event) => Some(PolledEvent { position: event.occurred_at.to_string(), raw: rec.to_string(), event }),
                Err(why) => {
                    tracing::warn!(system = %self.system, error = %why, "skipped an unreadable record");
                    None
                }
            })
            .collect();
        events.sort_by_key(|p| p.event.occurred_at);
        Ok(events)
    }

    async fn fetch(&self, _: &'static Entity, external_id: &str) -> Result<Option<Value>, RemoteError> {
        let path = self.client.data_path(&format!(
            "/sobjects/{}/{external_id}?fields={}",
            self.mapping.sobject,
            self.mapping.soql_fields().join(",")
        ));
        match self.client.call(Method::GET, &path, None).await {
            Ok((_, rec)) if rec["IsDeleted"] == true => Ok(None),
            Ok((_, rec)) => Ok(Some(rec)),
            Err(e) if e.is_gone() => Ok(None),
            Err(e) => Err(RemoteError(format!("fetching {external_id} from {}: {e}", self.system))),
        }
    }

    fn synced_fields(&self, _: &'static Entity) -> &'static [&'static str] {
        self.mapping.synced()
    }

    fn hub_view(&self, _: &'static Entity, fields: &Map<String, Value>) -> Fields {
        self.mapping.hub_view(fields)
    }

    fn to_hub(&self, _: &'static Entity, object: &Value) -> Mapped {
        Mapped { fields: self.mapping.to_hub(object), refs: Vec::new(), owned: false }
    }

    fn hub_id(&self, object: &Value) -> Option<String> {
        object[&self.mapping.external_id_field].as_str().filter(|s| !s.is_empty()).map(str::to_string)
    }

    fn create_body(
        &self,
        _: &'static Entity,
        fields: &Fields,
        external_id: &str,
    ) -> (Map<String, Value>, Option<String>) {
        let mut body: Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if body.get("name").is_none_or(Value::is_null) {
            let name = fields.get("email").and_then(Value::as_str).unwrap_or(external_id).to_string();
            let remark =
                format!("{} record has no name; the hub's required name is set to `{name}`", self.mapping.sobject);
            body.insert("name".into(), Value::String(name));
            return (body, Some(remark));
        }
        (body, None)
    }

    async fn write_back_id(&self, _: &'static Entity, external_id: &str, hub_id: &str) -> Result<(), RemoteError> {
        let path = self.client.data_path(&format!("/sobjects/{}/{external_id}", self.mapping.sobject));
        let mut body = Map::new();
        body.insert(self.mapping.external_id_field.clone(), Value::String(hub_id.to_string()));
        self.client
            .call(Method::PATCH, &path, Some(&Value::Object(body)))
            .await
            .map(|_| ())
            .map_err(|e| RemoteError(format!("writing the hub id to {external_id}: {e}")))
    }

    async fn list_objects(&self, _: &'static Entity, after: Option<&str>) -> Result<ObjectPage, RemoteError> {
        let filter = match after {
            Some(id) if id.chars().all(|c| c.is_ascii_alphanumeric()) => format!(" WHERE Id > '{id}'"),
            Some(id) => return Err(RemoteError(format!("bad backfill position `{id}`"))),
            None => String::new(),
        };
        let soql = format!("{}{filter} ORDER BY Id LIMIT {PAGE}", self.select());
        let path = self.client.data_path(&format!("/query?q={}", encode_query(&soql)));
        let (_, page) = self
            .client
            .call(Method::GET, &path, None)
            .await
            .map_err(|e| RemoteError(format!("listing {}: {e}", self.system)))?;
        let objects = page["records"].as_array().cloned().unwrap_or_default();
        let next = objects.last().and_then(|o| o["Id"].as_str()).map(str::to_string).filter(|_| objects.len() == PAGE);
        Ok(ObjectPage { objects, next })
    }
}

/// Percent-encodes a SOQL statement for the `q` parameter.
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
