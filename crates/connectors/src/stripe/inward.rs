//! Stripe → hub: signed webhooks and `GET /v1/events` polling, both feeding one
//! apply path through the inbox.
//!
//! Invariants kept here: nothing is stored for a webhook whose signature fails; an
//! event is applied once whoever sees it (inbox unique per event id, plus a lease);
//! our own write coming back is recorded as `echo` (fingerprint of the link's
//! last-synced state) and changes nothing (3); an event older than one already
//! applied for the same object is `stale`, and a field we synced after the event
//! was created is not overwritten by it (4); only fields Stripe changed since the
//! last sync are applied (5); the poll cursor advances only past settled events (7).

use serde_json::{json, Map, Value};
use syncflow_core::entity::INVOICE_STATUSES;
use syncflow_core::{Entity, CUSTOMER, INVOICE};
use syncflow_store::{InboxEvent, InboxOutcome, InwardOp, InwardWrite, Link, NewInboxEvent, Store, StoreError};

use super::state::{changed_fields, hub_create_body, hub_patch, CustomerState, SyncSnapshot, DELETED, SYNCFLOW_ID};
use super::StripeConnector;
use crate::{signature, InwardError, PollReport, WebhookError, WebhookReceipt};

/// How long one applier owns an inbox row before another may take it over.
const APPLY_LEASE_MS: i64 = 60_000;
/// Events per `GET /v1/events` page (Stripe's maximum).
const PAGE: usize = 100;
/// Attempts when a concurrent hub write moves the record under us.
const APPLY_ATTEMPTS: usize = 5;
/// Our push times come from our clock, event times from Stripe's: closer than
/// this, the order is uncertain and the object is re-fetched.
const CLOCK_SLACK_SECS: i64 = 1;

/// One Stripe event, as sent to webhooks and listed by `GET /v1/events`.
#[derive(Debug, Clone)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    pub created: i64,
    pub object: Value,
}

impl StripeEvent {
    pub fn from_value(v: &Value) -> Result<StripeEvent, String> {
        let id = v["id"].as_str().filter(|s| !s.is_empty()).ok_or("event has no `id`")?;
        let kind = v["type"].as_str().ok_or("event has no `type`")?;
        let created = v["created"].as_i64().ok_or("event has no `created` time")?;
        let object = v["data"]["object"].clone();
        if !object.is_object() {
            return Err("event has no `data.object`".into());
        }
        Ok(StripeEvent { id: id.into(), kind: kind.into(), created, object })
    }

    /// The hub entity this event type maps to, if we apply it.
    pub fn entity(&self) -> Option<&'static Entity> {
        match self.kind.as_str() {
            "customer.created" | "customer.updated" | "customer.deleted" => Some(&CUSTOMER),
            k if k.starts_with("invoice.") && self.object["object"] == "invoice" => Some(&INVOICE),
            _ => None,
        }
    }

    pub fn object_id(&self) -> Option<&str> {
        self.object["id"].as_str()
    }

    fn is_delete(&self) -> bool {
        self.kind.ends_with(".deleted") || self.object["deleted"] == true
    }
}

/// The state an apply works from: the event's object, or a fresh copy when the
/// event's order is uncertain.
struct Seen {
    object: Value,
    deleted: bool,
    /// Stripe time the state is known to be current at.
    created: i64,
    /// Re-fetched: current, so no field of it can be stale.
    fresh: bool,
}

