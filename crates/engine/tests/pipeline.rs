//! The two-way pipeline's hard cases, driven step by step against the in-repo Stripe
//! sandbox (real HTTP) on SQLite and PostgreSQL: the store's claim and finish, the
//! connector's push and the engine's inward pipeline are called in a chosen order,
//! so each interleaving is exact rather than left to timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use syncflow_connectors::stripe::inward::parse_event;
use syncflow_connectors::{Connector, Outcome, PushRequest};
use syncflow_core::sync::{InboxOutcome, SyncSnapshot};
use syncflow_core::CUSTOMER;
use syncflow_engine::{Engine, Pipeline, SystemConfig};
use syncflow_sandbox::{Receiver, Reply, StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{
    backend_tests, Claimed, ConflictFilter, DeliveryFilter, DeliveryStatus, Finish, InboxEvent, Route, Store,
};

const KEY: &str = "sk_test_pipeline";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A store, a Stripe sandbox and a `stripe` system's connector and pipeline —
/// no engine loops: each test moves the pieces itself.
struct Rig {
    store: Store,
    sandbox: StripeSandbox,
    connector: Arc<dyn Connector>,
    pipeline: Arc<Pipeline>,
    http: reqwest::Client,
}

impl Rig {
    async fn new(store: &Store, options: StripeOptions, extra: &str) -> Rig {
        let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let text = format!(
            "name = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{KEY}\"\napi_rate_limit = 1000\n\
             backoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n{extra}",
            sandbox.url()
        );
        let config = SystemConfig::from_table(toml::from_str(&text).unwrap()).unwrap();
        let engine = Engine::new(store.clone(), vec![config]).unwrap();
        let connector = engine.connectors().remove("stripe").unwrap();
        let pipeline = engine.pipelines().remove("stripe").unwrap();
        Rig { store: store.clone(), sandbox, connector, pipeline, http: reqwest::Client::new() }
    }

    async fn dispatch(&self) {
        let routes = [Route { system: "stripe".into(), entities: vec!["customer".into()] }];
        self.store.dispatch(&routes, 100).await.unwrap();
    }

    async fn claim(&self, owner: &str, lease_ms: i64) -> Vec<Claimed> {
        self.store.claim("stripe", owner, 10, lease_ms, &[]).await.unwrap()
    }

    async fn push(&self, c: &Claimed) -> Outcome {
        let link = self.store.link(&c.delivery.entity, &c.delivery.record_id, "stripe").await.unwrap();
        let req = PushRequest {
            delivery_id: c.delivery.id,
            attempt: c.delivery.attempts,
            change: &c.change,
            link: link.as_ref(),
        };
        self.connector.push(req).await
    }

    async fn finish(&self, c: &Claimed, owner: &str, outcome: Outcome) -> bool {
        let Outcome::Delivered { http_status, external_id, link } = outcome else { panic!("{outcome:?}") };
        let f = Finish {
            status: DeliveryStatus::Delivered,
            next_attempt_at: None,
            http_status,
            external_id,
            remarks: None,
            duration_ms: 1,
            link,
            callback_to: None,
        };
        self.store.finish(&c.delivery, owner, &f).await.unwrap()
    }

    /// Dispatches, claims, pushes and finishes everything queued, in order.
    async fn deliver_all(&self) {
        self.dispatch().await;
        loop {
            let claimed = self.claim("n1", 60_000).await;
            if claimed.is_empty() {
                return;
            }
            for c in claimed {
                let outcome = self.push(&c).await;
                assert!(self.finish(&c, "n1", outcome).await);
            }
        }
    }

    /// The sandbox's events, oldest first.
    async fn events(&self) -> Vec<Value> {
        let url = format!("{}/v1/events?limit=100", self.sandbox.url());
        let page: Value = self.http.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
        let mut events = page["data"].as_array().unwrap().clone();
        events.reverse();
        events
    }

    /// Hands one raw event to the pipeline, as a webhook would.
    async fn receive(&self, event: &Value) -> InboxEvent {
        let parsed = parse_event(event).unwrap();
        self.pipeline.receive(&parsed, event.to_string(), "webhook").await.unwrap().0
    }

    async fn stripe_post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let url = format!("{}{path}", self.sandbox.url());
        self.http.post(url).bearer_auth(KEY).form(form).send().await.unwrap().json().await.unwrap()
    }

    async fn stripe_get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.sandbox.url());
        self.http.get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
    }

    async fn hub_name(&self, id: &str) -> Value {
        self.store.get(&CUSTOMER, id).await.unwrap().unwrap().fields["name"].clone()
    }

    async fn external_id(&self, id: &str) -> String {
        self.store.link("customer", id, "stripe").await.unwrap().unwrap().external_id
    }
}

