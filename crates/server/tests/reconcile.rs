//! Reconciliation and the mass-delete breaker end to end, on SQLite and PostgreSQL:
//! a hub (store + engine + HTTP on 127.0.0.1) with the Stripe sandbox (webhooks
//! off) or the Salesforce sandbox. Drift made behind the hub's back is found with
//! the right class and healed by a repair run; a clean system reports none; records
//! in flight are skipped; a mass delete is held until an operator acts.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::hub::RunningHub;

use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::reconcile::{ReconcileOptions, ReconcileReport};
use syncflow_engine::Pipeline;
use syncflow_sandbox::salesforce::{SalesforceOptions, SalesforceSandbox};
use syncflow_sandbox::{StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter, Store};

const STRIPE_KEY: &str = "sk_test_reconcile";

struct World {
    store: Store,
    url: String,
    hub: RunningHub,
    pipeline: Arc<Pipeline>,
    http: reqwest::Client,
}

impl World {
    /// A hub with one system, described by its `[[systems]]` block.
    async fn start(store: &Store, system: &str) -> World {
        let hub = RunningHub::start(store, &format!("[[systems]]\n{system}")).await;
        let name = hub.engine.systems().next().unwrap().name.clone();
        let pipeline = hub.engine.pipelines().remove(&name).unwrap();
        let url = hub.url.clone();
        World { store: store.clone(), url, hub, pipeline, http: reqwest::Client::new() }
    }

    async fn stop(self) {
        self.hub.stop().await;
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url)).send().await.unwrap().json().await.unwrap()
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn customer(&self, name: &str) -> String {
        let body = json!({"name": name, "email": format!("{}@example.com", name.to_lowercase().replace(' ', "."))});
        self.store.create(&CUSTOMER, body.as_object().unwrap(), "api").await.unwrap().id
    }

    /// Waits until every delivery is final and the record is linked.
    async fn quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
            let unsettled = self.store.inbox_unsettled(self.pipeline.system(), 10).await.unwrap().len();
            if list.iter().all(|d| d.status.is_final()) && unsettled == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the hub did not settle: {list:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reconcile(&self, repair: bool) -> ReconcileReport {
        let opts = ReconcileOptions { repair, trigger: "api" };
        self.pipeline.reconcile(&CUSTOMER, opts, &mut |_| {}).await.unwrap()
    }

    async fn linked(&self, id: &str) -> syncflow_store::Link {
        let system = self.pipeline.system().to_string();
        eventually!("the link", self.store.link("customer", id, &system).await.unwrap())
    }
}

fn class_of<'a>(r: &'a ReconcileReport, class: &str) -> Vec<&'a Value> {
    r.samples.iter().filter(|s| s["class"] == class).collect()
}

backend_tests!(
    stripe_drift_is_found_by_class_and_healed_by_repair,
    a_salesforce_record_deleted_behind_the_hub_is_missing_remote_and_tombstoned_by_repair,
    a_mass_delete_in_salesforce_is_held_until_released_or_discarded,
    the_scheduled_sweep_finds_and_auto_repairs_drift,
);

async fn stripe_world(t: &TestStore) -> (World, StripeSandbox) {
    stripe_world_with(t, "").await
}

async fn stripe_world_with(t: &TestStore, extra: &str) -> (World, StripeSandbox) {
    let stripe = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    // No webhook endpoint registered: edits made in Stripe never reach the hub.
    let system = format!(
        "name = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{STRIPE_KEY}\"\napi_rate_limit = 1000\n\
         reconcile_grace = \"0s\"\n{extra}",
        stripe.url()
    );
    (World::start(&t.store, &system).await, stripe)
}

