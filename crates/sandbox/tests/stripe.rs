//! The Stripe stand-in behaves as Stripe documents: idempotent replays, 429 with
//! Retry-After, newest-first event pages, and signed webhooks retried until
//! acknowledged.

use std::time::{Duration, Instant};

use serde_json::Value;
use syncflow_sandbox::{Receiver, Reply, StripeOptions, StripeSandbox};

async fn sandbox(options: StripeOptions) -> (StripeSandbox, reqwest::Client) {
    let s = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    (s, reqwest::Client::new())
}

fn post(c: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
    c.post(url).bearer_auth("sk_test_sandbox")
}

#[tokio::test]
async fn idempotency_key_replays_first_response_and_rejects_other_params() {
    let (s, c) = sandbox(StripeOptions::default()).await;
    let send = |name: &str| {
        post(&c, format!("{}/v1/customers", s.url()))
            .header("Idempotency-Key", "k1")
            .form(&[("name", name), ("metadata[syncflow_id]", "cust_1")])
            .send()
    };
    let first = send("Ada").await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send("Ada").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first["metadata"]["syncflow_id"], "cust_1");
    assert_eq!(s.stats().customers, 1, "a replay creates nothing");
    let other = send("Bob").await.unwrap();
    assert_eq!(other.status(), 400);
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"]["type"], "idempotency_error");
    assert_eq!(s.stats().customers, 1);
}

#[tokio::test]
async fn past_the_rate_limit_answers_429_with_retry_after() {
    let (s, c) = sandbox(StripeOptions { rate_limit: Some(5.0), ..Default::default() }).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..8 {
        let r = post(&c, format!("{}/v1/customers", s.url())).form(&[("name", format!("n{i}"))]).send().await.unwrap();
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(s.stats().throttled, 3);
    assert_eq!(s.stats().customers, 5);
}

#[tokio::test]
async fn events_list_newest_first_with_cursors() {
    let (s, c) = sandbox(StripeOptions::default()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let cus: Value = post(&c, format!("{}/v1/customers", s.url()))
            .form(&[("name", format!("n{i}"))])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(cus["id"].as_str().unwrap().to_string());
    }
    post(&c, format!("{}/v1/customers/{}", s.url(), ids[0])).form(&[("email", "a@example.com")]).send().await.unwrap();
    // A no-op update fires no event, as in Stripe.
    post(&c, format!("{}/v1/customers/{}", s.url(), ids[0])).form(&[("email", "a@example.com")]).send().await.unwrap();
    let get = |q: String| {
        let c = c.clone();
        let url = format!("{}/v1/events{q}", s.url());
        async move { c.get(url).bearer_auth("sk_test_x").send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let all = get("?limit=100".into()).await;
    let types: Vec<&str> = all["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        vec![
            "customer.updated",
            "customer.created",
            "customer.created",
            "customer.created",
            "customer.created",
            "customer.created"
        ]
    );
    assert_eq!(all["data"][0]["data"]["previous_attributes"]["email"], Value::Null);
    let evt: Vec<String> =
        all["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let first_page = get("?limit=2".into()).await;
    assert_eq!(first_page["has_more"], true);
    let older = get(format!("?limit=2&starting_after={}", evt[1])).await;
    let older_ids: Vec<&str> = older["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(older_ids, vec![evt[2].as_str(), evt[3].as_str()]);
    let newer = get(format!("?limit=2&ending_before={}", evt[4])).await;
    let newer_ids: Vec<&str> = newer["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(newer_ids, vec![evt[2].as_str(), evt[3].as_str()]);
    assert_eq!(newer["has_more"], true);
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_acknowledged() {
    let endpoint = Receiver::start(Some("whsec_test"), Duration::ZERO).await;
    endpoint.script([Reply::status(500), Reply::status(503)]);
    let options = StripeOptions { webhook_retries: vec![Duration::from_millis(50); 3], ..Default::default() };
    let (s, c) = sandbox(options).await;
    s.add_webhook("we_1", &endpoint.url("/webhooks/stripe"), "whsec_test");
    post(&c, format!("{}/v1/customers", s.url())).form(&[("name", "Hooked")]).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint.applied().is_empty() {
        assert!(Instant::now() < deadline, "webhook never acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = endpoint.received();
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), vec![500, 503, 200]);
    assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    assert_eq!(got[2].body["type"], "customer.created");
    assert_eq!(got[0].body["id"], got[2].body["id"], "a retry resends the same event");
}

#[tokio::test]
async fn requests_need_a_secret_key_and_outages_answer_503() {
    let (s, c) = sandbox(StripeOptions::default()).await;
    let r = c.post(format!("{}/v1/customers", s.url())).form(&[("name", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // `curl -u sk_test_…:` (basic auth with the key as user) works as in Stripe.
    let r = c.get(format!("{}/v1/customers", s.url())).basic_auth("sk_test_basic", Some("")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/v1/customers", s.url())).basic_auth("pk_test_wrong", Some("")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(&c, format!("{}/v1/customers", s.url())).form(&[("colour", "red")]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.outage(Duration::from_secs(60));
    let r = post(&c, format!("{}/v1/customers", s.url())).form(&[("name", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(s.stats().customers, 0);
}