backend_tests!(
    an_echo_that_beats_its_push_outcome_does_not_undo_a_newer_hub_edit,
    a_late_push_outcome_never_overwrites_a_newer_inward_snapshot,
    genuine_edits_apply_when_the_hub_clock_runs_ahead,
    an_attempted_create_is_never_coalesced_into_a_second_object,
    a_stale_workers_late_outcome_is_dropped_and_renewed_leases_hold,
    an_event_that_cannot_apply_yet_is_retried_then_dead_and_the_poll_cursor_waits,
    same_field_conflicts_are_rows_decided_by_the_policy,
    a_manual_conflict_holds_the_field_until_resolved,
    a_delivery_goes_dead_after_max_attempts,
);

/// Hub pushes v2; the hub moves to v3; Stripe's webhook for v2 arrives; then v2's
/// outcome is recorded. The webhook is our own write (v2 is still in flight), so
/// the hub keeps v3 and Stripe ends on v3's values too.
async fn an_echo_that_beats_its_push_outcome_does_not_undo_a_newer_hub_edit(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "A"})), "api").await.unwrap();
    rig.deliver_all().await;
    let cus = rig.external_id(&rec.id).await;

    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "B"})), None, "api").await.unwrap();
    rig.dispatch().await;
    let v2 = rig.claim("n1", 60_000).await;
    assert_eq!(v2.len(), 1);
    let v2_outcome = rig.push(&v2[0]).await; // Stripe now holds B; its event is on its way
    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "C"})), None, "api").await.unwrap();
    let echo = rig.events().await.into_iter().rev().find(|e| e["data"]["object"]["name"] == "B").unwrap();
    let row = rig.receive(&echo).await;
    assert_eq!(row.outcome, InboxOutcome::Echo, "{row:?}");
    assert_eq!(rig.hub_name(&rec.id).await, "C", "the newer hub edit survives");

    assert!(rig.finish(&v2[0], "n1", v2_outcome).await);
    rig.deliver_all().await;
    assert_eq!(rig.stripe_get(&format!("/v1/customers/{cus}")).await["name"], "C", "Stripe ends on v3");
    assert_eq!(rig.hub_name(&rec.id).await, "C");
}

/// A push's outcome recorded after an inward apply wrote a newer link must not
/// put the older snapshot back (the link is fenced by its synced version).
async fn a_late_push_outcome_never_overwrites_a_newer_inward_snapshot(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "Al"})), "api").await.unwrap();
    rig.deliver_all().await;
    let cus = rig.external_id(&rec.id).await;

    s.update(&CUSTOMER, &rec.id, &obj(json!({"email": "al@example.com"})), None, "api").await.unwrap();
    rig.dispatch().await;
    let v2 = rig.claim("n1", 60_000).await;
    let v2_outcome = rig.push(&v2[0]).await;
    // A genuine edit in Stripe after our push, applied before the push's outcome lands.
    rig.stripe_post(&format!("/v1/customers/{cus}"), &[("name", "Al Stripe")]).await;
    let edit = rig.events().await.pop().unwrap();
    assert_eq!(rig.receive(&edit).await.outcome, InboxOutcome::Applied);
    let applied = s.link("customer", &rec.id, "stripe").await.unwrap().unwrap();
    assert_eq!(applied.synced_version, Some(3));

    assert!(rig.finish(&v2[0], "n1", v2_outcome).await, "the delivery itself is recorded");
    let link = s.link("customer", &rec.id, "stripe").await.unwrap().unwrap();
    assert_eq!(link.synced_version, Some(3), "never moved backwards");
    let snap = SyncSnapshot::parse(link.snapshot.as_deref());
    assert_eq!(snap.external.unwrap()["name"], "Al Stripe", "the newer snapshot stays");
    assert_eq!(link.fingerprint, applied.fingerprint);
}

