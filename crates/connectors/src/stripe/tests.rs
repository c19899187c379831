//! Unit tests of the pure parts: encoding, keys, state diffs, merge patches,
//! signature checks. End-to-end behaviour against the local Stripe stand-in is in
//! `crates/server/tests/stripe.rs`.

use serde_json::json;

use syncflow_core::sync::{fingerprint, project};
use syncflow_core::CUSTOMER;

use super::client::{encode_form, error_message, idempotency_key};
use super::inward::parse_event;
use super::state::{customer_fields, CUSTOMER_FIELDS};
use super::*;
use crate::{signature, WebhookError};

fn connector(extra: &str) -> StripeConnector {
    let text = format!("secret_key = \"sk_test_abc\"\napi_base = \"http://127.0.0.1:9\"\n{extra}");
    let config: StripeConfig = toml::from_str(&text).unwrap();
    config.build("stripe").unwrap()
}

#[test]
fn forms_encode_like_stripe_expects() {
    let form = vec![("metadata[syncflow_id]".to_string(), "cust_1".to_string()), ("name".into(), "Ada & Bo".into())];
    assert_eq!(encode_form(&form), "metadata%5Bsyncflow_id%5D=cust_1&name=Ada+%26+Bo");
}

#[test]
fn idempotency_key_follows_delivery_and_payload() {
    let a = vec![("name".to_string(), "Ada".to_string())];
    let b = vec![("name".to_string(), "Ada L.".to_string())];
    let k = idempotency_key(7, "POST", "/v1/customers", &a);
    assert_eq!(k, idempotency_key(7, "POST", "/v1/customers", &a), "a retry replays the same key");
    assert_ne!(k, idempotency_key(7, "POST", "/v1/customers", &b), "another payload never reuses it");
    assert_ne!(k, idempotency_key(8, "POST", "/v1/customers", &a));
    assert_ne!(k, idempotency_key(7, "POST", "/v1/customers/cus_1", &a));
    assert!(k.starts_with("sf-7-"));
}

#[test]
fn stripe_error_bodies_read_well() {
    let body =
        r#"{"error":{"message":"No such customer: 'cus_x'","code":"resource_missing","type":"invalid_request_error"}}"#;
    assert_eq!(error_message(body), "No such customer: 'cus_x' (resource_missing)");
    let outcome =
        client::ApiFailure { status: Some(404), message: error_message(body), retry_after: None }.outcome("stripe");
    let crate::Outcome::Reject { reason, .. } = outcome else { panic!("4xx is permanent") };
    assert_eq!(reason, "HTTP 404 from stripe: No such customer: 'cus_x' (resource_missing) — not retried");
    let throttled = client::ApiFailure { status: Some(429), message: "Too many requests".into(), retry_after: None };
    assert!(matches!(throttled.outcome("stripe"), crate::Outcome::Retry { .. }));
}

#[test]
fn state_ignores_bookkeeping_and_empty_values() {
    let s = customer_fields(&json!({
        "id": "cus_1", "name": "Ada", "email": "", "phone": "1",
        "metadata": {"syncflow_id": "cust_1", "tier": "gold", "gone": ""}
    }));
    assert_eq!(s["name"], json!("Ada"));
    assert_eq!(s["email"], json!(null));
    assert_eq!(s["metadata"], json!({"tier": "gold"}));
    let hub = json!({"name": "Ada", "email": null, "metadata": {"tier": "gold"}});
    let same = project(CUSTOMER_FIELDS, hub.as_object().unwrap());
    assert_eq!(fingerprint(&s), fingerprint(&same));
}

#[test]
fn customers_map_both_ways_and_carry_the_hub_id() {
    let c = connector("");
    let inward = c.inward().unwrap();
    let obj = json!({"id": "cus_1", "name": null, "email": "a@x.io", "metadata": {"syncflow_id": "cust_9"}});
    assert_eq!(inward.hub_id(&obj).as_deref(), Some("cust_9"));
    let mapped = inward.to_hub(&CUSTOMER, &obj);
    let (body, remark) = inward.create_body(&CUSTOMER, &mapped.fields, "cus_1");
    assert_eq!(body["name"], json!("a@x.io"), "the hub's required name is filled");
    assert!(remark.unwrap().contains("no name"));
}

