//! The dashboard's HTTP contract, driven with `oneshot` on both backends: pages and
//! assets served, figures read from the store (activity, state badges, dead
//! letters, inbox), sessions when tokens are configured, and cross-site POSTs
//! refused. The browser-level scenarios are in crates/syncflow/tests/dashboard.rs.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::json;
use syncflow_core::sync::{MergePolicy, NewConflict};
use syncflow_core::CUSTOMER;
use syncflow_engine::SystemConfig;
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryStatus, Finish, InwardOp, InwardWrite, NewInboxEvent, Route};
use tower::ServiceExt;

const TOKEN: &str = "dashboard-admin";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "127.0.0.1:8080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => {
            req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(b.to_string()))
        }
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn crm() -> SystemConfig {
    SystemConfig::from_table(toml::from_str("name = \"crm\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"").unwrap())
        .unwrap()
}

fn finish(status: DeliveryStatus, http: u16, remarks: &str) -> Finish {
    Finish {
        status,
        next_attempt_at: Some(0),
        http_status: Some(http),
        external_id: None,
        remarks: Some(remarks.into()),
        duration_ms: 5,
        link: None,
        callback_to: None,
    }
}

backend_tests!(
    pages_show_the_hubs_own_state,
    cross_site_posts_are_refused,
    with_tokens_every_page_needs_a_session,
    conflicts_show_both_values_and_resolve_in_one_click,
    the_system_page_shows_reconcile_runs_and_settles_holds
);

async fn pages_show_the_hubs_own_state(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![crm()]));
    let c = t.store.create(&CUSTOMER, json!({"name": "Dash"}).as_object().unwrap(), "api").await.unwrap();
    t.store.dispatch(&[Route { system: "crm".into(), entities: vec!["customer".into()] }], 100).await.unwrap();
    // One 429, then a rejection: the delivery is dead and the system failing.
    let claimed = t.store.claim("crm", "n1", 10, 60_000, &[]).await.unwrap();
    let mut d = claimed[0].delivery.clone();
    assert!(t.store.finish(&d, "n1", &finish(DeliveryStatus::Retrying, 429, "slow down")).await.unwrap());
    d = t.store.claim("crm", "n1", 10, 60_000, &[]).await.unwrap().remove(0).delivery;
    assert!(t.store.finish(&d, "n1", &finish(DeliveryStatus::Dead, 400, "email domain not allowed")).await.unwrap());
    let event = NewInboxEvent {
        system: "crm".into(),
        event_id: "evt_1".into(),
        event_type: "customer.updated".into(),
        entity: Some("customer".into()),
        external_id: Some("ext_1".into()),
        event_created: 1,
        source: "webhook".into(),
        payload: "{}".into(),
    };
    t.store.inbox_receive(&event, 60_000).await.unwrap();

    let r = send(&app, "GET", "/", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let row = r.body.split("data-system=\"crm\"").nth(1).expect("a row for crm");
    assert!(row.contains(r#"<span class="badge failing">failing</span>"#), "{row}");
    assert!(row.contains("status=dead\">1</a>"), "one dead letter, linked: {row}");
    assert!(row.contains("<svg class=\"spark\""), "a sparkline: {row}");
    assert!(row.contains("100.0%"), "two failed attempts of two: {row}");
    assert!(row.contains("<td class=\"num\">1</td>"), "one 429: {row}");
    assert!(row.contains("badge received"), "the last inward event: {row}");
    assert!(r.body.contains(&c.id), "the newest changes list the customer");
    assert!(r.body.contains(r#"data-entity="customers"><b>1</b>"#), "catalog count");

    let r = send(&app, "GET", "/ui/deliveries?system=crm&status=dead", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("email domain not allowed"));
    assert!(r.body.contains("Replay all 1 dead letters of crm"), "{}", r.body);
    let r = send(&app, "GET", &format!("/ui/deliveries/{}", d.id), &[], None).await;
    assert!(r.body.contains("slow down") && r.body.contains("email domain not allowed"), "attempt history");
    assert_eq!(send(&app, "GET", "/ui/deliveries/nope", &[], None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send(&app, "GET", "/ui/deliveries?status=lost", &[], None).await.status, StatusCode::NOT_FOUND);

    let r = send(&app, "GET", &format!("/ui/records?q={}", c.id), &[], None).await;
    assert!(r.body.contains("data-system=\"crm\"") && r.body.contains("email domain not allowed"), "{}", r.body);
    assert!(r.body.contains("retrying (429)"), "the record's attempt history: {}", r.body);
    let r = send(&app, "GET", "/ui/records?q=ext_nobody", &[], None).await;
    assert!(r.body.contains("No record matches"));

    let r = send(&app, "GET", "/ui/inbox?system=crm", &[], None).await;
    assert!(r.body.contains("evt_1") && r.body.contains("customer.updated"), "{}", r.body);

    // Replay of all dead letters from the page.
    let r = send(&app, "POST", "/ui/systems/crm/replay", &[], Some("back=%2Fui%2Fdeliveries%3Fsystem%3Dcrm")).await;
    assert_eq!(
        (r.status, r.headers[header::LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/ui/deliveries?system=crm")
    );
    assert_eq!(t.store.delivery(d.id).await.unwrap().unwrap().status, DeliveryStatus::Pending);
    // A `back` that leaves the site is ignored.
    let r = send(&app, "POST", "/ui/systems/crm/pause", &[], Some("back=%2F%2Fevil.example")).await;
    assert_eq!(r.headers[header::LOCATION], "/");
    assert_eq!(t.store.paused_systems().await.unwrap(), vec!["crm".to_string()]);
    assert!(send(&app, "GET", "/", &[], None).await.body.contains("badge paused"));
    assert_eq!(send(&app, "POST", "/ui/systems/nope/pause", &[], None).await.status, StatusCode::NOT_FOUND);

    let js = send(&app, "GET", "/ui/assets/htmx-2.0.11.min.js", &[], None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("htmx 2.0.11") && js.body.len() > 40_000);
    assert_eq!(send(&app, "GET", "/ui/assets/nope.js", &[], None).await.status, StatusCode::NOT_FOUND);
}

async fn cross_site_posts_are_refused(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![crm()]));
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[("origin", "http://evil.example")][..],
    ] {
        let r = send(&app, "POST", "/ui/systems/crm/pause", headers, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert!(t.store.paused_systems().await.unwrap().is_empty(), "nothing was paused");
    let same = [("sec-fetch-site", "same-origin"), ("origin", "http://127.0.0.1:8080")];
    assert_eq!(send(&app, "POST", "/ui/systems/crm/pause", &same, None).await.status, StatusCode::SEE_OTHER);
    assert_eq!(t.store.paused_systems().await.unwrap(), vec!["crm".to_string()]);
}

async fn with_tokens_every_page_needs_a_session(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::parse(TOKEN)).with_systems(vec![crm()]));
    let r = send(&app, "GET", "/ui/deliveries?system=crm", &[], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/ui/login?next=/ui/deliveries%3Fsystem%3Dcrm");
    assert_eq!(send(&app, "GET", "/ui/events", &[], None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&app, "POST", "/ui/systems/crm/pause", &[], None).await.status, StatusCode::UNAUTHORIZED);
    // A bearer token is not a session: the dashboard reads only its cookie.
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(send(&app, "GET", "/", &[("authorization", &bearer)], None).await.status, StatusCode::SEE_OTHER);
    assert_eq!(send(&app, "GET", "/ui/assets/dashboard.css", &[], None).await.status, StatusCode::OK);

    let r = send(&app, "POST", "/ui/login", &[], Some("token=wrong&next=%2F")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    let r = send(&app, "POST", "/ui/login", &[("sec-fetch-site", "cross-site")], Some(&format!("token={TOKEN}"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "login CSRF is refused too");

    let r = send(&app, "POST", "/ui/login", &[], Some(&format!("token={TOKEN}&next=%2Fui%2Finbox"))).await;
    assert_eq!((r.status, r.headers[header::LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/inbox"));
    let cookie = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "the cookie does not carry the token in clear: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();

    let r = send(&app, "GET", "/", &[("cookie", &session)], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains(TOKEN), "no secret is rendered");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let r = send(&app, "POST", "/ui/systems/crm/pause", &[("cookie", &session)], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = send(&app, "POST", "/ui/logout", &[("cookie", &session)], None).await;
    assert!(r.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
}

async fn conflicts_show_both_values_and_resolve_in_one_click(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![crm()]));
    let c = t
        .store
        .create(&CUSTOMER, json!({"name": "Ed", "email": "ed@hub.example"}).as_object().unwrap(), "api")
        .await
        .unwrap();
    let write = InwardWrite {
        system: "crm".into(),
        inbox: None,
        link: None,
        conflicts: vec![NewConflict {
            field: "email".into(),
            hub_value: json!("ed@hub.example"),
            external_value: json!("ed@crm.example"),
            policy: MergePolicy::Manual,
            winner: None,
        }],
        resync: false,
    };
    let patch = serde_json::Map::new();
    let op = InwardOp::Update { id: &c.id, patch: &patch, expected_version: None };
    t.store.apply_inward(&CUSTOMER, op, &write).await.unwrap();

    let r = send(&app, "GET", "/ui/conflicts", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let row = r.body.split("data-conflict=").nth(1).expect("the open conflict");
    assert!(row.contains("ed@hub.example") && row.contains("ed@crm.example") && row.contains(&c.id), "{row}");
    let id: String = row.trim_start_matches('"').chars().take_while(|c| c.is_ascii_digit()).collect();

    let r =
        send(&app, "POST", &format!("/ui/conflicts/{id}/resolve"), &[], Some("keep=external&back=%2Fui%2Fconflicts"))
            .await;
    assert_eq!((r.status, r.headers[header::LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/conflicts"));
    let now = t.store.get(&CUSTOMER, &c.id).await.unwrap().unwrap();
    assert_eq!(now.fields["email"], "ed@crm.example", "the system's value was written to the hub");
    assert!(send(&app, "GET", "/ui/conflicts", &[], None).await.body.contains("No conflicts."));
    assert!(send(&app, "GET", "/ui/conflicts?status=resolved", &[], None).await.body.contains("external kept"));
    // Resolving twice is refused, as in the API.
    let again = send(&app, "POST", &format!("/ui/conflicts/{id}/resolve"), &[], Some("keep=hub")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
}

async fn the_system_page_shows_reconcile_runs_and_settles_holds(t: TestStore) {
    let app = router(AppState::new(t.store.clone(), ApiTokens::default()).with_systems(vec![crm()]));
    let run = t.store.reconcile_start("crm", "customer", "cli", true).await.unwrap();
    let end = syncflow_store::RunEnd {
        status: "completed",
        counts: json!({"checked": 7, "missing_remote": 1, "field_drift": 2, "repaired": 3}),
        samples: json!([{"class": "field_drift", "external_id": "ext_9", "record_id": "cust_9", "fields": ["email"],
            "repair": "re-pushed the hub's state"}]),
        api_calls: Some(12),
        error: None,
        duration_ms: 1500,
    };
    t.store.reconcile_finish(run, &end).await.unwrap();
    let mut holds = Vec::new();
    for i in 0..2 {
        let event = NewInboxEvent {
            system: "crm".into(),
            event_id: format!("evt_del_{i}"),
            event_type: "customer.deleted".into(),
            entity: Some("customer".into()),
            external_id: Some(format!("ext_{i}")),
            event_created: 1,
            source: "poll".into(),
            payload: "{}".into(),
        };
        let (row, _) = t.store.inbox_receive(&event, 60_000).await.unwrap();
        let reason = "60 deletions within 300s exceed the breaker";
        holds.push(
            t.store
                .hold_delete("crm", "customer", &format!("cust_{i}"), &format!("ext_{i}"), row.id, reason)
                .await
                .unwrap(),
        );
    }

    let r = send(&app, "GET", "/ui/systems/crm", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("id=\"flagged\"") && r.body.contains("holds 2 deletion(s)"), "{}", r.body);
    let row = r.body.split(&format!("data-run=\"{run}\"")).nth(1).expect("a row for the run");
    assert!(
        row.contains(r#"data-class="field_drift">2<"#) && row.contains(r#"data-class="missing_remote">1<"#),
        "{row}"
    );
    assert!(row.contains(">12<") && row.contains("1.5s"), "API calls and duration: {row}");
    assert!(row.contains(&format!("href=\"/v1/reconcile/runs/{run}\"")), "the run's JSON is linked: {row}");
    for h in &holds {
        let row = r.body.split(&format!("data-hold=\"{h}\"")).nth(1).expect("a row per hold");
        assert!(row.contains("badge inward") && row.contains("exceed the breaker"), "{row}");
        assert!(row.contains(&format!("action=\"/ui/holds/{h}/release\"")) && row.contains("/discard\""), "{row}");
    }
    let overview = send(&app, "GET", "/", &[], None).await;
    assert!(overview.body.contains("2 held"), "the overview flags the system");

    let r = send(&app, "GET", &format!("/ui/reconcile/runs/{run}"), &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let sample = r.body.split("data-class=\"field_drift\"").last().unwrap();
    assert!(sample.contains("ext_9") && sample.contains("email") && sample.contains("re-pushed the hub"), "{}", r.body);
    assert_eq!(send(&app, "GET", "/ui/reconcile/runs/999", &[], None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send(&app, "GET", "/ui/systems/nope", &[], None).await.status, StatusCode::NOT_FOUND);

    // Settled from the page (cross-site refused), through the API's handler.
    let discard = format!("/ui/holds/{}/discard", holds[0]);
    let r = send(&app, "POST", &discard, &[("sec-fetch-site", "cross-site")], Some("back=%2Fui%2Fsystems%2Fcrm")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(t.store.hold(holds[0]).await.unwrap().unwrap().status, "held");
    let r = send(&app, "POST", &discard, &[], Some("back=%2Fui%2Fsystems%2Fcrm")).await;
    assert_eq!((r.status, r.headers[header::LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/systems/crm"));
    assert_eq!(t.store.hold(holds[0]).await.unwrap().unwrap().status, "discarded");
    let r =
        send(&app, "POST", &format!("/ui/holds/{}/release", holds[1]), &[], Some("back=%2Fui%2Fsystems%2Fcrm")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(t.store.hold(holds[1]).await.unwrap().unwrap().status, "released");
    assert_eq!(send(&app, "POST", &discard, &[], Some("")).await.status, StatusCode::CONFLICT, "settled already");
    let r = send(&app, "GET", "/ui/systems/crm", &[], None).await;
    assert!(r.body.contains("No deletions are held.") && !r.body.contains("id=\"flagged\""), "{}", r.body);
}