/// Stripe's clock 5 s behind the hub's: a field our push wrote has no Stripe time
/// we could compare, so an edit touching it is re-fetched and applied, not judged
/// stale against a time from our own clock.
async fn genuine_edits_apply_when_the_hub_clock_runs_ahead(t: TestStore) {
    let options = StripeOptions { clock_offset: -5, ..StripeOptions::default() };
    let rig = Rig::new(&t.store, options, "").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "Bea"})), "api").await.unwrap();
    rig.deliver_all().await;
    let cus = rig.external_id(&rec.id).await;
    rig.stripe_post(&format!("/v1/customers/{cus}"), &[("name", "Bea Stripe")]).await;
    let edit = rig.events().await.pop().unwrap();
    let row = rig.receive(&edit).await;
    assert_eq!(row.outcome, InboxOutcome::Applied, "{row:?}");
    assert_eq!(rig.hub_name(&rec.id).await, "Bea Stripe");
}

/// A create whose push was attempted (its outcome lost in a crash) and a newer
/// change queued behind it: the retry repeats the same create (same idempotency
/// key) instead of coalescing into the newer change under a new key.
async fn an_attempted_create_is_never_coalesced_into_a_second_object(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "Cy"})), "api").await.unwrap();
    rig.dispatch().await;
    let first = rig.claim("n1", -1).await; // its lease is over at once: the node "died"
    let _ = rig.push(&first[0]).await; // the create reached Stripe; its outcome is lost
    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "Cy 2"})), None, "api").await.unwrap();
    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "Cy 3"})), None, "api").await.unwrap();
    rig.dispatch().await;
    let retry = rig.claim("n2", 60_000).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].delivery.id, first[0].delivery.id, "the attempted create goes first, as it was");
    assert!(retry[0].superseded.is_empty());
    let outcome = rig.push(&retry[0]).await;
    assert!(rig.finish(&retry[0], "n2", outcome).await);
    rig.deliver_all().await;
    assert_eq!(rig.sandbox.stats().customers, 1, "one Stripe customer");
    let cus = rig.external_id(&rec.id).await;
    assert_eq!(rig.stripe_get(&format!("/v1/customers/{cus}")).await["name"], "Cy 3");
}

/// `finish` is fenced by owner and attempt: a worker whose lease ran out and whose
/// delivery was claimed again cannot record its late outcome. A renewed lease keeps
/// other workers off a slow push.
async fn a_stale_workers_late_outcome_is_dropped_and_renewed_leases_hold(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "").await;
    let s = &t.store;
    s.create(&CUSTOMER, &obj(json!({"name": "Di"})), "api").await.unwrap();
    rig.dispatch().await;
    let stale = rig.claim("n1", -1).await; // already expired
    let again = rig.claim("n1", 60_000).await; // the same node, a new attempt
    assert_eq!(again[0].delivery.attempts, stale[0].delivery.attempts + 1);
    let outcome = rig.push(&stale[0]).await;
    assert!(!rig.finish(&stale[0], "n1", outcome.clone()).await, "the first attempt's outcome is dropped");
    assert!(rig.finish(&again[0], "n1", outcome).await);

    s.create(&CUSTOMER, &obj(json!({"name": "Ed"})), "api").await.unwrap();
    rig.dispatch().await;
    let slow = rig.claim("n1", 1).await;
    let held = [(slow[0].delivery.id, slow[0].delivery.attempts)];
    assert_eq!(s.renew_leases("n1", &held, 60_000).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await; // past the first 1 ms lease
    assert!(rig.claim("n2", 60_000).await.is_empty(), "a renewed lease is not taken over");
    assert_eq!(s.renew_leases("n2", &held, 60_000).await.unwrap(), 0, "only the owner renews");
}

