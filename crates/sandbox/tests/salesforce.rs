//! The Salesforce stand-in behaves as `reference/salesforce.md` documents Salesforce's
//! REST API: each test names the section (A1 auth, A2 sObject REST, A3 limits, A4
//! polling) whose behaviour it checks.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::{Client, Method, StatusCode};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use sha2::Sha256;
use syncflow_sandbox::salesforce::{id18, parse_time};
use syncflow_sandbox::{SalesforceOptions, SalesforceSandbox};

const PRIVATE_KEY: &str = include_str!("fixtures/jwt_test_key.pem");
const PUBLIC_KEY_SPKI: &str = include_str!("fixtures/jwt_test_key.pub.pem");
const PUBLIC_KEY_PKCS1: &str = include_str!("fixtures/jwt_test_key.pkcs1.pub.pem");

struct Org {
    s: SalesforceSandbox,
    c: Client,
    token: String,
}

impl Org {
    async fn start(options: SalesforceOptions) -> Org {
        let s = SalesforceSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let c = Client::new();
        let token = client_credentials(&s, &c).await["access_token"].as_str().unwrap().to_string();
        Org { s, c, token }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/services/data/v66.0{path}", self.s.url())
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.c.request(method, self.url(path)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn query(&self, soql: &str) -> (StatusCode, Value) {
        self.get(&format!("/query?q={}", urlencode(soql))).await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn client_credentials(s: &SalesforceSandbox, c: &Client) -> Value {
    let options = SalesforceOptions::default();
    let r = c
        .post(format!("{}/services/oauth2/token", s.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", options.client_id.as_str()),
            ("client_secret", options.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn jwt(claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(br#"{"alg":"RS256"}"#), b64.encode(claims.to_string()));
    let key = SigningKey::<Sha256>::new(rsa::RsaPrivateKey::from_pkcs8_pem(PRIVATE_KEY).unwrap());
    let signature = key.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", b64.encode(signature))
}

fn is_sf_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    // 2026-05-20T20:49:32.000+0000
    s.len() == 28 && s.ends_with(".000+0000") && &s[10..11] == "T" && parse_time(s).is_some()
}

#[tokio::test]
async fn a1_client_credentials_token_has_documented_fields_and_bad_secrets_are_refused() {
    let s = SalesforceSandbox::start("127.0.0.1:0".parse().unwrap(), SalesforceOptions::default()).await.unwrap();
    let c = Client::new();
    let t = client_credentials(&s, &c).await;
    for field in ["access_token", "signature", "instance_url", "id", "token_type", "issued_at"] {
        assert!(t[field].is_string(), "{field} in {t}");
    }
    assert_eq!(t["instance_url"], s.url());
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["issued_at"].as_str().unwrap().parse::<i64>().unwrap() > 1_700_000_000_000, "epoch milliseconds");
    assert!(t.get("refresh_token").is_none(), "no refresh token");
    let token = |form: Vec<(&'static str, &'static str)>| {
        c.post(format!("{}/services/oauth2/token", s.url())).form(&form).send()
    };
    let bad = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "syncflow-sandbox-client"),
        ("client_secret", "wrong"),
    ])
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].is_string());
    let unknown = token(vec![("grant_type", "client_credentials"), ("client_id", "other"), ("client_secret", "x")])
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    // HTTP basic credentials work too.
    let basic = c
        .post(format!("{}/services/oauth2/token", s.url()))
        .basic_auth("syncflow-sandbox-client", Some("syncflow-sandbox-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    assert_eq!(s.stats().tokens_issued, 2);
}

#[tokio::test]
async fn a1_jwt_bearer_checks_signature_issuer_subject_audience_and_expiry() {
    for pem in [PUBLIC_KEY_SPKI, PUBLIC_KEY_PKCS1] {
        let options = SalesforceOptions {
            jwt_public_key_pem: Some(pem.to_string()),
            jwt_username: Some("integration@example.com".into()),
            ..Default::default()
        };
        let s = SalesforceSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let c = Client::new();
        let now = chrono::Utc::now().timestamp();
        let good = json!({"iss": "syncflow-sandbox-client", "sub": "integration@example.com",
            "aud": "https://login.salesforce.com", "exp": now + 180});
        let exchange = |assertion: String| {
            c.post(format!("{}/services/oauth2/token", s.url()))
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
                .send()
        };
        let ok = exchange(jwt(good.clone())).await.unwrap();
        assert_eq!(ok.status(), 200);
        let ok: Value = ok.json().await.unwrap();
        assert_eq!(ok["instance_url"], s.url());
        assert_eq!(ok["token_type"], "Bearer");
        let r =
            c.get(format!("{}/services/data/v66.0/limits", s.url())).bearer_auth(ok["access_token"].as_str().unwrap());
        assert_eq!(r.send().await.unwrap().status(), 200, "the JWT token opens the API");

        let mut tampered = jwt(good.clone());
        let other = jwt(json!({"iss": "syncflow-sandbox-client", "sub": "admin@example.com",
            "aud": "https://login.salesforce.com", "exp": now + 180}));
        // Someone else's claims under our signature.
        let payload = other.split('.').nth(1).unwrap().to_string();
        let parts: Vec<&str> = tampered.split('.').collect();
        tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        let cases = [
            (tampered, "invalid_grant", "bad signature"),
            (
                jwt(
                    json!({"iss": "other", "sub": "integration@example.com", "aud": "https://login.salesforce.com", "exp": now + 180}),
                ),
                "invalid_client",
                "iss",
            ),
            (
                jwt(
                    json!({"iss": "syncflow-sandbox-client", "sub": "nobody@example.com", "aud": "https://login.salesforce.com", "exp": now + 180}),
                ),
                "invalid_grant",
                "sub",
            ),
            (
                jwt(
                    json!({"iss": "syncflow-sandbox-client", "sub": "integration@example.com", "aud": "https://evil.example", "exp": now + 180}),
                ),
                "invalid_grant",
                "aud",
            ),
            (
                jwt(
                    json!({"iss": "syncflow-sandbox-client", "sub": "integration@example.com", "aud": "https://login.salesforce.com", "exp": now - 10}),
                ),
                "invalid_grant",
                "exp",
            ),
        ];
        for (assertion, error, what) in cases {
            let r = exchange(assertion).await.unwrap();
            assert_eq!(r.status(), 400, "{what}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], error, "{what}: {body}");
        }
        let test_aud = jwt(
            json!({"iss": "syncflow-sandbox-client", "sub": "integration@example.com", "aud": "https://test.salesforce.com", "exp": now + 60}),
        );
        assert_eq!(exchange(test_aud).await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn a1_calls_need_a_live_session_and_expired_tokens_answer_invalid_session_id() {
    let org = Org::start(SalesforceOptions { token_ttl: Some(Duration::from_millis(300)), ..Default::default() }).await;
    let no_token = org.c.get(org.url("/limits")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let body: Value = no_token.json().await.unwrap();
    assert_eq!(body, json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = org.get("/limits").await;
        if status == 401 {
            assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
            break;
        }
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The expire_tokens knob: a fresh token works until it is pulled.
    let org = Org::start(SalesforceOptions::default()).await;
    assert_eq!(org.get("/limits").await.0, 200);
    org.s.expire_tokens();
    assert_eq!(org.get("/limits").await.0, 401);
}

#[tokio::test]
async fn a3_every_response_carries_limit_info_and_past_the_daily_limit_answers_403() {
    let org = Org::start(SalesforceOptions { daily_limit: 50, ..Default::default() }).await;
    let versions = org.c.get(format!("{}/services/data/", org.s.url())).send().await.unwrap();
    assert_eq!(versions.status(), 200);
    assert!(versions.headers().get("sforce-limit-info").is_none(), "not on the versions list");
    let r = org.c.get(org.url("/limits")).bearer_auth(&org.token).send().await.unwrap();
    assert_eq!(r.headers()["sforce-limit-info"], "api-usage=1/50");
    let limits: Value = r.json().await.unwrap();
    assert_eq!(limits["DailyApiRequests"], json!({"Max": 50, "Remaining": 49}));
    // Errors carry it too.
    let missing = org.c.get(org.url("/sobjects/Contact/003000000000000")).bearer_auth(&org.token).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["sforce-limit-info"], "api-usage=2/50");

    org.s.set_api_used(49);
    let last = org.c.get(org.url("/limits")).bearer_auth(&org.token).send().await.unwrap();
    assert_eq!(last.status(), 200);
    assert_eq!(last.headers()["sforce-limit-info"], "api-usage=50/50");
    let refused = org.c.get(org.url("/limits")).bearer_auth(&org.token).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["sforce-limit-info"], "api-usage=50/50");
    assert!(refused.headers().get("retry-after").is_none(), "no Retry-After, no 429");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body, json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]));
    assert_eq!(org.s.stats().limit_refusals, 1);
    assert_eq!(org.s.stats().api_calls, 3, "refused calls are not counted");
}

#[tokio::test]
async fn a2_crud_answers_documented_statuses_ids_and_timestamps() {
    let org = Org::start(SalesforceOptions::default()).await;
    let (status, created) = org
        .send(
            Method::POST,
            "/sobjects/Contact/",
            Some(json!({"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["success"], true);
    assert_eq!(created["errors"], json!([]));
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("003"));
    assert_eq!(id18(&id[..15]), id, "case-safe checksum suffix");

    let (status, got) = org.get(&format!("/sobjects/Contact/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        got["attributes"],
        json!({"type": "Contact", "url": format!("/services/data/v66.0/sobjects/Contact/{id}")})
    );
    assert_eq!(got["Id"], id.as_str());
    assert_eq!(got["Name"], "Ada Lovelace");
    assert_eq!(got["IsDeleted"], false);
    for f in ["CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        assert!(is_sf_time(&got[f]), "{f}: {}", got[f]);
    }
    assert_eq!(got["CreatedById"], org.s.integration_user_id().as_str());
    // A 15-character id reaches the same record; ?fields= narrows it.
    let (status, short) = org.get(&format!("/sobjects/Contact/{}?fields=Email,LastName", &id[..15])).await;
    assert_eq!(status, 200);
    assert_eq!(short["Email"], "ada@example.com");
    assert!(short.get("FirstName").is_none());

    let (status, body) =
        org.send(Method::PATCH, &format!("/sobjects/Contact/{id}"), Some(json!({"Email": "ada@math.org"}))).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(org.s.record("Contact", &id).unwrap()["Email"], "ada@math.org");

    // An edit in the UI is stamped with another user.
    org.s.ui_update("Contact", &id, json!({"Title": "Countess"}));
    let after = org.s.record("Contact", &id).unwrap();
    assert_eq!(after["LastModifiedById"], org.s.ui_user_id().as_str());
    assert_ne!(org.s.ui_user_id(), org.s.integration_user_id());

    let (status, _) = org.send(Method::DELETE, &format!("/sobjects/Contact/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, body) = org.get(&format!("/sobjects/Contact/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["errorCode"], "ENTITY_IS_DELETED");
    let (status, body) = org.send(Method::PATCH, &format!("/sobjects/Contact/{id}"), Some(json!({"Title": "x"}))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("ENTITY_IS_DELETED")));
    assert_eq!(org.s.record("Contact", &id).unwrap()["IsDeleted"], true, "in the recycle bin");
    assert_eq!(org.s.stats().records, 0);

    let (status, body) = org.get(&format!("/sobjects/Contact/{}", id18("003Hs0000000zzz"))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (status, created) =
        org.send(Method::POST, "/sobjects/Account", Some(json!({"Name": "Analytical Engines"}))).await;
    assert_eq!(status, 201);
    assert!(created["id"].as_str().unwrap().starts_with("001"));
    // Any API version is served.
    let r =
        org.c.get(format!("{}/services/data/v59.0/sobjects/Account/{}", org.s.url(), created["id"].as_str().unwrap()));
    let r = r.bearer_auth(&org.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a2_field_errors_use_the_error_array_with_codes_and_fields() {
    let org = Org::start(SalesforceOptions::default()).await;
    let (status, body) =
        org.send(Method::POST, "/sobjects/Contact/", Some(json!({"LastName": "X", "Shoe_Size": 9}))).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    assert!(body[0]["message"].is_string());
    let (status, body) = org.send(Method::POST, "/sobjects/Contact/", Some(json!({"FirstName": "Ada"}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}])
    );
    let (status, body) = org.send(Method::POST, "/sobjects/Account/", Some(json!({"Phone": "1"}))).await;
    assert_eq!((status, body[0]["fields"].clone()), (StatusCode::BAD_REQUEST, json!(["Name"])));
    let (status, body) = org
        .send(
            Method::POST,
            "/sobjects/Contact/",
            Some(json!({"LastName": "X", "SystemModstamp": "2026-01-01T00:00:00.000+0000"})),
        )
        .await;
    assert_eq!(
        (status, body[0]["errorCode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_FIELD_FOR_INSERT_UPDATE"))
    );
    let (status, body) =
        org.send(Method::POST, "/sobjects/Contact/", Some(json!({"LastName": "X", "Email": "not an email"}))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_EMAIL_ADDRESS")));
    // Any custom field is accepted (names are case-insensitive), and shows on reads.
    let (status, created) = org
        .send(
            Method::POST,
            "/sobjects/Contact/",
            Some(json!({"lastname": "X", "Tier__c": "gold", "Syncflow_Id__c": "cus_1"})),
        )
        .await;
    assert_eq!(status, 201);
    let got = org.get(&format!("/sobjects/Contact/{}", created["id"].as_str().unwrap())).await.1;
    assert_eq!((got["LastName"].as_str(), got["Tier__c"].as_str()), (Some("X"), Some("gold")));
    // The external id is unique per type.
    let (status, body) =
        org.send(Method::POST, "/sobjects/Contact/", Some(json!({"LastName": "Y", "Syncflow_Id__c": "CUS_1"}))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("DUPLICATE_VALUE")));
    let (_, describe) = org.get("/sobjects/Contact/describe").await;
    let ext = describe["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Syncflow_Id__c").unwrap();
    assert_eq!((ext["externalId"].as_bool(), ext["unique"].as_bool()), (Some(true), Some(true)));
    assert!(describe["fields"].as_array().unwrap().iter().any(|f| f["name"] == "Tier__c"));
    let (status, body) = org.send(Method::POST, "/sobjects/Contact/", Some(json!(["not", "an", "object"]))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("JSON_PARSER_ERROR")));
}

#[tokio::test]
async fn a2_upsert_by_external_id_creates_201_updates_200_and_answers_300_on_several_matches() {
    let org = Org::start(SalesforceOptions::default()).await;
    let path = "/sobjects/Contact/Syncflow_Id__c/cus_42";
    let (status, body) = org.send(Method::PATCH, path, Some(json!({"LastName": "Hopper"}))).await;
    assert_eq!(status, 201);
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body, json!({"id": id, "success": true, "errors": [], "created": true}));
    let (status, body) = org.send(Method::PATCH, path, Some(json!({"FirstName": "Grace"}))).await;
    assert_eq!(status, 200, "an update answers 200 with created:false on v46+");
    assert_eq!(body, json!({"id": id, "success": true, "errors": [], "created": false}));
    let rec = org.s.record("Contact", &id).unwrap();
    assert_eq!((rec["Name"].as_str(), rec["Syncflow_Id__c"].as_str()), (Some("Grace Hopper"), Some("cus_42")));
    assert_eq!(org.s.stats().records, 1, "a retried upsert creates no twin");
    // Before v46 an update answered 204.
    let r = org
        .c
        .patch(format!("{}/services/data/v45.0{path}", org.s.url()))
        .bearer_auth(&org.token)
        .json(&json!({"Title": "RADM"}));
    assert_eq!(r.send().await.unwrap().status(), 204);

    let (status, body) = org.send(Method::PATCH, "/sobjects/Contact/Nope__c/1", Some(json!({"LastName": "X"}))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    for bad in [json!({"LastName": "X", "Id": id}), json!({"LastName": "X", "Syncflow_Id__c": "cus_42"})] {
        let (status, _) = org.send(Method::PATCH, path, Some(bad)).await;
        assert_eq!(status, 400);
    }
    let (status, _) = org
        .send(Method::PATCH, "/sobjects/Contact/Syncflow_Id__c/cus_new?updateOnly=true", Some(json!({"LastName": "X"})))
        .await;
    assert_eq!(status, 404, "updateOnly stops the create");

    // Several matches (a non-unique external id): 300 with the matches, nothing written.
    org.s.set_unique_external_id(false);
    let twin = org.s.ui_create("Contact", json!({"LastName": "Twin", "Syncflow_Id__c": "cus_42"}));
    let (status, body) = org.send(Method::PATCH, path, Some(json!({"LastName": "Changed"}))).await;
    assert_eq!(status, 300);
    let urls: Vec<&str> = body.as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(urls.len(), 2);
    assert!(urls.iter().any(|u| u.ends_with(&twin)));
    assert_eq!(org.s.record("Contact", &id).unwrap()["LastName"], "Hopper");
}

async fn collection(org: &Org, method: Method, path: &str, body: Option<Value>) -> Vec<Value> {
    let (status, body) = org.send(method, path, body).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test]
async fn a2_collections_answer_one_result_per_item_in_order_with_status_code_errors() {
    let org = Org::start(SalesforceOptions::default()).await;
    let before = org.s.stats();
    let created = collection(
        &org,
        Method::POST,
        "/composite/sobjects",
        Some(json!({"records": [
            {"attributes": {"type": "Contact"}, "LastName": "One"},
            {"attributes": {"type": "Contact"}, "FirstName": "No last name"},
            {"attributes": {"type": "Account"}, "Name": "Three"},
        ]})),
    )
    .await;
    let after = org.s.stats();
    assert_eq!((after.api_calls - before.api_calls, after.collection_calls), (1, 1), "one API call per request");
    assert_eq!(created.len(), 3);
    assert_eq!(created[0]["success"], true);
    assert_eq!(created[1]["success"], false, "allOrNone defaults to false");
    assert_eq!(
        created[1]["errors"],
        json!([{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]", "fields": ["LastName"]}])
    );
    assert!(created[2]["id"].as_str().unwrap().starts_with("001"));
    let (one, three) = (created[0]["id"].as_str().unwrap().to_string(), created[2]["id"].as_str().unwrap().to_string());

    let updated = collection(
        &org,
        Method::PATCH,
        "/composite/sobjects",
        Some(json!({"records": [
            {"attributes": {"type": "Contact"}, "Id": one, "Email": "one@example.com"},
            {"attributes": {"type": "Contact"}, "LastName": "no id"},
        ]})),
    )
    .await;
    assert_eq!(updated[0], json!({"id": one, "success": true, "errors": []}));
    assert_eq!(updated[1]["errors"][0]["statusCode"], "MISSING_ARGUMENT");
    assert_eq!(org.s.record("Contact", &one).unwrap()["Email"], "one@example.com");

    let upserted = collection(
        &org,
        Method::PATCH,
        "/composite/sobjects/Contact/Syncflow_Id__c",
        Some(json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Contact"}, "Syncflow_Id__c": "cus_a", "LastName": "A"},
            {"attributes": {"type": "Contact"}, "Syncflow_Id__c": "cus_b", "LastName": "B"},
            {"attributes": {"type": "Contact"}, "Syncflow_Id__c": "cus_c", "LastName": "C"},
            {"attributes": {"type": "Contact"}, "Syncflow_Id__c": "cus_c", "LastName": "C again"},
        ]})),
    )
    .await;
    assert_eq!(upserted[0]["created"], true);
    assert_eq!(upserted[1]["created"], true);
    assert_eq!(
        upserted[2]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID",
        "the same external id twice in one request"
    );
    assert_eq!(upserted[3]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID");
    let again = collection(
        &org,
        Method::PATCH,
        "/composite/sobjects/Contact/Syncflow_Id__c",
        Some(json!({"records": [{"attributes": {"type": "Contact"}, "Syncflow_Id__c": "cus_a", "Title": "Dr"}]})),
    )
    .await;
    assert_eq!(again[0], json!({"id": upserted[0]["id"], "success": true, "errors": [], "created": false}));

    let a = upserted[0]["id"].as_str().unwrap();
    let deleted =
        collection(&org, Method::DELETE, &format!("/composite/sobjects?ids={a},{three},{one}&allOrNone=false"), None)
            .await;
    assert!(deleted.iter().all(|r| r["success"] == true), "{deleted:?}");
    assert_eq!(
        deleted.iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(),
        vec![a, three.as_str(), one.as_str()]
    );
    let twice = collection(&org, Method::DELETE, &format!("/composite/sobjects?ids={a}"), None).await;
    assert_eq!(twice[0]["errors"][0]["statusCode"], "ENTITY_IS_DELETED");
    assert_eq!(org.s.stats().records, 1, "cus_b is left");
    assert_eq!(org.s.stats().collection_calls, 6);
}

#[tokio::test]
async fn a2_collections_all_or_none_rolls_back_the_valid_items() {
    let org = Org::start(SalesforceOptions::default()).await;
    let kept = org.s.ui_create("Contact", json!({"LastName": "Kept"}));
    let results = collection(
        &org,
        Method::PATCH,
        "/composite/sobjects",
        Some(json!({"allOrNone": true, "records": [
            {"attributes": {"type": "Contact"}, "Id": kept, "LastName": "Changed"},
            {"attributes": {"type": "Contact"}, "Id": kept, "Bogus": 1},
        ]})),
    )
    .await;
    assert_eq!(results[0]["success"], false);
    assert_eq!(results[0]["errors"][0]["statusCode"], "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(results[1]["errors"][0]["statusCode"], "INVALID_FIELD");
    assert_eq!(org.s.record("Contact", &kept).unwrap()["LastName"], "Kept", "the valid update was rolled back");

    let results = collection(
        &org,
        Method::POST,
        "/composite/sobjects",
        Some(json!({"allOrNone": true, "records": [
            {"attributes": {"type": "Contact"}, "LastName": "New"},
            {"attributes": {"type": "Contact"}},
        ]})),
    )
    .await;
    assert_eq!(results[0]["errors"][0]["statusCode"], "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(org.s.stats().records, 1, "nothing was created");
}

#[tokio::test]
async fn a2_collections_refuse_more_than_200_records() {
    let org = Org::start(SalesforceOptions::default()).await;
    let records: Vec<Value> =
        (0..201).map(|i| json!({"attributes": {"type": "Contact"}, "LastName": format!("n{i}")})).collect();
    let (status, body) = org.send(Method::POST, "/composite/sobjects", Some(json!({"records": records}))).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "EXCEEDED_ID_LIMIT");
    assert_eq!(org.s.stats().records, 0);
    let ok = collection(&org, Method::POST, "/composite/sobjects", Some(json!({"records": &records[..200]}))).await;
    assert_eq!(ok.len(), 200);
    assert_eq!(org.s.stats().records, 200);
}

async fn drain(org: &Org, first: Value) -> (Vec<Value>, Vec<usize>) {
    let mut page = first;
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let records = page["records"].as_array().unwrap();
        sizes.push(records.len());
        rows.extend(records.iter().cloned());
        if page["done"] == true {
            assert!(page.get("nextRecordsUrl").is_none());
            return (rows, sizes);
        }
        let next = page["nextRecordsUrl"].as_str().unwrap();
        assert!(next.starts_with("/services/data/v66.0/query/"), "{next}");
        let r = org.c.get(format!("{}{next}", org.s.url())).bearer_auth(&org.token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        page = r.json().await.unwrap();
    }
}

#[tokio::test]
async fn a4_query_pages_through_next_records_url_in_batches() {
    let org = Org::start(SalesforceOptions { query_batch_size: 10, ..Default::default() }).await;
    for i in 0..25 {
        org.s.ui_create("Contact", json!({"LastName": format!("n{i:02}")}));
    }
    let (status, first) = org.query("SELECT Id, LastName FROM Contact ORDER BY LastName").await;
    assert_eq!(status, 200);
    assert_eq!(first["totalSize"], 25);
    assert_eq!(first["done"], false);
    assert_eq!(first["records"][0]["attributes"]["type"], "Contact");
    assert!(first["records"][0].get("Email").is_none(), "only the selected fields");
    let calls = org.s.stats().api_calls;
    let (rows, sizes) = drain(&org, first).await;
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(org.s.stats().api_calls - calls, 2, "each page is an API call");
    let names: Vec<&str> = rows.iter().map(|r| r["LastName"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 25);

    // Sforce-Query-Options: batchSize= lowers the default 2000, within 200..2000.
    let org = Org::start(SalesforceOptions::default()).await;
    let records: Vec<Value> =
        (0..200).map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("a{i}")})).collect();
    collection(&org, Method::POST, "/composite/sobjects", Some(json!({"records": records.clone()}))).await;
    collection(&org, Method::POST, "/composite/sobjects", Some(json!({"records": records[..50]}))).await;
    let r = org
        .c
        .get(org.url(&format!("/queryAll?q={}", urlencode("SELECT Id FROM Account"))))
        .bearer_auth(&org.token)
        .header("Sforce-Query-Options", "batchSize=200")
        .send()
        .await
        .unwrap();
    let first: Value = r.json().await.unwrap();
    let (rows, sizes) = drain(&org, first).await;
    assert_eq!(sizes, vec![200, 50]);
    assert_eq!(rows.len(), 250);
    let (_, whole) = org.query("SELECT Id FROM Account").await;
    assert_eq!((whole["done"].as_bool(), whole["records"].as_array().unwrap().len()), (Some(true), 250));
    let (status, body) = org.get("/query/01gHs0000000000AAA-10").await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_QUERY_LOCATOR")));
}

#[tokio::test]
async fn a4_query_excludes_deleted_rows_and_query_all_includes_them() {
    let org = Org::start(SalesforceOptions::default()).await;
    let live = org.s.ui_create("Contact", json!({"LastName": "Live"}));
    let gone = org.s.ui_create("Contact", json!({"LastName": "Gone"}));
    org.s.ui_delete("Contact", &gone);
    let (_, q) = org.query("SELECT Id, IsDeleted FROM Contact").await;
    assert_eq!(
        q["records"].as_array().unwrap().iter().map(|r| r["Id"].as_str().unwrap()).collect::<Vec<_>>(),
        vec![live.as_str()]
    );
    let (_, all) =
        org.get(&format!("/queryAll?q={}", urlencode("SELECT Id, IsDeleted FROM Contact ORDER BY Id"))).await;
    assert_eq!(all["totalSize"], 2);
    assert_eq!(all["records"][1]["Id"], gone.as_str());
    assert_eq!(all["records"][1]["IsDeleted"], true);
    // A delete moves SystemModstamp, so a queryAll poll on it sees the delete.
    let (before, after) = (org.s.record("Contact", &live).unwrap(), {
        org.s.advance_clock(Duration::from_secs(2));
        org.s.ui_delete("Contact", &live);
        org.s.record("Contact", &live).unwrap()
    });
    assert!(
        parse_time(after["SystemModstamp"].as_str().unwrap()) > parse_time(before["SystemModstamp"].as_str().unwrap())
    );
    let r = org.c.post(format!("{}/_sandbox/ui/Contact/{live}/undelete", org.s.url())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(org.s.record("Contact", &live).unwrap()["IsDeleted"], false, "restored from the recycle bin");
    let (_, deleted_only) =
        org.get(&format!("/queryAll?q={}", urlencode("SELECT Id FROM Contact WHERE IsDeleted = true"))).await;
    assert_eq!(deleted_only["totalSize"], 1);
}

#[tokio::test]
async fn a4_soql_filters_on_system_modstamp_ignoring_milliseconds() {
    let org = Org::start(SalesforceOptions::default()).await;
    let a = org.s.ui_create("Contact", json!({"LastName": "A", "Email": "a@example.com"}));
    org.s.advance_clock(Duration::from_secs(5));
    let b = org.s.ui_create("Contact", json!({"LastName": "B", "Email": "b@example.com"}));
    org.s.advance_clock(Duration::from_secs(5));
    let c = org.s.ui_create("Contact", json!({"LastName": "C"}));
    let stamp = |id: &str| org.s.record("Contact", id).unwrap()["SystemModstamp"].as_str().unwrap().to_string();
    let b_time = parse_time(&stamp(&b)).unwrap();
    let ids = |page: &Value| {
        page["records"].as_array().unwrap().iter().map(|r| r["Id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };

    // `.999` on the literal is ignored: `> B.999` is `> B`, `>= B.999` is `>= B`.
    let with_ms = b_time.format("%Y-%m-%dT%H:%M:%S.999Z").to_string();
    let (status, page) = org
        .query(&format!("SELECT Id FROM Contact WHERE SystemModstamp > {with_ms} ORDER BY SystemModstamp, Id"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec![c.clone()]);
    let (_, page) =
        org.query(&format!("SELECT Id FROM Contact WHERE SystemModstamp >= {with_ms} ORDER BY SystemModstamp")).await;
    assert_eq!(ids(&page), vec![b.clone(), c.clone()]);
    // The record's own `.000+0000` form works as a literal, with AND, <=, DESC and LIMIT.
    let sf_form = stamp(&b);
    let (_, page) = org.query(&format!("SELECT Id FROM Contact WHERE SystemModstamp <= {sf_form} AND LastName != 'zzz' ORDER BY SystemModstamp DESC LIMIT 1")).await;
    assert_eq!(ids(&page), vec![b.clone()]);
    let (_, page) =
        org.query(&format!("select Id from Contact where Id IN ('{a}', '{}') order by LastName desc", &c[..15])).await;
    assert_eq!(ids(&page), vec![c.clone(), a.clone()], "IN, lower-case keywords, 15-char ids");
    let (_, page) = org.query("SELECT Id, Email FROM Contact WHERE Email = null").await;
    assert_eq!(ids(&page), vec![c.clone()]);
    let (_, page) = org.query("SELECT Id FROM Contact WHERE Email = 'A@EXAMPLE.COM' OR LastName = 'C'").await;
    assert_eq!(ids(&page), vec![a.clone(), c.clone()]);
    // A quoted datetime is refused, as Salesforce does.
    let (status, body) = org.query(&format!("SELECT Id FROM Contact WHERE SystemModstamp > '{sf_form}'")).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
}

#[tokio::test]
async fn a4_unparseable_soql_is_malformed_query() {
    let org = Org::start(SalesforceOptions::default()).await;
    for q in [
        "SELEC Id FROM Contact",
        "SELECT Id FROM Contact WHERE",
        "SELECT Id FROM Contact LIMIT x",
        "SELECT Id Contact",
        "SELECT Id FROM Contact WHERE LastName = 'x",
    ] {
        let (status, body) = org.query(q).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY", "{q}: {body}");
    }
    let (status, body) = org.query("SELECT Nope FROM Contact").await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_FIELD")));
    let (status, body) = org.query("SELECT Id FROM Lead").await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_TYPE")));
}

#[tokio::test]
async fn a4_updated_and_deleted_resources_truncate_seconds_and_report_coverage() {
    let org = Org::start(SalesforceOptions::default()).await;
    let kept = org.s.ui_create("Contact", json!({"LastName": "Kept"}));
    let gone = org.s.ui_create("Contact", json!({"LastName": "Gone"}));
    let created = parse_time(org.s.record("Contact", &kept).unwrap()["CreatedDate"].as_str().unwrap()).unwrap();
    org.s.ui_delete("Contact", &gone);
    org.s.advance_clock(Duration::from_secs(180));
    // A start at hh:mm:59 is truncated to hh:mm:00, so a record changed at hh:mm:ss counts.
    let start = created.format("%Y-%m-%dT%H:%M:59Z").to_string();
    let end = (created + chrono::Duration::minutes(2)).format("%Y-%m-%dT%H:%M:30+00:00").to_string();
    let (status, updated) =
        org.get(&format!("/sobjects/Contact/updated/?start={}&end={}", urlencode(&start), urlencode(&end))).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["ids"], json!([kept]));
    let covered = updated["latestDateCovered"].as_str().unwrap();
    assert!(is_sf_time(&json!(covered)));
    assert!(covered.ends_with(":00.000+0000"), "seconds truncated: {covered}");
    let (status, deleted) =
        org.get(&format!("/sobjects/Contact/deleted/?start={}&end={}", urlencode(&start), urlencode(&end))).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["deletedRecords"][0]["id"], gone.as_str());
    assert!(is_sf_time(&deleted["deletedRecords"][0]["deletedDate"]));
    let earliest = parse_time(deleted["earliestDateAvailable"].as_str().unwrap()).unwrap();
    assert!(earliest <= created);

    // After a purge of the recycle bin the log starts later than our window.
    org.s.purge_deleted();
    let (_, deleted) =
        org.get(&format!("/sobjects/Contact/deleted/?start={}&end={}", urlencode(&start), urlencode(&end))).await;
    assert_eq!(deleted["deletedRecords"], json!([]));
    assert!(parse_time(deleted["earliestDateAvailable"].as_str().unwrap()).unwrap() > parse_time(&start).unwrap());
    let (status, body) =
        org.get(&format!("/sobjects/Contact/updated/?start={}&end={}", urlencode(&end), urlencode(&start))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_REPLICATION_DATE")));
}

#[tokio::test]
async fn faults_unable_to_lock_row_fails_writes_and_collection_items() {
    let org = Org::start(SalesforceOptions { lock_row_rate: 1.0, ..Default::default() }).await;
    let (status, body) = org.send(Method::POST, "/sobjects/Contact/", Some(json!({"LastName": "X"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "UNABLE_TO_LOCK_ROW");
    let (status, _) =
        org.send(Method::PATCH, "/sobjects/Contact/Syncflow_Id__c/x", Some(json!({"LastName": "X"}))).await;
    assert_eq!(status, 400);
    let results = collection(
        &org,
        Method::POST,
        "/composite/sobjects",
        Some(json!({"records": [{"attributes": {"type": "Contact"}, "LastName": "A"}, {"attributes": {"type": "Contact"}, "LastName": "B"}]})),
    )
    .await;
    assert!(results.iter().all(|r| r["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"));
    assert_eq!(org.s.stats().records, 0);
    assert_eq!(org.s.stats().lock_row_errors, 4);
    org.s.set_lock_row_rate(0.0);
    let (status, _) = org.send(Method::POST, "/sobjects/Contact/", Some(json!({"LastName": "X"}))).await;
    assert_eq!(status, 201, "a retry succeeds once the row is free");
}

#[tokio::test]
async fn faults_latency_delays_every_api_response() {
    let org = Org::start(SalesforceOptions::default()).await;
    org.s.set_latency(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(org.get("/limits").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn admin_http_api_makes_ui_edits_and_sets_knobs() {
    let org = Org::start(SalesforceOptions::default()).await;
    let base = org.s.url();
    let r = org.c.post(format!("{base}/_sandbox/ui/Contact")).json(&json!({"LastName": "Curl"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let r = org
        .c
        .patch(format!("{base}/_sandbox/ui/Contact/{id}"))
        .json(&json!({"Email": "curl@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let rec = org.s.record("Contact", &id).unwrap();
    assert_eq!(
        (rec["Email"].as_str(), rec["LastModifiedById"].as_str()),
        (Some("curl@example.com"), Some(org.s.ui_user_id().as_str()))
    );
    let r = org.c.post(format!("{base}/_sandbox/ui/Contact")).json(&json!({"FirstName": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400, "UI edits are validated too");
    assert_eq!(org.s.stats().api_calls, 0, "admin calls are not API calls");
    let r = org.c.delete(format!("{base}/_sandbox/ui/Contact/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(org.s.stats().records, 0);

    let r = org
        .c
        .post(format!("{base}/_sandbox/knobs"))
        .json(&json!({"api_used": 99_990, "expire_tokens": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["api_used"], 99_990);
    assert_eq!(org.get("/limits").await.0, 401, "tokens expired by the knob");
    let r = org.c.post(format!("{base}/_sandbox/knobs")).json(&json!({"no_such_knob": 1})).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a5_writes_record_the_change_origin_from_sforce_call_options() {
    let org = Org::start(SalesforceOptions::default()).await;
    let r = org
        .c
        .patch(org.url("/sobjects/Contact/Syncflow_Id__c/cus_1"))
        .bearer_auth(&org.token)
        .header("Sforce-Call-Options", "client=syncflow-hub")
        .json(&json!({"LastName": "Origin"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(org.s.change_origin(&id).as_deref(), Some("com/salesforce/api/rest/66.0;client=syncflow-hub"));
    org.send(Method::PATCH, &format!("/sobjects/Contact/{id}"), Some(json!({"Title": "x"}))).await;
    assert_eq!(org.s.change_origin(&id).as_deref(), Some("com/salesforce/api/rest/66.0"), "no header, no client");
    org.s.ui_update("Contact", &id, json!({"Title": "y"}));
    assert_eq!(org.s.change_origin(&id).as_deref(), Some(""), "UI edits carry no API origin");
}

/// The acceptance bench's shape: a 20,000-change backlog pushed as upsert Collections of
/// 200 takes 100 API calls, creates no twins when replayed, and loses nothing.
#[tokio::test]
async fn a2_a_backlog_of_20000_upserts_takes_100_collection_calls() {
    let org = Org::start(SalesforceOptions::default()).await;
    let started = Instant::now();
    for round in 0..2 {
        for chunk in 0..100 {
            let records: Vec<Value> = (0..200)
                .map(|i| {
                    let n = chunk * 200 + i;
                    json!({"attributes": {"type": "Contact"}, "Syncflow_Id__c": format!("cus_{n}"), "LastName": format!("n{n}"), "Round__c": round})
                })
                .collect();
            let results = collection(
                &org,
                Method::PATCH,
                "/composite/sobjects/Contact/Syncflow_Id__c",
                Some(json!({"records": records})),
            )
            .await;
            assert!(results.iter().all(|r| r["success"] == true && r["created"] == (round == 0)));
        }
    }
    let stats = org.s.stats();
    assert_eq!((stats.api_calls, stats.collection_calls, stats.records), (200, 200, 20_000));
    let (_, first) = org.query("SELECT Id FROM Contact WHERE Round__c = 1").await;
    assert_eq!(first["totalSize"], 20_000);
    eprintln!("40,000 upserts in 200 collection calls: {:?}", started.elapsed());
}

#[tokio::test]
async fn a2_another_external_id_field_can_be_declared_for_upserts() {
    let org = Org::start(SalesforceOptions::default()).await;
    let before = org.s.ui_create("Account", json!({"Name": "Old", "Hub_Key__c": "k1"}));
    org.s.add_external_id_field("Account", "hub_key__c");
    let (status, body) = org.send(Method::PATCH, "/sobjects/Account/Hub_Key__c/K1", Some(json!({"Phone": "1"}))).await;
    assert_eq!(status, 200, "an existing record is found by the new external id (case-insensitive)");
    assert_eq!(body["id"], before.as_str());
    let results = collection(
        &org,
        Method::PATCH,
        "/composite/sobjects/Account/Hub_Key__c",
        Some(json!({"records": [{"attributes": {"type": "Account"}, "Hub_Key__c": "k2", "Name": "New"}]})),
    )
    .await;
    assert_eq!(results[0]["created"], true);
    let (status, body) =
        org.send(Method::POST, "/sobjects/Account/", Some(json!({"Name": "Twin", "Hub_Key__c": "k2"}))).await;
    assert_eq!((status, body[0]["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("DUPLICATE_VALUE")));
    let (status, _) = org.send(Method::PATCH, "/sobjects/Contact/Hub_Key__c/k1", Some(json!({"LastName": "X"}))).await;
    assert_eq!(status, 404, "declared for Account only");
}

#[tokio::test]
async fn a4_paging_by_id_visits_every_record_once() {
    // Ids compare case-sensitively, so `WHERE Id > last ORDER BY Id LIMIT n` walks all rows.
    let org = Org::start(SalesforceOptions::default()).await;
    let mut created: Vec<String> =
        (0..130).map(|i| org.s.ui_create("Contact", json!({"LastName": format!("n{i}")}))).collect();
    created.sort();
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let filter = last.as_ref().map(|id| format!(" WHERE Id > '{id}'")).unwrap_or_default();
        let (status, page) = org.query(&format!("SELECT Id FROM Contact{filter} ORDER BY Id LIMIT 25")).await;
        assert_eq!(status, 200);
        let ids: Vec<String> =
            page["records"].as_array().unwrap().iter().map(|r| r["Id"].as_str().unwrap().to_string()).collect();
        if ids.is_empty() {
            break;
        }
        last = ids.last().cloned();
        seen.extend(ids);
    }
    assert_eq!(seen, created);
}
