//! N-way sync end to end, on SQLite and PostgreSQL: a hub (store + engine + HTTP
//! server on 127.0.0.1) with three systems — the Stripe sandbox (signed webhooks),
//! the Salesforce sandbox (polled) and an `http` warehouse receiver. A change made in
//! any one of them reaches the other two through the hub, never back to itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

mod common;

use common::hub::RunningHub;

use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_sandbox::salesforce::{SalesforceOptions, SalesforceSandbox};
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter, DeliveryStatus, Store};

const STRIPE_KEY: &str = "sk_test_nway";
const WHSEC: &str = "whsec_nway";

struct World {
    store: Store,
    url: String,
    hub: RunningHub,
    stripe: StripeSandbox,
    sf: SalesforceSandbox,
    warehouse: Receiver,
    http: reqwest::Client,
}

impl World {
    async fn start(store: &Store) -> World {
        let stripe = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
        let options = SalesforceOptions {
            client_id: "nway-client".into(),
            client_secret: "nway-secret".into(),
            ..SalesforceOptions::default()
        };
        let sf = SalesforceSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let warehouse = Receiver::start(None, Duration::ZERO).await;
        let systems = format!(
            "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{STRIPE_KEY}\"\n\
             webhook_secret = \"{WHSEC}\"\napi_rate_limit = 1000\n\
             [[systems]]\nname = \"salesforce\"\nkind = \"salesforce\"\nlogin_url = \"{}\"\nclient_id = \"nway-client\"\n\
             client_secret = \"nway-secret\"\npoll_interval = \"200ms\"\npoll_overlap = \"1s\"\n\
             daily_budget_share = 0.5\n\
             [systems.fields]\ntier = \"Tier__c\"\n\
             [[systems]]\nname = \"warehouse\"\nkind = \"http\"\nurl = \"{}\"\n",
            stripe.url(),
            sf.url(),
            warehouse.url("/warehouse")
        );
        let hub = RunningHub::start(store, &systems).await;
        let url = hub.url.clone();
        stripe.add_webhook("hub", &format!("{url}/webhooks/stripe"), WHSEC);
        World { store: store.clone(), url, hub, stripe, sf, warehouse, http: reqwest::Client::new() }
    }

    async fn stop(self) {
        self.hub.stop().await;
    }