async fn stripe_drift_is_found_by_class_and_healed_by_repair(t: TestStore) {
    let (w, stripe) = stripe_world(&t).await;
    let ids = [w.customer("Ada Byron").await, w.customer("Bea Kahn").await, w.customer("Cy Young").await];
    for id in &ids {
        w.linked(id).await;
    }
    w.quiet().await;

    // A clean system: nothing drifts.
    let clean = w.reconcile(false).await;
    assert_eq!(clean.counts.checked, 3, "{clean:?}");
    assert_eq!(clean.counts.drift(), 0, "{clean:?}");
    assert!(clean.api_calls >= 1);

    // Edited in Stripe with webhooks off; a link row removed.
    let ada = w.store.link("customer", &ids[0], "stripe").await.unwrap().unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{}/v1/customers/{}", stripe.url(), ada.external_id))
        .bearer_auth(STRIPE_KEY)
        .form(&[("name", "Ada Lovelace")])
        .send()
        .await
        .unwrap();
    assert!(w.store.unlink("stripe", "customer", &ids[1]).await.unwrap());

    let found = w.reconcile(false).await;
    assert_eq!((found.counts.field_drift, found.counts.missing_local), (1, 1), "{found:?}");
    assert_eq!(found.counts.repaired, 0, "a report-only run changes nothing");
    let drift = class_of(&found, "field_drift");
    assert_eq!(drift[0]["record_id"], ids[0].as_str());
    assert_eq!(drift[0]["fields"], json!(["name"]));
    assert_eq!(drift[0]["changed_on"], "system");
    assert_eq!(class_of(&found, "missing_local")[0]["record_id"], ids[1].as_str(), "found by the hub id it carries");
    // The run is a row, and the API shows it.
    // Started through the API as well (in the background).
    let (status, _) = w.post("/v1/systems/stripe/reconcile").await;
    assert_eq!(status, 202);
    let api_run = eventually!("the API's run", {
        let runs = w.get("/v1/reconcile/runs?system=stripe").await;
        let first = runs["data"][0].clone();
        (first["trigger"] == "api" && first["status"] == "completed" && first["id"] != found.run_id).then_some(first)
    });
    assert_eq!((api_run["counts"]["field_drift"].as_u64(), api_run["repair"].as_bool()), (Some(1), Some(false)));
    assert_eq!(w.post("/v1/systems/stripe/reconcile?repair=maybe").await.0, 400);
    let runs = w.get(&format!("/v1/reconcile/runs?system=stripe&before={}", api_run["id"])).await;
    assert_eq!(runs["data"][0]["id"], found.run_id);
    assert_eq!(runs["data"][0]["counts"]["field_drift"], 1);
    let one = w.get(&format!("/v1/reconcile/runs/{}", found.run_id)).await;
    assert_eq!(one["status"], "completed");
    assert_eq!(one["samples"].as_array().unwrap().len(), 2);

    // Repair: the Stripe edit is applied to the hub; the link comes back.
    let repaired = w.reconcile(true).await;
    assert_eq!(repaired.counts.repaired, 2, "{repaired:?}");
    assert_eq!(w.store.get(&CUSTOMER, &ids[0]).await.unwrap().unwrap().fields["name"], "Ada Lovelace");
    let relinked = w.store.link("customer", &ids[1], "stripe").await.unwrap().expect("relinked");
    assert!(relinked.external_id.starts_with("cus_"));
    w.quiet().await;
    let after = w.reconcile(false).await;
    assert_eq!(after.counts.drift(), 0, "{after:?}");

    // Hub-side drift: the hub changed and the push was lost (its delivery skipped).
    // While the delivery is still queued, the record is in flight, not drift.
    w.post("/v1/systems/stripe/pause").await;
    let patch = json!({"name": "Cyrus Young"});
    w.store.update(&CUSTOMER, &ids[2], patch.as_object().unwrap(), None, "api").await.unwrap();
    eventually!("the queued delivery", {
        let d = w.store.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
        d.iter().any(|d| d.record_id == ids[2] && !d.status.is_final()).then_some(())
    });
    let moving = w.reconcile(false).await;
    assert_eq!((moving.counts.in_flight, moving.counts.drift()), (1, 0), "{moving:?}");
    w.post("/v1/systems/stripe/resume").await;
    w.quiet().await;
    let cy = w.store.link("customer", &ids[2], "stripe").await.unwrap().unwrap();
    let got: Value = http
        .get(format!("{}/v1/customers/{}", stripe.url(), cy.external_id))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Cyrus Young");
    w.stop().await;
}

async fn salesforce_world(t: &TestStore, extra: &str) -> (World, SalesforceSandbox) {
    let options =
        SalesforceOptions { client_id: "rc".into(), client_secret: "rc-secret".into(), ..SalesforceOptions::default() };
    let sf = SalesforceSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let system = format!(
        "name = \"salesforce\"\nkind = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"rc\"\n\
         client_secret = \"rc-secret\"\npoll_overlap = \"1s\"\nreconcile_grace = \"0s\"\n{extra}",
        sf.url()
    );
    (World::start(&t.store, &system).await, sf)
}

async fn a_salesforce_record_deleted_behind_the_hub_is_missing_remote_and_tombstoned_by_repair(t: TestStore) {
    // Polling off: a deletion in Salesforce is never seen by the pipeline.
    let (w, sf) = salesforce_world(&t, "poll_interval = \"0s\"\n").await;
    let ids = [w.customer("Dee Lete").await, w.customer("Kay Keep").await];
    let gone = w.linked(&ids[0]).await;
    w.linked(&ids[1]).await;
    w.quiet().await;
    assert_eq!(w.reconcile(false).await.counts.drift(), 0);

    sf.ui_delete("Contact", &gone.external_id);
    let found = w.reconcile(false).await;
    assert_eq!(found.counts.missing_remote, 1, "{found:?}");
    assert_eq!(found.counts.drift(), 1, "{found:?}");
    let m = class_of(&found, "missing_remote");
    assert_eq!((m[0]["record_id"].as_str(), m[0]["rule"].as_str()), (Some(ids[0].as_str()), Some("tombstone")));
    assert!(w.store.get(&CUSTOMER, &ids[0]).await.unwrap().unwrap().deleted_at.is_none(), "report only");

    let repaired = w.reconcile(true).await;
    assert_eq!(repaired.counts.repaired, 1, "{repaired:?}");
    assert!(w.store.get(&CUSTOMER, &ids[0]).await.unwrap().unwrap().deleted_at.is_some(), "tombstoned");
    assert!(w.store.get(&CUSTOMER, &ids[1]).await.unwrap().unwrap().deleted_at.is_none());
    w.quiet().await;
    assert_eq!(w.reconcile(false).await.counts.drift(), 0);
    w.stop().await;
}

