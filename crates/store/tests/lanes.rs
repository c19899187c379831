//! Priority lanes, on SQLite and PostgreSQL: a system's claims take live changes
//! first, then retries, then bulk work (reconcile repairs), whatever their order in
//! the change log.

use serde_json::json;
use syncflow_core::CUSTOMER;
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, now_ms, DeliveryStatus, Finish, Route, LANE_BULK, LANE_LIVE};

fn routes() -> Vec<Route> {
    vec![Route { system: "crm".into(), entities: vec!["customer".into()] }]
}

backend_tests!(claims_take_live_then_retries_then_bulk, the_kept_slot_claims_live_changes_only);

async fn claims_take_live_then_retries_then_bulk(t: TestStore) {
    let s = &t.store;
    let body = |name: &str| json!({"name": name}).as_object().unwrap().clone();
    // A live change that fails once: it moves to the retry lane, due at once.
    let retried = s.create(&CUSTOMER, &body("Retried"), "api").await.unwrap();
    s.dispatch(&routes(), 100).await.unwrap();
    let claimed = s.claim("crm", "n1", 1, 60_000, &[]).await.unwrap();
    let retry = Finish {
        status: DeliveryStatus::Retrying,
        next_attempt_at: Some(now_ms() - 1),
        http_status: Some(503),
        external_id: None,
        remarks: Some("busy".into()),
        duration_ms: 1,
        link: None,
        callback_to: None,
    };
    assert_eq!(s.finish_many("n1", &[(&claimed[0].delivery, &retry)]).await.unwrap(), vec![true]);
    // A reconcile repair (bulk), then a live change — the newest of the three.
    let bulk = s.create(&CUSTOMER, &body("Bulk"), "crm").await.unwrap();
    s.resync(&CUSTOMER, &bulk.id, "crm").await.unwrap();
    let live = s.create(&CUSTOMER, &body("Live"), "api").await.unwrap();
    s.dispatch(&routes(), 100).await.unwrap();

    let mut order = Vec::new();
    for _ in 0..3 {
        let c = s.claim("crm", "n2", 1, 60_000, &[]).await.unwrap();
        assert_eq!(c.len(), 1);
        order.push(c[0].delivery.record_id.clone());
    }
    assert_eq!(order, vec![live.id, retried.id, bulk.id], "live, then retries, then bulk");
    assert_eq!(s.claim("crm", "n2", 10, 60_000, &[]).await.unwrap().len(), 0);
}

/// The engine's last free slot asks for live changes only (`claim_lanes` up to
/// `LANE_LIVE`): queued bulk work is left for the other slots, and each claim
/// carries its delivery's lane.
async fn the_kept_slot_claims_live_changes_only(t: TestStore) {
    let s = &t.store;
    let body = |name: &str| json!({"name": name}).as_object().unwrap().clone();
    let bulk = s.create(&CUSTOMER, &body("Bulk"), "crm").await.unwrap();
    s.resync(&CUSTOMER, &bulk.id, "crm").await.unwrap();
    s.dispatch(&routes(), 100).await.unwrap();
    assert!(s.claim_lanes("crm", "n1", 5, 60_000, &[], LANE_LIVE).await.unwrap().is_empty(), "bulk waits");

    let live = s.create(&CUSTOMER, &body("Live"), "api").await.unwrap();
    s.dispatch(&routes(), 100).await.unwrap();
    let c = s.claim_lanes("crm", "n1", 5, 60_000, &[], LANE_LIVE).await.unwrap();
    assert_eq!(
        c.iter().map(|c| (c.delivery.record_id.clone(), c.delivery.lane)).collect::<Vec<_>>(),
        [(live.id, LANE_LIVE)]
    );
    let c = s.claim_lanes("crm", "n1", 5, 60_000, &[], LANE_BULK).await.unwrap();
    assert_eq!(
        c.iter().map(|c| (c.delivery.record_id.clone(), c.delivery.lane)).collect::<Vec<_>>(),
        [(bulk.id, LANE_BULK)]
    );
}
