//! Stripe → hub translation: signed webhooks and `GET /v1/events` parsed into
//! `InwardEvent`s, objects re-fetched and listed, mapped to hub fields. What to do
//! with an event (inbox, echo, staleness, merge) is the engine's.

use serde_json::{Map, Value};
use syncflow_core::sync::Fields;
use syncflow_core::{Entity, CUSTOMER, INVOICE};

use super::state::{
    customer_create_body, customer_fields, invoice_mapped, CUSTOMER_FIELDS, INVOICE_FIELDS, SYNCFLOW_ID,
};
use super::StripeConnector;
use crate::{signature, Inward, InwardEvent, Mapped, ObjectPage, PolledEvent, RemoteError, WebhookError};

/// Events per `GET /v1/events` page (Stripe's maximum).
const PAGE: usize = 100;

/// Parses one Stripe event, as sent to webhooks and listed by `GET /v1/events`.
pub fn parse_event(v: &Value) -> Result<InwardEvent, String> {
    let id = v["id"].as_str().filter(|s| !s.is_empty()).ok_or("event has no `id`")?;
    let kind = v["type"].as_str().ok_or("event has no `type`")?;
    let created = v["created"].as_i64().ok_or("event has no `created` time")?;
    let object = v["data"]["object"].clone();
    if !object.is_object() {
        return Err("event has no `data.object`".into());
    }
    let entity = match kind {
        "customer.created" | "customer.updated" | "customer.deleted" => Some(&CUSTOMER),
        k if k.starts_with("invoice.") && object["object"] == "invoice" => Some(&INVOICE),
        _ => None,
    };
    Ok(InwardEvent {
        event_id: id.into(),
        event_type: kind.into(),
        entity,
        external_id: object["id"].as_str().map(str::to_string),
        occurred_at: created,
        deleted: kind.ends_with(".deleted") || object["deleted"] == true,
        object,
    })
}

fn plural(entity: &Entity) -> Result<&'static str, RemoteError> {
    match entity.name {
        "customer" => Ok("customers"),
        "invoice" => Ok("invoices"),
        other => Err(RemoteError(format!("Stripe has no {other}s"))),
    }
}

