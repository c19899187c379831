//! `syncflow backfill --system <stripe system>`: brings two catalogs that already
//! have data into agreement before live sync takes over. Stripe → hub: every
//! Stripe customer is linked to the hub customer named by its
//! `metadata[syncflow_id]`, else to an unlinked hub customer with the same e-mail,
//! else imported. Hub → Stripe: every unlinked live hub customer is created in
//! Stripe. Paged, paced by the connector's rate limit, and resumable: each
//! direction keeps its position in a named cursor, advanced after each page is
//! durable (invariant 7), so a rerun continues where it stopped.

use serde_json::{Map, Value};
use syncflow_core::Record;
use syncflow_core::CUSTOMER;
use syncflow_store::{InwardOp, InwardWrite, ListQuery, Store, StoreError};

use super::client::{idempotency_key, Form};
use super::state::{hub_create_body, CustomerState, SyncSnapshot, SYNCFLOW_ID};
use super::StripeConnector;

const PAGE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Stripe customers into the hub.
    Import,
    /// Hub customers into Stripe.
    Export,
}

/// Counts so far, reported after every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub seen: u64,
    /// Already linked: nothing to do.
    pub linked_before: u64,
    /// Linked to an existing record on the other side.
    pub linked: u64,
    /// Created on the other side.
    pub created: u64,
    pub failed: u64,
    /// Total to expect, when known (hub side).
    pub total: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Remote(String),
}

impl StripeConnector {
    fn backfill_cursor(&self, direction: Direction) -> String {
        let d = match direction {
            Direction::Import => "import",
            Direction::Export => "export",
        };
        format!("backfill:{}:{d}", self.system)
    }

    /// Forgets a direction's position, so the next run starts from the beginning
    /// (records already linked are skipped cheaply).
    pub async fn backfill_reset(&self, store: &Store, direction: Direction) -> Result<(), BackfillError> {
        store.set_cursor(&self.backfill_cursor(direction), "").await?;
        Ok(())
    }