/// An invoice whose customer is not linked yet cannot apply: it is retried with
/// backoff, the poll cursor stays before it (later events still apply), it applies
/// once the customer is linked, and with no luck it ends `dead` — never silently.
async fn an_event_that_cannot_apply_yet_is_retried_then_dead_and_the_poll_cursor_waits(t: TestStore) {
    let rig =
        Rig::new(&t.store, StripeOptions::default(), "max_attempts = 3\nentities = [\"customer\", \"invoice\"]").await;
    let s = &t.store;
    s.set_cursor("poll:stripe", "1000").await.unwrap();
    let invoice = |id: &str, customer: &str| json!({"id": id, "object": "invoice", "customer": customer, "amount_due": 500, "currency": "eur", "status": "open"});
    rig.sandbox.inject_event("invoice.created", invoice("in_1", "cus_later"), 2000);
    let later = json!({"id": "cus_other", "object": "customer", "name": "Flo", "email": null, "metadata": {}});
    rig.sandbox.inject_event("customer.created", later, 3000);
    let report = rig.pipeline.poll(true).await.unwrap();
    assert_eq!((report.fetched, report.applied), (2, 1), "{report:?}");
    assert_eq!(s.cursor("poll:stripe").await.unwrap().as_deref(), Some("1000"), "the cursor waits before the invoice");
    let row = s.inbox_event("stripe", rig.events().await[0]["id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!((row.outcome, row.attempts), (InboxOutcome::Received, 1), "{row:?}");
    assert!(row.remarks.as_deref().unwrap().contains("not linked"), "{row:?}");

    // The customer arrives (by webhook); recovery applies the invoice; the cursor moves on.
    let cus = json!({"id": "cus_later", "object": "customer", "name": "Gus", "email": null, "metadata": {}});
    rig.sandbox.inject_event("customer.created", cus, 3000);
    let arrived = rig.events().await.pop().unwrap();
    assert_eq!(rig.receive(&arrived).await.outcome, InboxOutcome::Applied);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        rig.pipeline.poll(true).await.unwrap();
        let row = s.inbox_event("stripe", &row.event_id).await.unwrap().unwrap();
        if row.outcome == InboxOutcome::Applied {
            break;
        }
        assert!(Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.cursor("poll:stripe").await.unwrap().as_deref(), Some("3000"));

    // An invoice that never can: dead after max_attempts, with remarks, replayable.
    rig.sandbox.inject_event("invoice.created", invoice("in_2", "cus_never"), 4000);
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        rig.pipeline.poll(true).await.unwrap();
        let rows = s.inbox_filtered("stripe", Some(InboxOutcome::Dead), 0, 10).await.unwrap();
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(Instant::now() < deadline, "never went dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(dead.remarks.as_deref().unwrap().contains("gave up after 3 attempts"), "{dead:?}");
    assert_eq!(s.cursor("poll:stripe").await.unwrap().as_deref(), Some("4000"), "a dead event no longer holds it");
    assert_eq!(s.inbox_replay("stripe", None).await.unwrap(), 1);
}

/// Both sides changed one field since the last sync: a conflict row, decided by the
/// system's policy (`external_wins` by default, per field exceptions).
async fn same_field_conflicts_are_rows_decided_by_the_policy(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "[field_policies]\nemail = \"hub_wins\"").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "Hal", "email": "hal@hub.io"})), "api").await.unwrap();
    rig.deliver_all().await;
    let cus = rig.external_id(&rec.id).await;
    // The hub changes both fields (not pushed yet); Stripe changes both too.
    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "Hal Hub", "email": "hal@new-hub.io"})), None, "api")
        .await
        .unwrap();
    rig.stripe_post(&format!("/v1/customers/{cus}"), &[("name", "Hal Stripe"), ("email", "hal@stripe.io")]).await;
    let edit = rig.events().await.pop().unwrap();
    let row = rig.receive(&edit).await;
    assert_eq!(row.outcome, InboxOutcome::Applied, "{row:?}");
    let hub = s.get(&CUSTOMER, &rec.id).await.unwrap().unwrap();
    assert_eq!(hub.fields["name"], "Hal Stripe", "external_wins on name");
    assert_eq!(hub.fields["email"], "hal@new-hub.io", "hub_wins on email");
    let mut rows = s
        .conflicts(&ConflictFilter { record_id: Some(rec.id.clone()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    rows.sort_by(|a, b| a.field.cmp(&b.field));
    let summary: Vec<_> =
        rows.iter().map(|c| (c.field.as_str(), c.policy.as_str(), c.winner.as_deref(), c.status.as_str())).collect();
    assert_eq!(
        summary,
        vec![("email", "hub_wins", Some("hub"), "resolved"), ("name", "external_wins", Some("external"), "resolved")]
    );
    assert_eq!(rows[0].external_value, "hal@stripe.io");
    assert_eq!(rows[0].hub_value, "hal@new-hub.io");
    // The hub's email goes back to Stripe (a resync change); both sides end equal.
    rig.deliver_all().await;
    let stripe = rig.stripe_get(&format!("/v1/customers/{cus}")).await;
    assert_eq!((stripe["name"].as_str(), stripe["email"].as_str()), (Some("Hal Stripe"), Some("hal@new-hub.io")));
}

/// `manual`: the field stays at the hub's value and the conflict stays open until an
/// operator resolves it; the resolution is an ordinary change.
async fn a_manual_conflict_holds_the_field_until_resolved(t: TestStore) {
    let rig = Rig::new(&t.store, StripeOptions::default(), "conflict_policy = \"manual\"").await;
    let s = &t.store;
    let rec = s.create(&CUSTOMER, &obj(json!({"name": "Ivy"})), "api").await.unwrap();
    rig.deliver_all().await;
    let cus = rig.external_id(&rec.id).await;
    s.update(&CUSTOMER, &rec.id, &obj(json!({"name": "Ivy Hub"})), None, "api").await.unwrap();
    rig.stripe_post(&format!("/v1/customers/{cus}"), &[("name", "Ivy Stripe")]).await;
    let edit = rig.events().await.pop().unwrap();
    rig.receive(&edit).await;
    assert_eq!(rig.hub_name(&rec.id).await, "Ivy Hub", "held at the hub's value");
    let open =
        s.conflicts(&ConflictFilter { status: Some("open".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].winner.as_deref(), open[0].external_value.as_str()), (None, Some("Ivy Stripe")));
    assert!(s.close_conflict(open[0].id, "external", "external").await.unwrap());
    assert!(!s.close_conflict(open[0].id, "hub", "hub").await.unwrap(), "resolved once");
}

/// A receiver that keeps failing: retried with backoff, then `dead` after
/// `max_attempts`, with the reason in the remarks.
async fn a_delivery_goes_dead_after_max_attempts(t: TestStore) {
    let receiver = Receiver::start(None, Duration::ZERO).await;
    receiver.set_fallback(Some(Reply::error(503, "down for maintenance")));
    let text = format!(
        "name = \"crm\"\nkind = \"http\"\nurl = \"{}\"\nmax_attempts = 3\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"",
        receiver.url("/crm")
    );
    let engine = Arc::new(
        Engine::new(t.store.clone(), vec![SystemConfig::from_table(toml::from_str(&text).unwrap()).unwrap()]).unwrap(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = engine.spawn(rx);
    t.store.create(&CUSTOMER, &obj(json!({"name": "Jo"})), "api").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let list = t.store.deliveries(&DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
        if let Some(d) = list.iter().find(|d| d.status == DeliveryStatus::Dead) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "{list:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.attempts, 3);
    assert!(dead.remarks.as_deref().unwrap().contains("gave up after 3 attempts"), "{dead:?}");
    assert_eq!(t.store.attempts(dead.id).await.unwrap().len(), 3);
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
}