#[async_trait::async_trait]
impl Inward for StripeConnector {
    fn parse_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<InwardEvent, WebhookError> {
        if self.webhook_secrets.is_empty() {
            return Err(WebhookError::NotConfigured);
        }
        let header = headers.get("stripe-signature").map(|v| v.to_str().unwrap_or(""));
        let secrets: Vec<&str> = self.webhook_secrets.iter().map(String::as_str).collect();
        signature::verify(header, body, &secrets, now, self.tolerance.as_secs() as i64)?;
        let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Payload(e.to_string()))?;
        parse_event(&value).map_err(WebhookError::Payload)
    }

    fn parse_stored(&self, payload: &str) -> Result<InwardEvent, String> {
        let value: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        parse_event(&value)
    }

    fn poll_interval(&self) -> Option<std::time::Duration> {
        self.poll_interval
    }

    fn start_position(&self) -> String {
        chrono::Utc::now().timestamp().to_string()
    }

    /// Events created at or after the position (whole seconds; the inbox drops the
    /// ones seen before), oldest first; an event's position is its second.
    async fn events_since(&self, position: &str) -> Result<Vec<PolledEvent>, RemoteError> {
        let cursor: i64 = position.parse().map_err(|_| RemoteError(format!("bad poll position `{position}`")))?;
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("created[gte]".to_string(), cursor.to_string()), ("limit".into(), PAGE.to_string())];
            if let Some(a) = &after {
                query.push(("starting_after".into(), a.clone()));
            }
            let page = self
                .client
                .get("/v1/events", &query)
                .await
                .map_err(|f| RemoteError(format!("listing events from {}: {f}", self.system)))?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data.last().and_then(|e| e["id"].as_str()).map(str::to_string);
            // A server that ignores `created[gte]` and lists newest first has
            // nothing newer past an event older than the cursor.
            let older = data.iter().any(|e| e["created"].as_i64().is_some_and(|c| c < cursor));
            events.extend(data.into_iter().filter(|e| e["created"].as_i64().is_some_and(|c| c >= cursor)));
            if older || page["has_more"] != true || after.is_none() {
                break;
            }
        }
        // Stripe lists newest first (the local stand-in oldest first): time order
        // either way; same-second order is settled by the engine re-fetching.
        let mut parsed: Vec<PolledEvent> = events
            .into_iter()
            .filter_map(|v| {
                parse_event(&v).ok().map(|event| PolledEvent {
                    position: event.occurred_at.to_string(),
                    raw: v.to_string(),
                    event,
                })
            })
            .collect();
        parsed.sort_by_key(|p| p.event.occurred_at);
        Ok(parsed)
    }

    async fn fetch(&self, entity: &'static Entity, external_id: &str) -> Result<Option<Value>, RemoteError> {
        match self.client.get(&format!("/v1/{}/{external_id}", plural(entity)?), &[]).await {
            Ok(obj) if obj["deleted"] == true => Ok(None),
            Ok(obj) => Ok(Some(obj)),
            Err(f) if f.is_not_found() => Ok(None),
            Err(f) => Err(RemoteError(format!("fetching {external_id} from {}: {f}", self.system))),
        }
    }

    fn synced_fields(&self, entity: &'static Entity) -> &'static [&'static str] {
        if entity.name == INVOICE.name {
            INVOICE_FIELDS
        } else {
            CUSTOMER_FIELDS
        }
    }

    fn to_hub(&self, entity: &'static Entity, object: &Value) -> Mapped {
        if entity.name == INVOICE.name {
            invoice_mapped(object)
        } else {
            Mapped { fields: customer_fields(object), refs: Vec::new(), owned: false }
        }
    }

    fn hub_id(&self, object: &Value) -> Option<String> {
        object["metadata"][SYNCFLOW_ID].as_str().filter(|s| !s.is_empty()).map(str::to_string)
    }

    fn create_body(
        &self,
        entity: &'static Entity,
        fields: &Fields,
        external_id: &str,
    ) -> (Map<String, Value>, Option<String>) {
        if entity.name == CUSTOMER.name {
            customer_create_body(fields, external_id)
        } else {
            (fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), None)
        }
    }

    async fn write_back_id(&self, entity: &'static Entity, external_id: &str, hub_id: &str) -> Result<(), RemoteError> {
        if entity.name != CUSTOMER.name {
            return Ok(()); // invoices are Stripe's; we do not write to them
        }
        let form = vec![(format!("metadata[{SYNCFLOW_ID}]"), hub_id.to_string())];
        let path = format!("/v1/customers/{external_id}");
        let key = super::client::idempotency_key(0, "POST", &path, &form);
        self.client
            .post(&path, &form, Some(&key))
            .await
            .map(|_| ())
            .map_err(|f| RemoteError(format!("writing {SYNCFLOW_ID} to {external_id}: {f}")))
    }

    async fn list_objects(&self, entity: &'static Entity, after: Option<&str>) -> Result<ObjectPage, RemoteError> {
        let mut query = vec![("limit".to_string(), PAGE.to_string())];
        if let Some(a) = after {
            query.push(("starting_after".into(), a.to_string()));
        }
        let path = format!("/v1/{}", plural(entity)?);
        let page =
            self.client.get(&path, &query).await.map_err(|f| {
                RemoteError(format!("listing {} from {}: {f}", plural(entity).unwrap_or(""), self.system))
            })?;
        let objects = page["data"].as_array().cloned().unwrap_or_default();
        let last = objects.last().and_then(|o| o["id"].as_str()).map(str::to_string);
        Ok(ObjectPage { next: last.filter(|_| page["has_more"] == true), objects })
    }
}