async fn a_mass_delete_in_salesforce_is_held_until_released_or_discarded(t: TestStore) {
    let extra =
        "poll_interval = \"200ms\"\nmass_delete_count = 2\nmass_delete_share = 0.1\nmass_delete_window = \"5m\"\n";
    let (w, sf) = salesforce_world(&t, extra).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(w.customer(&format!("Person {i}")).await);
    }
    let mut links = Vec::new();
    for id in &ids {
        links.push(w.linked(id).await);
    }
    w.quiet().await;
    let deleted = |w: &World, id: String| {
        let store = w.store.clone();
        async move { store.get(&CUSTOMER, &id).await.unwrap().unwrap().deleted_at.is_some() }
    };

    // Below the threshold deletions flow as usual.
    sf.ui_delete("Contact", &links[0].external_id);
    eventually!("the first deletion", deleted(&w, ids[0].clone()).await.then_some(()));
    sf.ui_delete("Contact", &links[1].external_id);
    eventually!("the second deletion", deleted(&w, ids[1].clone()).await.then_some(()));

    // Past it (3 > 2 and 30 % > 10 %) they are held, and so is every later one.
    for l in &links[2..5] {
        sf.ui_delete("Contact", &l.external_id);
    }
    let holds = eventually!("three holds", {
        let h = w.get("/v1/holds?system=salesforce").await;
        (h["data"].as_array().unwrap().len() == 3).then_some(h)
    });
    for id in &ids[2..5] {
        assert!(!deleted(&w, id.clone()).await, "a held deletion is not applied");
    }
    let systems = w.get("/v1/systems").await;
    assert_eq!(systems["data"][0]["flagged"], true);
    assert_eq!(systems["data"][0]["held_deletions"], 3);

    // Release one: applied. Discard the others: the hub keeps them.
    let data = holds["data"].as_array().unwrap();
    let first = data.iter().find(|h| h["record_id"] == ids[2].as_str()).unwrap();
    let (status, body) = w.post(&format!("/v1/holds/{}/release", first["id"])).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("released")));
    eventually!("the released deletion", deleted(&w, ids[2].clone()).await.then_some(()));
    for h in data.iter().filter(|h| h["id"] != first["id"]) {
        let (status, body) = w.post(&format!("/v1/holds/{}/discard", h["id"])).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("discarded")));
    }
    assert_eq!(w.post(&format!("/v1/holds/{}/discard", first["id"])).await.0, 409, "settled already");
    for id in &ids[3..5] {
        assert!(!deleted(&w, id.clone()).await, "a discarded deletion is never applied");
    }
    assert_eq!(w.get("/v1/holds?system=salesforce").await["data"].as_array().unwrap().len(), 0);
    assert_eq!(w.get("/v1/systems").await["data"][0]["flagged"], false);
    w.stop().await;
}

async fn the_scheduled_sweep_finds_and_auto_repairs_drift(t: TestStore) {
    let (w, stripe) = stripe_world_with(&t, "reconcile_interval = \"300ms\"\nauto_repair = true\n").await;
    let id = w.customer("Sam Sweep").await;
    let link = w.linked(&id).await;
    w.quiet().await;
    reqwest::Client::new()
        .post(format!("{}/v1/customers/{}", stripe.url(), link.external_id))
        .bearer_auth(STRIPE_KEY)
        .form(&[("email", "sam@sweep.io")])
        .send()
        .await
        .unwrap();
    eventually!("the sweep's repair", {
        let r = w.store.get(&CUSTOMER, &id).await.unwrap().unwrap();
        (r.fields["email"] == "sam@sweep.io").then_some(())
    });
    // The run's row is finished just after its repairs.
    let run = eventually!("the run that repaired", {
        let runs = w.get("/v1/reconcile/runs?system=stripe&limit=50").await;
        runs["data"].as_array().unwrap().iter().find(|r| r["counts"]["repaired"] == 1).cloned()
    });
    assert_eq!((run["trigger"].as_str(), run["repair"].as_bool()), (Some("schedule"), Some(true)));
    assert_eq!(run["samples"][0]["fields"], json!(["email"]));
    w.stop().await;
}