    /// Runs one direction to the end, calling `progress` after every record.
    pub async fn backfill(
        &self,
        store: &Store,
        direction: Direction,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Progress, BackfillError> {
        let cursor_name = self.backfill_cursor(direction);
        let mut after = store.cursor(&cursor_name).await?.filter(|c| !c.is_empty());
        let mut p = Progress::default();
        if direction == Direction::Export {
            p.total = Some(store.count(&CUSTOMER).await? as u64);
        }
        loop {
            let last = match direction {
                Direction::Import => self.import_page(store, after.as_deref(), &mut p, &mut progress).await?,
                Direction::Export => self.export_page(store, after.as_deref(), &mut p, &mut progress).await?,
            };
            match last {
                Some(id) => {
                    store.set_cursor(&cursor_name, &id).await?;
                    after = Some(id);
                }
                None => return Ok(p),
            }
        }
    }

    /// One page of Stripe customers; returns the last id, or `None` at the end.
    async fn import_page(
        &self,
        store: &Store,
        after: Option<&str>,
        p: &mut Progress,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<Option<String>, BackfillError> {
        let mut query = vec![("limit".to_string(), PAGE.to_string())];
        if let Some(a) = after {
            query.push(("starting_after".into(), a.to_string()));
        }
        let page = self
            .client
            .get("/v1/customers", &query)
            .await
            .map_err(|f| BackfillError::Remote(format!("listing customers: {f}")))?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        for obj in &data {
            p.seen += 1;
            match self.import_one(store, obj).await {
                Ok(Some(true)) => p.created += 1,
                Ok(Some(false)) => p.linked += 1,
                Ok(None) => p.linked_before += 1,
                Err(e) => {
                    tracing::warn!(system = %self.system, customer = %obj["id"], error = %e, "backfill import failed");
                    p.failed += 1;
                }
            }
            progress(p);
        }
        let last = data.last().and_then(|o| o["id"].as_str()).map(str::to_string);
        Ok(if page["has_more"] == true { last } else { last.filter(|_| false) })
    }

    /// `Some(true)` created in the hub, `Some(false)` linked, `None` linked before.
    async fn import_one(&self, store: &Store, obj: &Value) -> Result<Option<bool>, BackfillError> {
        let external_id = obj["id"].as_str().ok_or_else(|| BackfillError::Remote("customer without id".into()))?;
        if store.link_by_external_id(&self.system, CUSTOMER.name, external_id).await?.is_some() {
            return Ok(None);
        }
        let state = CustomerState::from_stripe(obj);
        let now = chrono::Utc::now().timestamp();
        let by_id = match obj["metadata"][SYNCFLOW_ID].as_str() {
            Some(id) => store.get(&CUSTOMER, id).await?.filter(|r| r.deleted_at.is_none()),
            None => None,
        };
        let target = match by_id {
            Some(r) => Some(r),
            None => self.unlinked_with_email(store, state.email.as_deref()).await?,
        };
        match target {
            Some(record) => {
                let hub = CustomerState::from_hub(&Value::Object(record.fields.clone()));
                let snap = snapshot(Some(state), hub, now);
                let write = self.link_write(external_id, &snap);
                let op = InwardOp::Update { id: &record.id, patch: &Map::new(), expected_version: None };
                store.apply_inward(&CUSTOMER, op, &write).await?;
                Ok(Some(false))
            }
            None => {
                let (body, _) = hub_create_body(&state, external_id);
                let fields = CUSTOMER.validate_create(&body).map_err(StoreError::Invalid)?;
                let snap = snapshot(Some(state), CustomerState::from_hub(&Value::Object(fields)), now);
                let write = self.link_write(external_id, &snap);
                store.apply_inward(&CUSTOMER, InwardOp::Create(&body), &write).await?;
                Ok(Some(true))
            }
        }
    }

    async fn unlinked_with_email(&self, store: &Store, email: Option<&str>) -> Result<Option<Record>, StoreError> {
        let Some(email) = email else { return Ok(None) };
        let q = ListQuery { limit: 10, filters: vec![("email", email.to_string())], ..ListQuery::default() };
        for r in store.list(&CUSTOMER, &q).await?.data {
            if store.link(CUSTOMER.name, &r.id, &self.system).await?.is_none() {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// One page of hub customers; returns the last id, or `None` at the end.
    async fn export_page(
        &self,
        store: &Store,
        after: Option<&str>,
        p: &mut Progress,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<Option<String>, BackfillError> {
        let q = ListQuery { after: after.map(str::to_string), limit: PAGE, ..ListQuery::default() };
        let page = store.list(&CUSTOMER, &q).await?;
        for record in &page.data {
            p.seen += 1;
            match self.export_one(store, record).await {
                Ok(true) => p.created += 1,
                Ok(false) => p.linked_before += 1,
                Err(e) => {
                    tracing::warn!(system = %self.system, record = %record.id, error = %e, "backfill export failed");
                    p.failed += 1;
                }
            }
            progress(p);
        }
        Ok(page.data.last().map(|r| r.id.clone()).filter(|_| page.has_more))
    }

    /// Creates an unlinked hub customer in Stripe and links it.
    async fn export_one(&self, store: &Store, record: &Record) -> Result<bool, BackfillError> {
        if store.link(CUSTOMER.name, &record.id, &self.system).await?.is_some() {
            return Ok(false);
        }
        let hub = CustomerState::from_hub(&Value::Object(record.fields.clone()));
        let mut form = Form::new();
        form.extend(hub.name.clone().map(|n| ("name".to_string(), n)));
        form.extend(hub.email.clone().map(|e| ("email".to_string(), e)));
        form.extend(hub.metadata.iter().map(|(k, v)| (format!("metadata[{k}]"), v.clone())));
        form.push((format!("metadata[{SYNCFLOW_ID}]"), record.id.clone()));
        // Delivery id 0: keyed by the record's exact parameters, so a rerun after a
        // crash replays the same create instead of making a second customer.
        let key = idempotency_key(0, "POST", "/v1/customers", &form);
        let obj = self
            .client
            .post("/v1/customers", &form, Some(&key))
            .await
            .map_err(|f| BackfillError::Remote(format!("creating {} in Stripe: {f}", record.id)))?;
        let external_id =
            obj["id"].as_str().ok_or_else(|| BackfillError::Remote("customer create answered without id".into()))?;
        let snap = snapshot(Some(CustomerState::from_stripe(&obj)), hub, chrono::Utc::now().timestamp());
        let write = self.link_write(external_id, &snap);
        let op = InwardOp::Update { id: &record.id, patch: &Map::new(), expected_version: None };
        store.apply_inward(&CUSTOMER, op, &write).await?;
        Ok(true)
    }

    fn link_write(&self, external_id: &str, snap: &SyncSnapshot) -> InwardWrite {
        self.linking_write(None, external_id, snap.fingerprint(), snap.to_text())
    }
}

fn snapshot(stripe: Option<CustomerState>, hub: CustomerState, at: i64) -> SyncSnapshot {
    SyncSnapshot { stripe, hub: Some(hub), at: SyncSnapshot::all_synced_at(at) }
}
