//! Priority lanes against a self-pacing connector (the Stripe sandbox), on SQLite and
//! PostgreSQL: while a backfill export drains in the bulk lane, a live change is
//! claimed in the slot kept for live changes and takes the pacer's next turn, ahead
//! of the bulk pushes already waiting there — so it reaches Stripe within a few
//! request intervals.

use std::time::Duration;

mod common;

use common::hub::RunningHub;

use serde_json::json;
use syncflow_core::CUSTOMER;
use syncflow_engine::backfill::Direction;
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter};

const KEY: &str = "sk_test_lanes";
/// Requests per second: 50 ms between Stripe calls.
const RATE: f64 = 20.0;

backend_tests!(a_live_change_overtakes_a_backfill_draining_into_a_paced_system);

async fn a_live_change_overtakes_a_backfill_draining_into_a_paced_system(t: TestStore) {
    let stripe = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    // Stripe's webhooks tell when each customer was created there.
    let seen = Receiver::start(None, Duration::ZERO).await;
    stripe.add_webhook("we_lanes", &seen.url("/stripe"), "whsec_lanes");
    // Hub customers Stripe never saw (as if they predate the system's block).
    for i in 0..150 {
        let body = json!({"name": format!("Old {i}")});
        t.store.create(&CUSTOMER, body.as_object().unwrap(), "seed").await.unwrap();
    }
    t.store.sequence().await.unwrap();
    t.store.set_cursor("dispatch", &t.store.head_seq().await.unwrap().to_string()).await.unwrap();
    let system = format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{KEY}\"\n\
         api_rate_limit = {RATE}\nconcurrency = 16\npoll_interval = \"0s\"\n",
        stripe.url()
    );
    let hub = RunningHub::start(&t.store, &system).await;
    let pipeline = hub.engine.pipelines().remove("stripe").unwrap();
    let export = pipeline.backfill(&CUSTOMER, Direction::Export, |_| {}).await.unwrap();
    assert_eq!(export.enqueued, 150);
    eventually!("the backfill draining", (stripe.stats().customers >= 10).then_some(()));

    let mut waits = Vec::new();
    for i in 0..3 {
        let name = format!("Live {i}");
        let r = t.store.create(&CUSTOMER, json!({"name": name}).as_object().unwrap(), "api").await.unwrap();
        let committed = chrono::DateTime::parse_from_rfc3339(&r.created_at).unwrap();
        let at = eventually!("the live customer in Stripe", {
            seen.received_log().iter().find(|(_, b)| b["data"]["object"]["name"] == name.as_str()).map(|(w, _)| *w)
        });
        waits.push((at - committed.with_timezone(&chrono::Utc)).num_milliseconds());
    }
    let drained = stripe.stats().customers - 3;
    assert!(drained < 150, "measured while the backfill drains ({drained} of 150 exported)");
    // Behind the fifteen bulk pushes waiting in the pacer a live change would wait
    // about 15 × 50 ms; served first it waits one interval at most, plus a claim.
    waits.sort();
    assert!(waits[1] < 300, "live commit → Stripe (ms): {waits:?}");
    let list = t.store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert!(list.iter().any(|d| !d.status.is_final()), "the backfill was still queued");
    hub.stop().await;
}