#[test]
fn config_defaults_and_debug_hide_secrets() {
    let text = "secret_key = \"sk_live_supersecret\"\nwebhook_secret = \"whsec_hidden\"\n";
    let config: StripeConfig = toml::from_str(text).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("supersecret") && !shown.contains("whsec_hidden"), "{shown}");
    assert!(shown.contains("sk_live_***"));
    let c = config.build("stripe").unwrap();
    assert_eq!(c.default_rate_limit(), Some(config::LIVE_MODE_RATE));
    assert_eq!(connector("").default_rate_limit(), Some(config::TEST_MODE_RATE));
    assert_eq!(connector("api_rate_limit = 5").default_rate_limit(), Some(5.0));
    assert_eq!(c.inward().unwrap().poll_interval(), None, "webhooks only unless poll_interval is set");
    assert_eq!(connector("poll_interval = \"5s\"").inward().unwrap().poll_interval(), Some(Duration::from_secs(5)));
    assert!(toml::from_str::<StripeConfig>("secret_key = \"x\"\nsecret = 1").is_err(), "unknown keys are refused");
    assert!(crate::build("s", "stripe", toml::from_str("secret_key = \"\"").unwrap()).is_err());
}

#[test]
fn webhook_signatures_are_checked_before_anything_else() {
    let c = connector("webhook_secret = \"whsec_new\"\nwebhook_secret_previous = \"whsec_old\"\n");
    let body = br#"{"id":"evt_1","type":"customer.updated","created":100,"data":{"object":{"id":"cus_1"}}}"#;
    let now = 1_700_000_000;
    let headers = |value: &str| {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("stripe-signature", value.parse().unwrap());
        h
    };
    for secret in ["whsec_new", "whsec_old"] {
        let ok = c.parse_webhook(&headers(&signature::sign(secret, now, body)), body, now + 10).unwrap();
        assert_eq!((ok.event_id.as_str(), ok.event_type.as_str(), ok.occurred_at), ("evt_1", "customer.updated", 100));
    }
    let good = signature::sign("whsec_new", now, body);
    let err = |h: reqwest::header::HeaderMap, b: &[u8], at: i64| c.parse_webhook(&h, b, at).unwrap_err().to_string();
    assert_eq!(err(reqwest::header::HeaderMap::new(), body, now), "bad signature: missing signature header");
    assert_eq!(err(headers("t=abc"), body, now), "bad signature: malformed signature header");
    assert_eq!(
        err(headers(&signature::sign("whsec_forged", now, body)), body, now),
        "bad signature: no signature matches"
    );
    assert_eq!(err(headers(&good), b"{\"id\":\"evt_2\"}", now), "bad signature: no signature matches");
    assert_eq!(err(headers(&good), body, now + 301), "bad signature: timestamp outside the tolerance window");
    let not_event = b"{\"hello\":1}";
    assert!(err(headers(&signature::sign("whsec_new", now, not_event)), not_event, now).starts_with("bad payload"));
    let unsigned = connector("");
    assert!(matches!(unsigned.parse_webhook(&headers(&good), body, now), Err(WebhookError::NotConfigured)));
}

#[test]
fn event_types_map_to_entities() {
    let event = |kind: &str, object: &str| {
        parse_event(
            &json!({"id": "evt", "type": kind, "created": 1, "data": {"object": {"id": "x", "object": object}}}),
        )
        .unwrap()
    };
    assert_eq!(event("customer.updated", "customer").entity.map(|e| e.name), Some("customer"));
    assert_eq!(event("invoice.paid", "invoice").entity.map(|e| e.name), Some("invoice"));
    assert_eq!(event("charge.succeeded", "charge").entity, None);
    assert_eq!(event("customer.source.created", "card").entity, None);
    assert!(event("customer.deleted", "customer").deleted);
    assert!(parse_event(&json!({"id": "evt"})).is_err());
}