    async fn stripe_post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self.http.post(format!("{}{path}", self.stripe.url())).bearer_auth(STRIPE_KEY).form(form);
        r.send().await.unwrap().json().await.unwrap()
    }

    async fn stripe_get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.stripe.url())).bearer_auth(STRIPE_KEY);
        r.send().await.unwrap().json().await.unwrap()
    }

    /// The Salesforce Contact holding this hub id, if any (live).
    fn contact(&self, hub_id: &str) -> Option<Value> {
        self.sf.records("Contact").into_iter().find(|c| c["Syncflow_Id__c"] == hub_id)
    }

    /// The newest body the warehouse received for this record.
    fn warehoused(&self, hub_id: &str) -> Option<Value> {
        self.warehouse.applied().into_iter().rev().find(|b| b["change"]["record_id"] == hub_id)
    }

    async fn hub(&self, id: &str) -> syncflow_core::Record {
        self.store.get(&CUSTOMER, id).await.unwrap().unwrap()
    }

    /// Waits until no delivery is unfinished and no inbox row unsettled.
    async fn quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
            let mut unsettled = 0;
            for system in ["stripe", "salesforce"] {
                unsettled += self.store.inbox_unsettled(system, 10).await.unwrap().len();
            }
            if list.iter().all(|d| d.status.is_final()) && unsettled == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the hub did not settle: {list:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

backend_tests!(
    a_change_anywhere_reaches_everywhere_else_and_never_comes_back,
    a_contact_created_in_salesforce_is_imported_and_gets_the_hub_id,
    expired_sessions_renew_and_locked_rows_are_retried,
    the_budget_share_holds_deliveries_without_spending_attempts,
);

async fn a_change_anywhere_reaches_everywhere_else_and_never_comes_back(t: TestStore) {
    let w = World::start(&t.store).await;

    // 1. Created in Stripe → the hub, Salesforce and the warehouse.
    let cus = w
        .stripe_post(
            "/v1/customers",
            &[("name", "Nia Wolf"), ("email", "nia@example.com"), ("metadata[tier]", "silver")],
        )
        .await;
    let cus_id = cus["id"].as_str().unwrap().to_string();
    let link =
        eventually!("the hub customer", w.store.link_by_external_id("stripe", "customer", &cus_id).await.unwrap());
    let hub_id = link.record_id.clone();
    let contact = eventually!("the Salesforce contact", w.contact(&hub_id));
    assert_eq!((contact["FirstName"].as_str(), contact["LastName"].as_str()), (Some("Nia"), Some("Wolf")));
    assert_eq!((contact["Email"].as_str(), contact["Tier__c"].as_str()), (Some("nia@example.com"), Some("silver")));
    let sf_id = contact["Id"].as_str().unwrap().to_string();
    eventually!("the warehouse copy", w.warehoused(&hub_id));

    // 2. Edited in Salesforce → Stripe and the warehouse.
    w.sf.ui_update("Contact", &sf_id, json!({"LastName": "Wolfe"}));
    eventually!("the Salesforce edit in Stripe", {
        (w.stripe_get(&format!("/v1/customers/{cus_id}")).await["name"] == "Nia Wolfe").then_some(())
    });
    eventually!(
        "the Salesforce edit in the warehouse",
        w.warehoused(&hub_id).filter(|b| b["data"]["name"] == "Nia Wolfe")
    );
    w.quiet().await;

    // 3. Different fields edited at once in Stripe and Salesforce: both survive everywhere.
    w.stripe_post(&format!("/v1/customers/{cus_id}"), &[("email", "nia@wolfe.io")]).await;
    w.sf.ui_update("Contact", &sf_id, json!({"Tier__c": "gold"}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = w.hub(&hub_id).await;
        if r.fields["email"] == "nia@wolfe.io" && r.fields["metadata"]["tier"] == "gold" {
            break;
        }
        if Instant::now() > deadline {
            for sys in ["stripe", "salesforce"] {
                for e in w.store.inbox(sys, 0, 100).await.unwrap() {
                    eprintln!("{sys} {} {:?} {:?} {:?}", e.event_type, e.outcome, e.remarks, e.payload);
                }
            }
            panic!("both edits in the hub: {:?} / {:?}", r.fields, w.sf.record("Contact", &sf_id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually!("both edits in Stripe", {
        let c = w.stripe_get(&format!("/v1/customers/{cus_id}")).await;
        (c["email"] == "nia@wolfe.io" && c["metadata"]["tier"] == "gold").then_some(())
    });
    eventually!("both edits in Salesforce", {
        let c = w.sf.record("Contact", &sf_id).unwrap();
        (c["Email"] == "nia@wolfe.io" && c["Tier__c"] == "gold").then_some(())
    });
    eventually!("both edits in the warehouse", {
        w.warehoused(&hub_id)
            .filter(|b| b["data"]["email"] == "nia@wolfe.io" && b["data"]["metadata"]["tier"] == "gold")
    });
    w.quiet().await;

    // 4. Deleted in Salesforce → a tombstone in the hub → deleted in Stripe and the warehouse.
    w.sf.ui_delete("Contact", &sf_id);
    eventually!("the delete in the hub", w.hub(&hub_id).await.deleted_at);
    eventually!(
        "the delete in Stripe",
        (w.stripe_get(&format!("/v1/customers/{cus_id}")).await["deleted"] == true).then_some(())
    );
    eventually!("the delete in the warehouse", w.warehoused(&hub_id).filter(|b| b["change"]["op"] == "delete"));
    w.quiet().await;

    // No system received its own change back; the transaction table shows each hop.
    let origins: HashMap<i64, String> =
        w.store.changes_of_record("customer", &hub_id).await.unwrap().into_iter().map(|c| (c.seq, c.origin)).collect();
    let hops = w
        .store
        .deliveries(&DeliveryFilter { record_id: Some(hub_id.clone()), limit: 1000, ..Default::default() })
        .await
        .unwrap();
    for d in &hops {
        assert_ne!(origins.get(&d.change_seq), Some(&d.system), "delivery {} went back to its origin", d.id);
    }
    let (status, api): (u16, Value) = {
        let r = w.http.get(format!("{}/v1/deliveries?record_id={hub_id}&limit=100", w.url)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    assert_eq!(status, 200);
    let systems: std::collections::BTreeSet<&str> =
        api["data"].as_array().unwrap().iter().filter_map(|d| d["system"].as_str()).collect();
    assert_eq!(systems.into_iter().collect::<Vec<_>>(), vec!["salesforce", "stripe", "warehouse"], "{api}");
    let from = |o: &str| origins.values().filter(|v| *v == o).count();
    assert!(from("stripe") >= 2 && from("salesforce") >= 3, "changes came from both systems: {origins:?}");
    w.stop().await;
}

/// A Contact created by a user in Salesforce: created in the hub (and fanned out),
/// and the hub id written back to its external-id field — its echo changes nothing.
async fn a_contact_created_in_salesforce_is_imported_and_gets_the_hub_id(t: TestStore) {
    let w = World::start(&t.store).await;
    let sf_id =
        w.sf.ui_create("Contact", json!({"FirstName": "Omar", "LastName": "Khayyam", "Email": "omar@example.com"}));
    let link =
        eventually!("the hub customer", w.store.link_by_external_id("salesforce", "customer", &sf_id).await.unwrap());
    let hub = w.hub(&link.record_id).await;
    assert_eq!(
        (hub.fields["name"].as_str(), hub.fields["email"].as_str()),
        (Some("Omar Khayyam"), Some("omar@example.com"))
    );
    eventually!("the hub id in Salesforce", {
        (w.sf.record("Contact", &sf_id).unwrap()["Syncflow_Id__c"] == link.record_id.as_str()).then_some(())
    });
    eventually!("the customer in Stripe", w.store.link(CUSTOMER.name, &link.record_id, "stripe").await.unwrap());
    w.quiet().await;
    assert_eq!(
        w.store.changes_of_record("customer", &link.record_id).await.unwrap().len(),
        1,
        "the write-back's echo changed nothing"
    );
    assert_eq!(w.sf.records("Contact").len(), 1, "no twin");
    w.stop().await;
}

/// A session that expired is renewed once (`401 INVALID_SESSION_ID`); a row locked
/// in Salesforce (`UNABLE_TO_LOCK_ROW`) is retried until it goes through.
async fn expired_sessions_renew_and_locked_rows_are_retried(t: TestStore) {
    let w = World::start(&t.store).await;
    let a = w.store.create(&CUSTOMER, json!({"name": "Ann Lock"}).as_object().unwrap(), "api").await.unwrap();
    eventually!("the first contact", w.contact(&a.id));
    let tokens = w.sf.stats().tokens_issued;
    w.sf.expire_tokens();
    w.sf.set_lock_row_rate(1.0);
    let b = w.store.create(&CUSTOMER, json!({"name": "Ben Lock"}).as_object().unwrap(), "api").await.unwrap();
    let retrying = eventually!("a retry after UNABLE_TO_LOCK_ROW", {
        let f = DeliveryFilter {
            system: Some("salesforce".into()),
            record_id: Some(b.id.clone()),
            limit: 10,
            ..Default::default()
        };
        w.store.deliveries(&f).await.unwrap().into_iter().find(|d| d.status == DeliveryStatus::Retrying)
    });
    assert!(retrying.remarks.as_deref().unwrap_or("").contains("UNABLE_TO_LOCK_ROW"), "{retrying:?}");
    assert!(w.sf.stats().tokens_issued > tokens, "a new token after the session expired");
    w.sf.set_lock_row_rate(0.0);
    eventually!("the second contact", w.contact(&b.id));
    w.stop().await;
}

/// Once this system's share of the org's daily allowance is used, deliveries wait at
/// the head of the queue without spending attempts, and `/v1/systems` shows usage.
async fn the_budget_share_holds_deliveries_without_spending_attempts(t: TestStore) {
    let w = World::start(&t.store).await;
    w.sf.set_api_used(60_000); // past this system's share (0.5) of 100,000
    let first = w.store.create(&CUSTOMER, json!({"name": "Bud Get"}).as_object().unwrap(), "api").await.unwrap();
    eventually!("the first contact", w.contact(&first.id));
    let calls = w.sf.stats().api_calls;
    let held = w.store.create(&CUSTOMER, json!({"name": "Held Back"}).as_object().unwrap(), "api").await.unwrap();
    let systems: Value = w.http.get(format!("{}/v1/systems", w.url)).send().await.unwrap().json().await.unwrap();
    let sf = systems["data"].as_array().unwrap().iter().find(|s| s["name"] == "salesforce").unwrap().clone();
    assert!(sf["api_usage"]["used"].as_u64().unwrap() >= 60_000, "{sf}");
    assert_eq!((sf["api_usage"]["max"].as_u64(), sf["api_usage"]["budget"].as_u64()), (Some(100_000), Some(50_000)));
    // The engine claims nothing while the connector holds: the delivery stays
    // pending with no attempt, and Salesforce gets no call.
    for _ in 0..20 {
        let f = DeliveryFilter {
            system: Some("salesforce".into()),
            record_id: Some(held.id.clone()),
            limit: 10,
            ..Default::default()
        };
        let d = w.store.deliveries(&f).await.unwrap();
        assert!(d.iter().all(|d| d.attempts == 0), "{d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.sf.stats().api_calls <= calls + 1, "no calls while held (polling is held too)");
    w.stop().await;
}
