//! The mass-delete breaker on the hub's side, end to end on SQLite and PostgreSQL:
//! deletions made through the hub's API (or any hub-side origin) past a system's
//! breaker settings are held before they reach the system (the Stripe sandbox),
//! listed as outward holds, and delivered or dropped on an operator's request.

use std::time::{Duration, Instant};

mod common;

use common::hub::RunningHub;

use serde_json::{json, Value};
use syncflow_core::CUSTOMER;
use syncflow_engine::reconcile::ReconcileOptions;
use syncflow_sandbox::{StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter, DeliveryStatus};

const STRIPE_KEY: &str = "sk_test_outward_holds";

backend_tests!(hub_mass_deletes_are_held_until_released_or_discarded);

async fn hub_mass_deletes_are_held_until_released_or_discarded(t: TestStore) {
    let stripe = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let system = format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{STRIPE_KEY}\"\n\
         api_rate_limit = 1000\nmass_delete_count = 3\nmass_delete_share = 0.1\nmass_delete_window = \"5m\"\n\
         reconcile_grace = \"0s\"\npoll_interval = \"0s\"\n",
        stripe.url()
    );
    let hub = RunningHub::start(&t.store, &system).await;
    let pipeline = hub.engine.pipelines().remove("stripe").unwrap();
    let reconcile = |repair: bool| {
        let pipeline = pipeline.clone();
        async move { pipeline.reconcile(&CUSTOMER, ReconcileOptions { repair, trigger: "api" }, &mut |_| {}).await.unwrap() }
    };
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), format!("{}{path}", hub.url));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let call = |method: reqwest::Method, path: String| {
        let (http, url) = (http.clone(), format!("{}{path}", hub.url));
        async move {
            let r = http.request(method, url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = json!({"name": format!("Del {i}")});
        ids.push(t.store.create(&CUSTOMER, body.as_object().unwrap(), "api").await.unwrap().id);
    }
    for id in &ids {
        eventually!("the link", t.store.link("customer", id, "stripe").await.unwrap());
    }
    assert_eq!(stripe.stats().customers, 10);
    let settled = || async {
        let list = t.store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
        list.iter().all(|d| d.status.is_final() || d.status == DeliveryStatus::Held).then_some(list)
    };

    // Below the threshold (3 is not more than 3) deletions flow as usual.
    for id in &ids[..3] {
        assert_eq!(call(reqwest::Method::DELETE, format!("/v1/customers/{id}")).await.0, 200);
    }
    eventually!("three deletions in Stripe", (stripe.stats().customers == 7).then_some(()));

    // Past it (4 > 3 and 40 % > 10 %) the API's deletions are held, and every later one.
    for id in &ids[3..7] {
        assert_eq!(call(reqwest::Method::DELETE, format!("/v1/customers/{id}")).await.0, 200);
    }
    let holds = eventually!("four outward holds", {
        let h = get("/v1/holds?system=stripe".into()).await;
        (h["data"].as_array().unwrap().len() == 4).then_some(h)
    });
    let holds = holds["data"].as_array().unwrap().clone();
    for h in &holds {
        assert_eq!((h["side"].as_str(), h["origin"].as_str()), (Some("outward"), Some("api")), "{h}");
        assert!(h["delivery_id"].is_i64() && h["inbox_id"].is_null(), "{h}");
    }
    assert!(holds.iter().any(|h| h["reason"].as_str().unwrap().contains("4 deletions from api")), "{holds:?}");
    let list = eventually!("nothing but held deletions unfinished", settled().await);
    assert_eq!(list.iter().filter(|d| d.status == DeliveryStatus::Held).count(), 4);
    assert_eq!(get("/v1/deliveries?status=held".into()).await["data"].as_array().unwrap().len(), 4);
    assert_eq!(stripe.stats().customers, 7, "a held deletion does not reach the system");
    let systems = get("/v1/systems".into()).await;
    assert_eq!(
        (systems["data"][0]["flagged"].as_bool(), systems["data"][0]["held_deletions"].as_i64()),
        (Some(true), Some(4))
    );

    // A repairing reconcile leaves held deletions to the operator (in flight).
    let run = reconcile(true).await;
    assert_eq!((run.counts.in_flight, run.counts.missing_local, run.counts.repaired), (4, 0, 0), "{run:?}");

    // Another origin is counted on its own: one deletion captured from SQL flows.
    t.store.delete(&CUSTOMER, &ids[7], None, "sql").await.unwrap();
    eventually!("the SQL deletion in Stripe", (stripe.stats().customers == 6).then_some(()));

    // Release one: delivered. Discard the rest: Stripe keeps them, and the links stay.
    let first = holds.iter().find(|h| h["record_id"] == ids[3].as_str()).unwrap();
    let (status, body) = call(reqwest::Method::POST, format!("/v1/holds/{}/release", first["id"])).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("released")), "{body}");
    eventually!("the released deletion in Stripe", (stripe.stats().customers == 5).then_some(()));
    for h in holds.iter().filter(|h| h["id"] != first["id"]) {
        let (status, body) = call(reqwest::Method::POST, format!("/v1/holds/{}/discard", h["id"])).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("discarded")), "{body}");
    }
    assert_eq!(call(reqwest::Method::POST, format!("/v1/holds/{}/release", first["id"])).await.0, 409);
    let list = eventually!("every delivery final", {
        let list = settled().await;
        list.filter(|l| l.iter().all(|d| d.status.is_final()))
    });
    let discarded: Vec<_> = list.iter().filter(|d| d.op == "delete" && d.status == DeliveryStatus::Skipped).collect();
    assert_eq!(discarded.len(), 3, "{list:#?}");
    assert!(discarded.iter().all(|d| d.remarks.as_deref().unwrap_or("").contains("the system keeps the record")));
    for id in &ids[4..7] {
        assert!(t.store.link("customer", id, "stripe").await.unwrap().is_some(), "the link stays");
    }
    // Discarded deletions are reported by reconcile, never repaired.
    let run = reconcile(true).await;
    assert_eq!((run.counts.missing_local, run.counts.repaired), (3, 0), "{run:?}");
    assert!(run.samples.iter().all(|s| s["detail"].as_str().unwrap_or("").contains("discarded the deletion")));
    // Wait a moment for any stray push, then count what Stripe holds.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stripe.stats().customers, 5, "discarded deletions never reach the system");
    assert_eq!(get("/v1/holds?system=stripe".into()).await["data"].as_array().unwrap().len(), 0);
    assert_eq!(get("/v1/systems".into()).await["data"][0]["flagged"], false);
    hub.stop().await;
}
