//! Unit tests of the pure parts: mapping both ways, name splitting, the limit
//! header, the JWT assertion, config checks. End-to-end behaviour against the
//! Salesforce sandbox is in `crates/server/tests/salesforce.rs`.

use serde_json::json;
use syncflow_core::sync::fingerprint;

use super::client::{jwt_assertion, parse_usage, Usage};
use super::mapping::{split_name, Mapping};
use super::*;

fn mapping() -> Mapping {
    Mapping::new("Contact", "Syncflow_Id__c", [("tier".to_string(), "Tier__c".to_string())].into()).unwrap()
}

#[test]
fn names_split_at_the_last_space_and_join_back() {
    assert_eq!(split_name("Ada Lovelace"), (Some("Ada".into()), "Lovelace".into()));
    assert_eq!(split_name("Mary Ann Smith"), (Some("Mary Ann".into()), "Smith".into()));
    assert_eq!(split_name("Plato"), (None, "Plato".into()));
    let m = mapping();
    for name in ["Ada Lovelace", "Mary Ann Smith", "Plato"] {
        let hub = json!({"name": name, "email": "a@x.io", "metadata": {"tier": "gold", "unmapped": "x"}});
        let state = m.hub_view(hub.as_object().unwrap());
        let body = m.to_sf(&state, None, None);
        let mut rec = serde_json::Value::Object(body);
        rec["Id"] = json!("003000000000001AAA");
        assert_eq!(m.to_hub(&rec), state, "{name} round-trips");
        assert_eq!(fingerprint(&m.to_hub(&rec)), fingerprint(&state));
    }
}

#[test]
fn only_mapped_metadata_is_synced_and_a_removed_key_clears_its_field() {
    let m = mapping();
    let before =
        m.hub_view(json!({"name": "A B", "email": null, "metadata": {"tier": "gold", "x": "1"}}).as_object().unwrap());
    assert_eq!(before["metadata"], json!({"tier": "gold"}));
    let after = m.hub_view(json!({"name": "A B", "email": null, "metadata": {}}).as_object().unwrap());
    let body = m.to_sf(&after, Some(&before), Some(&["metadata".to_string()]));
    assert_eq!(serde_json::Value::Object(body), json!({"Tier__c": null}));
    assert!(Mapping::new("Lead", "Syncflow_Id__c", Default::default()).is_err());
    assert!(Mapping::new("Contact", "Syncflow_Id", Default::default()).is_err());
}

#[test]
fn the_limit_header_reads_with_or_without_bursts() {
    assert_eq!(parse_usage("api-usage=10018/100000"), Some(Usage { used: 10018, max: 100000 }));
    assert_eq!(parse_usage("api-usage=5/15000; api-bursts=1/750"), Some(Usage { used: 5, max: 15000 }));
    assert_eq!(parse_usage("per-app-api-usage=1/2"), None);
}

#[test]
fn the_jwt_assertion_is_rs256_signed_and_expires_within_three_minutes() {
    use base64::Engine as _;
    use rsa::signature::Verifier;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let jwt = jwt_assertion("client-1", "int@acme.com", "https://login.salesforce.com", &key, 1_000);
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        json!({"iss": "client-1", "sub": "int@acme.com", "aud": "https://login.salesforce.com", "exp": 1180})
    );
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key.to_public_key());
    let signature = rsa::pkcs1v15::Signature::try_from(b64.decode(parts[2]).unwrap().as_slice()).unwrap();
    assert!(verifier.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).is_ok());
}

#[test]
fn config_is_checked_and_debug_hides_secrets() {
    let build = |extra: &str| {
        let text = format!("login_url = \"http://127.0.0.1:9\"\nclient_id = \"cid\"\n{extra}");
        let config: SalesforceConfig = toml::from_str(&text).unwrap();
        config.build("salesforce")
    };
    let c = build("client_secret = \"s3cr3t\"").unwrap();
    assert_eq!(c.max_batch(), 200);
    assert_eq!(c.inward().unwrap().poll_interval(), Some(Duration::from_secs(5)));
    assert!(build("").is_err(), "a flow is required");
    assert!(build("client_secret = \"s\"\nbatch_size = 201").is_err(), "Collections take 200 at most");
    assert!(build("client_secret = \"s\"\ndaily_budget_share = 1.5").is_err());
    assert!(build("client_secret = \"s\"\n[fields]\ntier = \"Tier\"").is_err(), "custom fields end in __c");
    let bad_key = build("jwt_username = \"u\"\njwt_key = \"not a key\"").err().unwrap();
    assert!(bad_key.contains("not an RSA private key"), "{bad_key}");
    let config: SalesforceConfig =
        toml::from_str("login_url = \"http://x\"\nclient_id = \"cid\"\nclient_secret = \"s3cr3t\"").unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cr3t") && !shown.contains("cid"), "{shown}");
    assert!(crate::build("sf", "salesforce", toml::from_str("login_url = \"x\"\nclient_id = \"c\"").unwrap()).is_err());
}