impl StripeConnector {
    /// Verifies and parses a webhook body. Nothing is stored on failure.
    pub fn verify_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<StripeEvent, WebhookError> {
        if self.webhook_secrets.is_empty() {
            return Err(WebhookError::NotConfigured);
        }
        let header = headers.get("stripe-signature").map(|v| v.to_str().unwrap_or(""));
        let secrets: Vec<&str> = self.webhook_secrets.iter().map(String::as_str).collect();
        signature::verify(header, body, &secrets, now, self.tolerance.as_secs() as i64)?;
        let value: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Payload(e.to_string()))?;
        StripeEvent::from_value(&value).map_err(WebhookError::Payload)
    }

    pub(super) async fn handle_webhook(
        &self,
        store: &Store,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookReceipt, WebhookError> {
        let event = self.verify_webhook(headers, body, chrono::Utc::now().timestamp())?;
        let payload = String::from_utf8_lossy(body).into_owned();
        let (outcome, duplicate) = self.receive(store, &event, payload, "webhook").await?;
        Ok(WebhookReceipt { event_id: event.id, outcome, duplicate })
    }

    /// Records the event (durable from here on) and applies it unless it is
    /// settled already or another applier holds it. Returns the outcome and
    /// whether the event had been seen before.
    pub async fn receive(
        &self,
        store: &Store,
        event: &StripeEvent,
        payload: String,
        source: &str,
    ) -> Result<(InboxOutcome, bool), InwardError> {
        let new = NewInboxEvent {
            system: self.system.clone(),
            event_id: event.id.clone(),
            event_type: event.kind.clone(),
            entity: event.entity().map(|e| e.name.to_string()),
            external_id: event.object_id().map(str::to_string),
            event_created: event.created,
            source: source.to_string(),
            payload,
        };
        let (row, inserted) = store.inbox_receive(&new, APPLY_LEASE_MS).await?;
        let outcome = if row.outcome != InboxOutcome::Received {
            row.outcome
        } else if !inserted && !store.inbox_claim(row.id, APPLY_LEASE_MS).await? {
            InboxOutcome::Received // another applier has it
        } else {
            self.settle(store, &row, event).await?
        };
        let counted = if inserted { outcome.as_str() } else { "duplicate" };
        store.metrics().inc(
            "syncflow_inbox_events_total",
            &[("system", &self.system), ("source", source), ("outcome", counted)],
            1.0,
        );
        Ok((outcome, !inserted))
    }

    /// Applies a claimed inbox row and records its outcome.
    async fn settle(&self, store: &Store, row: &InboxEvent, event: &StripeEvent) -> Result<InboxOutcome, InwardError> {
        // One apply at a time per object: events of one customer must not race each
        // other's staleness and merge decisions (different objects go in
        // parallel). Other nodes are fenced by the inbox lease and the record's
        // version check.
        let _turn = self.apply_turn(event.object_id().unwrap_or_default()).await;
        let Some(entity) = event.entity() else {
            let remarks = format!("{} events are not applied", event.kind);
            store.inbox_settle(row.id, InboxOutcome::Ignored, None, Some(&remarks)).await?;
            return Ok(InboxOutcome::Ignored);
        };
        for _ in 0..APPLY_ATTEMPTS {
            let result = if entity.name == CUSTOMER.name {
                self.apply_customer(store, row, event).await
            } else {
                self.apply_invoice(store, row, event).await
            };
            match result {
                Err(InwardError::Store(StoreError::VersionMismatch { .. })) => continue,
                Err(InwardError::Store(StoreError::Invalid(fields))) => {
                    let list: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
                    let remarks = format!("not valid for the hub: {}", list.join("; "));
                    store.inbox_settle(row.id, InboxOutcome::Rejected, None, Some(&remarks)).await?;
                    return Ok(InboxOutcome::Rejected);
                }
                other => return other,
            }
        }
        let remarks = "the hub record kept changing under concurrent writes; will not retry";
        store.inbox_settle(row.id, InboxOutcome::Failed, None, Some(remarks)).await?;
        Ok(InboxOutcome::Failed)
    }

    /// Decides what state to apply: the event's, `None` for stale, or a re-fetched
    /// copy when the event's order against one already applied is uncertain.
    async fn seen(
        &self,
        store: &Store,
        row: &InboxEvent,
        event: &StripeEvent,
        kind: &str,
        must_refetch: bool,
    ) -> Result<Result<Seen, String>, InwardError> {
        let external_id = event.object_id().unwrap_or_default();
        let last = store.inbox_last_applied(&self.system, external_id, row.id).await?;
        if let Some(last) = last {
            if event.created < last {
                return Ok(Err(format!(
                    "older than an event already applied for {external_id} (created {} < {last})",
                    event.created
                )));
            }
        }
        let uncertain = must_refetch || last == Some(event.created);
        if !uncertain {
            return Ok(Ok(Seen {
                object: event.object.clone(),
                deleted: event.is_delete(),
                created: event.created,
                fresh: false,
            }));
        }
        let now = chrono::Utc::now().timestamp();
        match self.client.get(&format!("/v1/{kind}s/{external_id}"), &[]).await {
            Ok(obj) => {
                let deleted = obj["deleted"] == true;
                Ok(Ok(Seen { object: obj, deleted, created: now.max(event.created), fresh: true }))
            }
            Err(f) if f.is_not_found() => {
                Ok(Ok(Seen { object: event.object.clone(), deleted: true, created: now, fresh: true }))
            }
            Err(f) => Err(InwardError::Remote(format!("re-fetching {external_id} from {}: {f}", self.system))),
        }
    }

    async fn apply_customer(
        &self,
        store: &Store,
        row: &InboxEvent,
        event: &StripeEvent,
    ) -> Result<InboxOutcome, InwardError> {
        let Some(external_id) = event.object_id() else {
            return self.finish(store, row, InboxOutcome::Ignored, "event object has no id").await;
        };
        let (link, record, by_metadata) = self.resolve(store, &CUSTOMER, external_id, &event.object).await?;
        let snap = SyncSnapshot::parse(link.as_ref().and_then(|l| l.snapshot.as_deref()));
        // A field we synced within the clock slack of this event: order uncertain.
        let event_state = CustomerState::from_stripe(&event.object);
        let near_our_sync = snap.stripe.as_ref().is_some_and(|s| {
            changed_fields(s, &event_state)
                .iter()
                .any(|f| snap.at.get(*f).is_some_and(|at| (event.created - at).abs() <= CLOCK_SLACK_SECS))
        }) && link.as_ref().and_then(|l| l.fingerprint.as_deref())
            != Some(&event_state.fingerprint());
        let seen = match self.seen(store, row, event, "customer", near_our_sync && !event.is_delete()).await? {
            Ok(seen) => seen,
            Err(why) => return self.finish(store, row, InboxOutcome::Stale, &why).await,
        };
        let mut remarks: Vec<String> = Vec::new();
        if seen.fresh {
            remarks.push("order uncertain: applied the customer as re-fetched from Stripe".into());
        }
        let state = CustomerState::from_stripe(&seen.object);
        let fingerprint = if seen.deleted { DELETED.to_string() } else { state.fingerprint() };
        if link.as_ref().and_then(|l| l.fingerprint.as_deref()) == Some(fingerprint.as_str()) {
            remarks.insert(0, "state equals what was last synced with Stripe".into());
            return self.finish(store, row, InboxOutcome::Echo, &remarks.join("; ")).await;
        }

        let Some(record) = record else {
            if seen.deleted {
                return self.finish(store, row, InboxOutcome::Ignored, "deleted in Stripe; not in the hub").await;
            }
            // New in Stripe: create it in the hub and link it.
            let (body, remark) = hub_create_body(&state, external_id);
            remarks.extend(remark);
            let fields = CUSTOMER.validate_create(&body).map_err(|e| InwardError::Store(StoreError::Invalid(e)))?;
            let snapshot = SyncSnapshot {
                stripe: Some(state.clone()),
                hub: Some(CustomerState::from_hub(&Value::Object(fields))),
                at: SyncSnapshot::all_synced_at(seen.created),
            };
            let write = self.write(row, InboxOutcome::Applied, &remarks, external_id, &snapshot);
            let created = store.apply_inward(&CUSTOMER, InwardOp::Create(&body), &write).await?;
            tracing::info!(system = %self.system, event = %event.id, record = %created.id, "created from Stripe");
            return Ok(InboxOutcome::Applied);
        };

        if record.deleted_at.is_some() {
            let (outcome, why) = if seen.deleted {
                (InboxOutcome::Echo, "already deleted in the hub")
            } else {
                (InboxOutcome::Ignored, "deleted in the hub; a Stripe edit does not revive a tombstone")
            };
            return self.finish_for(store, row, outcome, why, Some(&record.id)).await;
        }
        let hub_now = CustomerState::from_hub(&Value::Object(record.fields.clone()));
        if seen.deleted {
            let snapshot =
                SyncSnapshot { stripe: None, hub: Some(hub_now), at: SyncSnapshot::all_synced_at(seen.created) };
            let write = self.write(row, InboxOutcome::Applied, &remarks, external_id, &snapshot);
            let op = InwardOp::Delete { id: &record.id, expected_version: Some(record.version) };
            store.apply_inward(&CUSTOMER, op, &write).await?;
            return Ok(InboxOutcome::Applied);
        }

        // Field-level merge: what Stripe changed since our last sync (or, never
        // synced, everything that differs from the hub).
        let base = snap.stripe.clone().unwrap_or_else(|| hub_now.clone());
        let hub_at_sync = snap.hub.clone().unwrap_or_else(|| hub_now.clone());
        let mut applied = Vec::new();
        let mut stale = Vec::new();
        for f in changed_fields(&base, &state) {
            let synced_after = snap.at.get(f).is_some_and(|at| *at > seen.created);
            if synced_after && !seen.fresh {
                stale.push(f);
                continue;
            }
            if f == "name" && state.name.is_none() {
                remarks.push("name cleared in Stripe; the hub requires a name, kept the hub's".into());
                continue;
            }
            let hub_changed = hub_now.field(f) != hub_at_sync.field(f);
            if hub_changed && hub_now.field(f) != state.field(f) {
                // Same-field conflict. Policy: the Stripe edit, arriving later than the
                // hub's, wins; the hub's value stays in the change log and is named here.
                remarks.push(format!(
                    "conflict on {f}: the hub's {} replaced by Stripe's {} (Stripe edit wins)",
                    hub_now.field(f),
                    state.field(f)
                ));
            }
            applied.push(f);
        }
        if !stale.is_empty() {
            remarks.push(format!("not applied, synced after this event: {}", stale.join(", ")));
            if applied.is_empty() {
                return self.finish_for(store, row, InboxOutcome::Stale, &remarks.join("; "), Some(&record.id)).await;
            }
        }
        let patch = hub_patch(&base, &state, &applied);
        let hub_after =
            CUSTOMER.apply_patch(&record.fields, &patch).map_err(|e| InwardError::Store(StoreError::Invalid(e)))?;
        let mut stripe_after = snap.stripe.clone().unwrap_or_else(|| state.clone());
        let mut at = snap.at.clone();
        for f in &applied {
            stripe_after.set_field(f, &state);
            at.insert(f.to_string(), seen.created);
        }
        let no_change = hub_after == record.fields;
        let outcome = if no_change && link.is_none() && by_metadata {
            // Our own create's webhook, arriving before the delivery's link committed.
            remarks.insert(0, "our own write (found by metadata.syncflow_id before its link)".into());
            InboxOutcome::Echo
        } else {
            if no_change {
                remarks.push("no field differs from the hub".into());
            }
            InboxOutcome::Applied
        };
        let snapshot = SyncSnapshot {
            stripe: Some(stripe_after),
            hub: Some(CustomerState::from_hub(&Value::Object(hub_after))),
            at,
        };
        let write = self.write(row, outcome, &remarks, external_id, &snapshot);
        let op = InwardOp::Update { id: &record.id, patch: &patch, expected_version: Some(record.version) };
        store.apply_inward(&CUSTOMER, op, &write).await?;
        Ok(outcome)
    }

    /// Invoices flow Stripe → hub only: Stripe owns their lifecycle, so its state
    /// replaces the hub's (no field merge); staleness and echo rules still hold.
    async fn apply_invoice(
        &self,
        store: &Store,
        row: &InboxEvent,
        event: &StripeEvent,
    ) -> Result<InboxOutcome, InwardError> {
        let Some(external_id) = event.object_id() else {
            return self.finish(store, row, InboxOutcome::Ignored, "event object has no id").await;
        };
        let seen = match self.seen(store, row, event, "invoice", false).await? {
            Ok(seen) => seen,
            Err(why) => return self.finish(store, row, InboxOutcome::Stale, &why).await,
        };
        let (link, record, _) = self.resolve(store, &INVOICE, external_id, &seen.object).await?;
        let record = record.filter(|r| r.deleted_at.is_none());
        if seen.deleted {
            let Some(record) = record else {
                return self.finish(store, row, InboxOutcome::Echo, "not in the hub (or already deleted)").await;
            };
            let snapshot = json!({"deleted": true}).to_string();
            let write =
                self.linking_write(Some((row.id, InboxOutcome::Applied, None)), external_id, DELETED.into(), snapshot);
            let op = InwardOp::Delete { id: &record.id, expected_version: Some(record.version) };
            store.apply_inward(&INVOICE, op, &write).await?;
            return Ok(InboxOutcome::Applied);
        }
        let obj = &seen.object;
        let Some(customer) = obj["customer"].as_str() else {
            return self.finish(store, row, InboxOutcome::Rejected, "invoice has no customer").await;
        };
        let Some(customer_link) = store.link_by_external_id(&self.system, CUSTOMER.name, customer).await? else {
            let why = format!("customer {customer} is not linked to a hub customer yet (run backfill)");
            return self.finish(store, row, InboxOutcome::Failed, &why).await;
        };
        let mut fields = Map::new();
        fields.insert("customer_id".into(), json!(customer_link.record_id));
        fields.insert("amount".into(), json!(obj["amount_due"].as_i64().or(obj["total"].as_i64()).unwrap_or(0)));
        fields.insert("currency".into(), json!(obj["currency"].as_str().unwrap_or("usd")));
        if let Some(status) = obj["status"].as_str().filter(|s| INVOICE_STATUSES.contains(s)) {
            fields.insert("status".into(), json!(status));
        }
        let due = obj["due_date"].as_i64().and_then(|t| chrono::DateTime::from_timestamp(t, 0));
        fields.insert("due_date".into(), json!(due.map(|d| d.format("%Y-%m-%d").to_string())));
        let metadata = CustomerState::from_stripe(obj).metadata;
        fields.insert("metadata".into(), json!(metadata));
        let snapshot = Value::Object(fields.clone()).to_string();
        let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(snapshot.as_bytes()))[..32].to_string();
        if link.as_ref().and_then(|l| l.fingerprint.as_deref()) == Some(fingerprint.as_str()) {
            return self.finish(store, row, InboxOutcome::Echo, "state equals what was last synced").await;
        }
        let write = self.linking_write(Some((row.id, InboxOutcome::Applied, None)), external_id, fingerprint, snapshot);
        match record {
            None => store.apply_inward(&INVOICE, InwardOp::Create(&fields), &write).await?,
            Some(r) => {
                let op = InwardOp::Update { id: &r.id, patch: &fields, expected_version: Some(r.version) };
                store.apply_inward(&INVOICE, op, &write).await?
            }
        };
        Ok(InboxOutcome::Applied)
    }

    /// The hub record for an external object: by link, else by the hub id we put in
    /// its metadata (the webhook of our own create can beat the link's commit).
    async fn resolve(
        &self,
        store: &Store,
        entity: &'static Entity,
        external_id: &str,
        object: &Value,
    ) -> Result<(Option<Link>, Option<syncflow_core::Record>, bool), InwardError> {
        if let Some(link) = store.link_by_external_id(&self.system, entity.name, external_id).await? {
            let record = store.get(entity, &link.record_id).await?;
            return Ok((Some(link), record, false));
        }
        if let Some(hub_id) = object["metadata"][SYNCFLOW_ID].as_str() {
            if let Some(record) = store.get(entity, hub_id).await? {
                // Only if that record is not linked to another Stripe object.
                let other = store.link(entity.name, hub_id, &self.system).await?;
                if other.is_none_or(|l| l.external_id == external_id) {
                    return Ok((None, Some(record), true));
                }
            }
        }
        Ok((None, None, false))
    }

    fn write(
        &self,
        row: &InboxEvent,
        outcome: InboxOutcome,
        remarks: &[String],
        external_id: &str,
        snapshot: &SyncSnapshot,
    ) -> InwardWrite {
        let remarks = (!remarks.is_empty()).then(|| remarks.join("; "));
        self.linking_write(Some((row.id, outcome, remarks)), external_id, snapshot.fingerprint(), snapshot.to_text())
    }

    async fn finish(
        &self,
        store: &Store,
        row: &InboxEvent,
        outcome: InboxOutcome,
        remarks: &str,
    ) -> Result<InboxOutcome, InwardError> {
        self.finish_for(store, row, outcome, remarks, None).await
    }

    async fn finish_for(
        &self,
        store: &Store,
        row: &InboxEvent,
        outcome: InboxOutcome,
        remarks: &str,
        record_id: Option<&str>,
    ) -> Result<InboxOutcome, InwardError> {
        store.inbox_settle(row.id, outcome, record_id, Some(remarks)).await?;
        Ok(outcome)
    }

    /// Settles inbox rows that a crash (or a failed apply) left `received`.
    async fn recover(&self, store: &Store) -> Result<usize, InwardError> {
        let mut recovered = 0;
        for row in store.inbox_unsettled(&self.system, 100).await? {
            if !store.inbox_claim(row.id, APPLY_LEASE_MS).await? {
                continue;
            }
            let event = serde_json::from_str::<Value>(&row.payload)
                .map_err(|e| e.to_string())
                .and_then(|v| StripeEvent::from_value(&v));
            match event {
                Ok(event) => {
                    self.settle(store, &row, &event).await?;
                }
                Err(why) => {
                    store.inbox_settle(row.id, InboxOutcome::Rejected, None, Some(&why)).await?;
                }
            }
            recovered += 1;
        }
        Ok(recovered)
    }

    /// Name of this system's poll cursor in the store's `cursors` table.
    pub fn poll_cursor_name(&self) -> String {
        format!("poll:{}", self.system)
    }

    /// Recovers unsettled rows, then polls events created at or after the cursor
    /// (whole seconds; the inbox drops the ones seen before), applies them oldest
    /// first and moves the cursor to the newest settled event's second.
    pub(super) async fn poll_once(&self, store: &Store, with_events: bool) -> Result<PollReport, InwardError> {
        let mut report = PollReport { recovered: self.recover(store).await?, ..PollReport::default() };
        if !with_events {
            return Ok(report);
        }
        let name = self.poll_cursor_name();
        let Some(cursor) = store.cursor(&name).await?.and_then(|c| c.parse::<i64>().ok()) else {
            // First poll: start from now; existing history is backfill's job.
            store.set_cursor(&name, &chrono::Utc::now().timestamp().to_string()).await?;
            return Ok(report);
        };
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
                .map_err(|f| InwardError::Remote(format!("listing events from {}: {f}", self.system)))?;
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
        // Stripe lists newest first (the local stand-in oldest first): apply in
        // time order either way; same-second order is settled by re-fetching.
        let mut parsed: Vec<(StripeEvent, Value)> =
            events.into_iter().filter_map(|v| StripeEvent::from_value(&v).ok().map(|e| (e, v))).collect();
        parsed.sort_by_key(|(e, _)| e.created);
        report.fetched = parsed.len();
        let mut new_cursor = cursor;
        for (event, raw) in &parsed {
            match self.receive(store, event, raw.to_string(), "poll").await {
                Ok((outcome, duplicate)) => {
                    if !duplicate && outcome != InboxOutcome::Received {
                        report.applied += 1;
                    }
                    new_cursor = new_cursor.max(event.created);
                }
                Err(e) => {
                    // Stop here: the cursor stays at or before this event.
                    store.set_cursor(&name, &new_cursor.min(event.created).to_string()).await?;
                    return Err(e);
                }
            }
        }
        if new_cursor != cursor {
            store.set_cursor(&name, &new_cursor.to_string()).await?;
        }
        Ok(report)
    }
}
