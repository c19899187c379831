//! The JSON receiver's knobs: idempotent effects, rate limit, outage, error rate.

use std::time::Duration;

use serde_json::json;
use syncflow_sandbox::Receiver;

async fn send(r: &Receiver, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(r.url("/in"))
        .header("idempotency-key", key)
        .json(&json!({"change": {"record_id": "cust_1", "version": 1}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn applies_each_key_once_and_replays_the_first_answer() {
    let r = Receiver::start(None, Duration::ZERO).await;
    let a: serde_json::Value = send(&r, "k1").await.json().await.unwrap();
    let b: serde_json::Value = send(&r, "k1").await.json().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a["id"], "ext_cust_1");
    assert_eq!(r.applied_count(), 1);
    assert_eq!(r.received().len(), 2);
}

#[tokio::test]
async fn rate_limit_outage_and_error_rate() {
    let r = Receiver::start(None, Duration::ZERO).await;
    r.set_rate_limit(Some(3.0));
    let mut statuses = Vec::new();
    for i in 0..5 {
        let resp = send(&r, &format!("r{i}")).await;
        if resp.status() == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    r.set_rate_limit(None);
    r.outage(Duration::from_secs(60));
    assert_eq!(send(&r, "o").await.status(), 503);
    let r = Receiver::start(None, Duration::ZERO).await;
    r.set_error_rate(1.0);
    assert_eq!(send(&r, "e").await.status(), 500);
    assert_eq!(r.applied_count(), 0);
}
