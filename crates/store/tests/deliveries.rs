//! The transaction table's rules, on SQLite and PostgreSQL.

use serde_json::json;
use syncflow_core::{CUSTOMER, INVOICE};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter, DeliveryStatus, Finish, Route};

fn routes() -> Vec<Route> {
    vec![
        Route { system: "crm".into(), entities: vec!["customer".into()] },
        Route { system: "books".into(), entities: vec!["customer".into(), "invoice".into()] },
    ]
}

fn delivered() -> Finish {
    Finish {
        status: DeliveryStatus::Delivered,
        next_attempt_at: None,
        http_status: Some(200),
        external_id: None,
        remarks: None,
        duration_ms: 1,
        link: None,
        callback_to: None,
    }
}

backend_tests!(routes_by_subscription_never_to_origin, one_record_at_a_time_and_leases_expire, queued_upserts_coalesce);

async fn routes_by_subscription_never_to_origin(t: TestStore) {
    let s = &t.store;
    let c = s.create(&CUSTOMER, json!({"name": "A"}).as_object().unwrap(), "crm").await.unwrap();
    s.create(&INVOICE, json!({"customer_id": c.id, "amount": 1, "currency": "eur"}).as_object().unwrap(), "api")
        .await
        .unwrap();
    assert_eq!(s.dispatch(&routes(), 100).await.unwrap(), (2, 2));
    assert_eq!(s.dispatch_cursor().await.unwrap(), 2);
    assert_eq!(s.dispatch(&routes(), 100).await.unwrap(), (0, 0), "the cursor moved past them");
    let all = s.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
    let got: Vec<(i64, &str)> = all.iter().map(|d| (d.change_seq, d.system.as_str())).collect();
    // Change 1 came from crm: only books. Change 2 is an invoice: crm does not subscribe.
    assert_eq!(got, vec![(1, "books"), (2, "books")]);
}

async fn one_record_at_a_time_and_leases_expire(t: TestStore) {
    let s = &t.store;
    let a = s.create(&CUSTOMER, json!({"name": "A"}).as_object().unwrap(), "api").await.unwrap();
    let b = s.create(&CUSTOMER, json!({"name": "B"}).as_object().unwrap(), "api").await.unwrap();
    s.dispatch(&routes()[..1], 100).await.unwrap();

    // Both records' first changes are claimable at once.
    let first = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|c| c.delivery.record_id.as_str()).collect();
    assert_eq!(ids, vec![a.id.as_str(), b.id.as_str()]);
    // A's next change waits while A's first is in flight.
    s.update(&CUSTOMER, &a.id, json!({"name": "A2"}).as_object().unwrap(), None, "api").await.unwrap();
    s.dispatch(&routes()[..1], 100).await.unwrap();
    assert!(s.claim("crm", "n2", 10, 60_000, &[]).await.unwrap().is_empty(), "A2 must wait for A1");

    // Another node cannot record an outcome for a lease it does not hold.
    assert!(!s.finish(&first[0].delivery, "n2", &delivered()).await.unwrap());
    assert!(s.finish(&first[0].delivery, "n1", &delivered()).await.unwrap());
    let next = s.claim("crm", "n2", 10, 0, &[]).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].change.version, 2);

    // A lease of 0 ms has expired at once: another node may take the delivery over,
    // and the first holder's late outcome is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let taken = loop {
        let taken = s.claim("crm", "n3", 10, 60_000, &[]).await.unwrap();
        if !taken.is_empty() || std::time::Instant::now() > deadline {
            break taken;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].delivery.attempts, 2);
    assert!(!s.finish(&next[0].delivery, "n2", &delivered()).await.unwrap());
    assert!(s.finish(&taken[0].delivery, "n3", &delivered()).await.unwrap());
}

async fn queued_upserts_coalesce(t: TestStore) {
    let s = &t.store;
    let a = s.create(&CUSTOMER, json!({"name": "v1"}).as_object().unwrap(), "api").await.unwrap();
    for i in 2..=4 {
        s.update(&CUSTOMER, &a.id, json!({"name": format!("v{i}")}).as_object().unwrap(), None, "api").await.unwrap();
    }
    s.dispatch(&routes()[..1], 100).await.unwrap();
    let claimed = s.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].change.snapshot["name"], "v4", "the newest state is sent");
    assert_eq!(claimed[0].superseded.len(), 3);
    let all = s.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
    let statuses: Vec<_> = all.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        vec![DeliveryStatus::Skipped, DeliveryStatus::Skipped, DeliveryStatus::Skipped, DeliveryStatus::InFlight]
    );
    assert_eq!(
        all[0].remarks.as_deref(),
        Some(format!("superseded by change 4 (coalesced into delivery {})", all[3].id).as_str())
    );
}
