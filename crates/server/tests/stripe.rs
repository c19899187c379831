//! The Stripe connector end to end: a hub (store + engine + HTTP server on
//! 127.0.0.1) against localstripe, the independent Stripe stand-in that
//! `scripts/test` starts (`SYNCFLOW_TEST_STRIPE_URL`). Without that URL these tests
//! skip with a notice, unless `SYNCFLOW_REQUIRE_STRIPE=1`, which makes them fail.
//! Every scenario runs on SQLite and PostgreSQL.
//!
//! localstripe is one shared process, so scenarios take turns (a global lock) and
//! start from wiped data. It sends each webhook one second after the event, to
//! whatever endpoint is registered at that moment, so a scenario first waits until
//! the previous one's last event is at least two seconds old.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::hub::RunningHub;

use serde_json::{json, Map, Value};
use syncflow_connectors::signature;
use syncflow_connectors::stripe::StripeConfig;
use syncflow_connectors::{Connector, Outcome, PushRequest};
use syncflow_core::{Change, Op};
use syncflow_core::{CUSTOMER, INVOICE};
use syncflow_engine::backfill::Direction;
use syncflow_engine::Pipeline;
use syncflow_engine::{Engine, SystemConfig};
use syncflow_sandbox::{Receiver, StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, DeliveryFilter, InboxEvent, InboxOutcome, Store};

const SECRET_KEY: &str = "sk_test_syncflow";
const WEBHOOK_SECRET: &str = "whsec_syncflow_test";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared localstripe, held for one scenario.
struct LocalStripe {
    url: String,
    http: reqwest::Client,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl LocalStripe {
    /// Takes localstripe for this scenario, or `None` (skip) when none is running.
    async fn acquire() -> Option<LocalStripe> {
        let Ok(url) = std::env::var("SYNCFLOW_TEST_STRIPE_URL") else {
            if std::env::var("SYNCFLOW_REQUIRE_STRIPE").as_deref() == Ok("1") {
                panic!("SYNCFLOW_REQUIRE_STRIPE=1 but SYNCFLOW_TEST_STRIPE_URL is not set (scripts/test starts localstripe)");
            }
            syncflow_store::testing::skipped(
                "Stripe end-to-end test",
                "SYNCFLOW_TEST_STRIPE_URL is not set (scripts/test starts localstripe)",
            );
            return None;
        };
        let turn = TURN.lock().await;
        let ls = LocalStripe { url, http: reqwest::Client::new(), _turn: turn };
        // Let the previous scenario's webhooks go out before the endpoint changes.
        let (_, events) = ls.get("/v1/events?limit=1000").await;
        let newest = events["data"].as_array().unwrap().iter().filter_map(|e| e["created"].as_i64()).max();
        if let Some(newest) = newest {
            eventually!("the previous scenario's webhooks to be sent", {
                (chrono::Utc::now().timestamp() >= newest + 3).then_some(())
            });
        }
        let wiped = ls.http.delete(format!("{}/_config/data", ls.url)).send().await.unwrap();
        assert!(wiped.status().is_success());
        ls.webhook_to("http://127.0.0.1:9/nowhere").await;
        Some(ls)
    }

    async fn webhook_to(&self, url: &str) {
        let r = self
            .http
            .post(format!("{}/_config/webhooks/syncflow", self.url))
            .form(&[("url", url), ("secret", WEBHOOK_SECRET)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "registering the webhook: {}", r.status());
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.bearer_auth(SECRET_KEY).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(self.http.get(format!("{}{path}", self.url))).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let (status, body) = self.call(self.http.post(format!("{}{path}", self.url)).form(form)).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }

    async fn delete(&self, path: &str) -> Value {
        let (status, body) = self.call(self.http.delete(format!("{}{path}", self.url))).await;
        assert_eq!(status, 200, "DELETE {path}: {body}");
        body
    }

    fn system(&self, extra: &str) -> String {
        format!(
            "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{SECRET_KEY}\"\n\
             webhook_secret = \"{WEBHOOK_SECRET}\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n{extra}\n",
            self.url
        )
    }
}

/// A running hub: engine (dispatcher, workers, pollers) and the HTTP server.
struct Hub {
    store: Store,
    url: String,
    http: reqwest::Client,
    running: RunningHub,
}

impl Hub {
    async fn start(store: &Store, systems_toml: &str) -> Hub {
        let running = RunningHub::start(store, systems_toml).await;
        Hub { store: store.clone(), url: running.url.clone(), http: reqwest::Client::new(), running }
    }

    fn webhook_url(&self) -> String {
        format!("{}/webhooks/stripe", self.url)
    }

    async fn stop(self) {
        self.running.stop().await;
    }

    /// POSTs a webhook body with the given `Stripe-Signature` (if any).
    async fn webhook(&self, body: &str, signature: Option<&str>) -> (u16, Value) {
        let mut req =
            self.http.post(self.webhook_url()).header("content-type", "application/json").body(body.to_string());
        if let Some(s) = signature {
            req = req.header("stripe-signature", s);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn inbox(&self) -> Vec<InboxEvent> {
        self.store.inbox("stripe", 0, 1000).await.unwrap()
    }

    /// The settled inbox row of the first event of `kind` about `external_id`.
    async fn settled(&self, kind: &str, external_id: &str) -> InboxEvent {
        eventually!(format!("{kind} for {external_id} to be settled"), {
            self.inbox().await.into_iter().find(|e| {
                e.event_type == kind
                    && e.external_id.as_deref() == Some(external_id)
                    && e.outcome != InboxOutcome::Received
            })
        })
    }

    async fn deliveries_to(&self, system: &str, record_id: &str) -> usize {
        let f = DeliveryFilter {
            system: Some(system.into()),
            record_id: Some(record_id.into()),
            limit: 1000,
            ..Default::default()
        };
        self.store.deliveries(&f).await.unwrap().len()
    }

    /// Waits until every delivery is final and every inbox row settled.
    async fn quiet(&self) {
        eventually!("deliveries and inbox to settle", {
            let deliveries =
                self.store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
            let inbox = self.inbox().await;
            (deliveries.iter().all(|d| d.status.is_final())
                && inbox.iter().all(|e| e.outcome != InboxOutcome::Received))
            .then_some(())
        })
    }
}

fn signed_event(id: &str, kind: &str, created: i64, object: Value) -> (String, String) {
    let body =
        json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}}).to_string();
    let header = signature::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), body.as_bytes());
    (body, header)
}

backend_tests!(
    hub_changes_reach_stripe_and_their_echoes_change_nothing,
    stripe_changes_reach_the_hub_by_webhook,
    stripe_changes_reach_the_hub_by_polling,
    bad_webhooks_are_refused_and_store_nothing,
    an_event_seen_twice_is_applied_once,
    stripe_changes_fan_out_but_never_back,
    concurrent_edits_of_different_fields_both_survive,
    stale_and_same_second_events_do_not_overwrite,
    stripe_invoices_arrive_in_the_hub,
    backfill_links_imports_and_exports,
    same_second_events_listed_newest_first_end_in_the_latest_state,
    webhooks_for_our_creates_that_beat_their_links_make_no_duplicates,
);

async fn hub_changes_reach_stripe_and_their_echoes_change_nothing(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let hub = Hub::start(&t.store, &ls.system("")).await;
    ls.webhook_to(&hub.webhook_url()).await;
    let s = &t.store;

    let c = s
        .create(
            &CUSTOMER,
            &obj(json!({"name": "Ada", "email": "ada@example.com", "metadata": {"tier": "gold"}})),
            "api",
        )
        .await
        .unwrap();
    let link = eventually!("the link", s.link("customer", &c.id, "stripe").await.unwrap());
    assert!(link.external_id.starts_with("cus_"), "{link:?}");
    assert_eq!(s.link_by_external_id("stripe", "customer", &link.external_id).await.unwrap().unwrap().record_id, c.id);
    let path = format!("/v1/customers/{}", link.external_id);
    let (_, cus) = ls.get(&path).await;
    assert_eq!(cus["metadata"]["syncflow_id"], c.id.as_str());
    assert_eq!((cus["name"].as_str(), cus["email"].as_str()), (Some("Ada"), Some("ada@example.com")));
    assert_eq!(cus["metadata"]["tier"], "gold");

    // The webhook for our own create: recorded as echo, no change, no delivery.
    let echo = hub.settled("customer.created", &link.external_id).await;
    assert_eq!(echo.outcome, InboxOutcome::Echo, "{echo:?}");
    assert_eq!(s.changes_of_record("customer", &c.id).await.unwrap().len(), 1);

    s.update(&CUSTOMER, &c.id, &obj(json!({"name": "Ada L.", "metadata": {"tier": null, "team": "a"}})), None, "api")
        .await
        .unwrap();
    let cus = eventually!("the update in Stripe", {
        let (_, cus) = ls.get(&path).await;
        (cus["name"] == "Ada L.").then_some(cus)
    });
    assert_eq!(cus["metadata"]["team"], "a");
    assert_eq!(hub.settled("customer.updated", &link.external_id).await.outcome, InboxOutcome::Echo);

    s.delete(&CUSTOMER, &c.id, None, "api").await.unwrap();
    eventually!("the delete in Stripe", (ls.get(&path).await.0 == 404).then_some(()));
    assert_eq!(hub.settled("customer.deleted", &link.external_id).await.outcome, InboxOutcome::Echo);
    hub.quiet().await;
    let changes = s.changes_of_record("customer", &c.id).await.unwrap();
    assert_eq!(changes.iter().map(|c| c.origin.as_str()).collect::<Vec<_>>(), vec!["api", "api", "api"]);
    assert_eq!(hub.deliveries_to("stripe", &c.id).await, 3);
    hub.stop().await;
}

async fn stripe_changes_reach_the_hub_by_webhook(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let hub = Hub::start(&t.store, &ls.system("")).await;
    ls.webhook_to(&hub.webhook_url()).await;
    stripe_lifecycle_reaches_the_hub(&ls, &hub, "webhook").await;
    hub.stop().await;
}

async fn stripe_changes_reach_the_hub_by_polling(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    // Webhooks stay pointed at nowhere: only polling brings changes in.
    let hub = Hub::start(&t.store, &ls.system("poll_interval = \"200ms\"")).await;
    eventually!("the first poll to set the cursor", t.store.cursor("poll:stripe").await.unwrap());
    stripe_lifecycle_reaches_the_hub(&ls, &hub, "poll").await;
    hub.stop().await;
}

/// Create, update and delete in Stripe, each reflected in the hub with origin
/// `stripe`, and never delivered back.
async fn stripe_lifecycle_reaches_the_hub(ls: &LocalStripe, hub: &Hub, source: &str) {
    let s = &hub.store;
    let cus = ls.post("/v1/customers", &[("name", "Bo"), ("email", "bo@example.com"), ("metadata[plan]", "pro")]).await;
    let cus_id = cus["id"].as_str().unwrap();
    let link = eventually!("the hub customer", s.link_by_external_id("stripe", "customer", cus_id).await.unwrap());
    let record = s.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap();
    assert_eq!(record.fields["name"], "Bo");
    assert_eq!(record.fields["email"], "bo@example.com");
    assert_eq!(record.fields["metadata"], json!({"plan": "pro"}));

    ls.post(&format!("/v1/customers/{cus_id}"), &[("name", "Bo B."), ("metadata[plan]", "team")]).await;
    eventually!("the update in the hub", {
        let r = s.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap();
        (r.fields["name"] == "Bo B." && r.fields["metadata"]["plan"] == "team").then_some(())
    });

    ls.delete(&format!("/v1/customers/{cus_id}")).await;
    eventually!("the delete in the hub", s.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap().deleted_at);
    hub.quiet().await;

    let changes = s.changes_of_record("customer", &link.record_id).await.unwrap();
    assert_eq!(changes.len(), 3, "{changes:#?}");
    assert!(changes.iter().all(|c| c.origin == "stripe"));
    assert_eq!(hub.deliveries_to("stripe", &link.record_id).await, 0, "never sent back to its origin");
    let inbox = hub.inbox().await;
    let (echoes, applied): (Vec<_>, Vec<_>) = inbox.iter().partition(|e| e.outcome == InboxOutcome::Echo);
    let kinds: Vec<_> = applied.iter().map(|e| (e.event_type.as_str(), e.outcome, e.source.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            ("customer.created", InboxOutcome::Applied, source),
            ("customer.updated", InboxOutcome::Applied, source),
            ("customer.deleted", InboxOutcome::Applied, source),
        ]
    );
    // Once linked, the hub id was written back to the customer; its event is an echo.
    let echoes: Vec<_> = echoes.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(echoes, vec!["customer.updated"], "{inbox:#?}");
}

async fn bad_webhooks_are_refused_and_store_nothing(t: TestStore) {
    // Needs no Stripe: nothing valid gets far enough to call it.
    let system = format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"http://127.0.0.1:9\"\n\
         secret_key = \"{SECRET_KEY}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n"
    );
    let hub = Hub::start(&t.store, &system).await;
    let now = chrono::Utc::now().timestamp();
    let object = json!({"id": "cus_bad", "object": "customer", "name": "Mallory", "metadata": {}});
    let (body, _) = signed_event("evt_bad", "customer.created", now, object);
    let forged = signature::sign("whsec_guess", now, body.as_bytes());
    let expired = signature::sign(WEBHOOK_SECRET, now - 301, body.as_bytes());
    let other_body = body.replace("Mallory", "Mallory2");
    let for_other_body = signature::sign(WEBHOOK_SECRET, now, other_body.as_bytes());
    let cases: [(&str, &str, Option<&str>); 5] = [
        ("unsigned", &body, None),
        ("forged", &body, Some(&forged)),
        ("expired", &body, Some(&expired)),
        ("tampered", &body, Some(&for_other_body)),
        ("malformed", &body, Some("t=now,v1=zz")),
    ];
    for (what, body, sig) in cases {
        let (status, reply) = hub.webhook(body, sig).await;
        assert_eq!(status, 400, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{what}");
    }
    let (status, _) = hub.webhook("not json", Some(&signature::sign(WEBHOOK_SECRET, now, b"not json"))).await;
    assert_eq!(status, 400, "signed garbage");
    assert!(hub.inbox().await.is_empty());
    assert_eq!(t.store.head_seq().await.unwrap(), 0);
    // Unknown systems are not found; the real thing is accepted.
    let r = hub.http.post(format!("{}/webhooks/nope", hub.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let good = signature::sign(WEBHOOK_SECRET, now, other_body.as_bytes());
    let (status, reply) = hub.webhook(&other_body, Some(&good)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["outcome"], "applied");
    hub.stop().await;
}

async fn an_event_seen_twice_is_applied_once(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    // Webhooks and polling both on: each sees every event.
    let hub = Hub::start(&t.store, &ls.system("poll_interval = \"200ms\"")).await;
    eventually!("the first poll to set the cursor", t.store.cursor("poll:stripe").await.unwrap());
    ls.webhook_to(&hub.webhook_url()).await;
    let cus = ls.post("/v1/customers", &[("name", "Cy"), ("email", "cy@example.com")]).await;
    let cus_id = cus["id"].as_str().unwrap();
    let metrics = t.store.metrics();
    let seen = |source: &'static str| {
        InboxOutcome::ALL
            .iter()
            .map(|o| o.as_str())
            .chain(["duplicate"])
            .map(|o| {
                metrics
                    .value("syncflow_inbox_events_total", &[("system", "stripe"), ("source", source), ("outcome", o)])
            })
            .sum::<f64>()
    };
    eventually!(
        "both webhook and poller to see the event",
        (seen("webhook") >= 1.0 && seen("poll") >= 1.0).then_some(())
    );
    hub.quiet().await;
    let inbox = hub.inbox().await;
    let applied: Vec<_> = inbox.iter().filter(|e| e.outcome != InboxOutcome::Echo).collect();
    assert_eq!(applied.len(), 1, "{inbox:#?}");
    assert_eq!(applied[0].outcome, InboxOutcome::Applied);
    let (_, written_back) = ls.get(&format!("/v1/customers/{cus_id}")).await;
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), 1);
    let link = t.store.link_by_external_id("stripe", "customer", cus_id).await.unwrap().unwrap();
    assert_eq!(written_back["metadata"]["syncflow_id"], link.record_id.as_str(), "the hub id is written back");
    assert_eq!(t.store.changes_of_record("customer", &link.record_id).await.unwrap().len(), 1);

    // Stripe retrying the same delivery: the second answer says duplicate.
    let (_, events) = ls.get("/v1/events?limit=100").await;
    let event = events["data"][0].to_string();
    let header = signature::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), event.as_bytes());
    let (status, reply) = hub.webhook(&event, Some(&header)).await;
    assert_eq!((status, reply["duplicate"].as_bool()), (200, Some(true)), "{reply}");
    assert_eq!(t.store.changes_of_record("customer", &link.record_id).await.unwrap().len(), 1);
    hub.stop().await;
}

async fn stripe_changes_fan_out_but_never_back(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let crm = Receiver::start(Some("shh"), Duration::ZERO).await;
    let systems = format!(
        "{}\n[[systems]]\nname = \"crm\"\nkind = \"http\"\nurl = \"{}\"\nsecret = \"shh\"\n",
        ls.system(""),
        crm.url("/crm")
    );
    let hub = Hub::start(&t.store, &systems).await;
    ls.webhook_to(&hub.webhook_url()).await;
    let cus = ls.post("/v1/customers", &[("name", "Di"), ("email", "di@example.com")]).await;
    let link = eventually!("the hub customer", {
        t.store.link_by_external_id("stripe", "customer", cus["id"].as_str().unwrap()).await.unwrap()
    });
    let body = eventually!("the crm delivery", crm.applied().into_iter().next());
    assert_eq!(body["change"]["record_id"], link.record_id.as_str());
    assert_eq!(body["change"]["origin"], "stripe");
    assert_eq!(body["data"]["name"], "Di");
    hub.quiet().await;
    assert_eq!(hub.deliveries_to("crm", &link.record_id).await, 1);
    assert_eq!(hub.deliveries_to("stripe", &link.record_id).await, 0);
    hub.stop().await;
}

async fn concurrent_edits_of_different_fields_both_survive(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let hub = Hub::start(&t.store, &ls.system("")).await;
    ls.webhook_to(&hub.webhook_url()).await;
    let s = &t.store;
    let c = s.create(&CUSTOMER, &obj(json!({"name": "Eve", "email": "eve@example.com"})), "api").await.unwrap();
    let link = eventually!("the link", s.link("customer", &c.id, "stripe").await.unwrap());
    hub.quiet().await;
    let path = format!("/v1/customers/{}", link.external_id);

    // Name changed in Stripe while the e-mail changes through the hub's API.
    let email_patch = obj(json!({"email": "eve@new.example"}));
    let (_, updated) =
        tokio::join!(ls.post(&path, &[("name", "Eve Stripe")]), s.update(&CUSTOMER, &c.id, &email_patch, None, "api"));
    updated.unwrap();

    let converged = |r: &Value| r["name"] == "Eve Stripe" && r["email"] == "eve@new.example";
    eventually!("both edits in the hub", {
        let r = s.get(&CUSTOMER, &c.id).await.unwrap().unwrap();
        converged(&Value::Object(r.fields)).then_some(())
    });
    eventually!("both edits in Stripe", converged(&ls.get(&path).await.1).then_some(()));
    hub.quiet().await;
    // And they stay that way once every webhook and delivery has settled.
    let r = s.get(&CUSTOMER, &c.id).await.unwrap().unwrap();
    assert!(converged(&Value::Object(r.fields.clone())), "{r:?}");
    assert!(converged(&ls.get(&path).await.1));
    hub.stop().await;
}

async fn stale_and_same_second_events_do_not_overwrite(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let hub = Hub::start(&t.store, &ls.system("")).await;
    ls.webhook_to(&hub.webhook_url()).await;
    let cus = ls.post("/v1/customers", &[("name", "Fay")]).await;
    let cus_id = cus["id"].as_str().unwrap();
    let created = hub.settled("customer.created", cus_id).await;
    assert_eq!(created.outcome, InboxOutcome::Applied);
    let t0 = created.event_created;
    let record_id = created.record_id.clone().unwrap();
    let name = |n: &str| json!({"id": cus_id, "object": "customer", "name": n, "metadata": {}});

    // Older than the applied event: stale, no overwrite.
    let (body, sig) = signed_event("evt_old", "customer.updated", t0 - 10, name("Old"));
    let (status, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("stale")), "{reply}");

    // Same second: order unknown, so the customer is re-fetched (still "Fay").
    let (body, sig) = signed_event("evt_same", "customer.updated", t0, name("Bogus"));
    let (status, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!(status, 200, "{reply}");
    let same = t.store.inbox_event("stripe", "evt_same").await.unwrap().unwrap();
    assert!(same.remarks.as_deref().unwrap_or("").contains("re-fetched"), "{same:?}");
    assert_eq!(t.store.get(&CUSTOMER, &record_id).await.unwrap().unwrap().fields["name"], "Fay");

    // Newer: applied.
    let (body, sig) = signed_event("evt_new", "customer.updated", t0 + 5, name("Fay N."));
    let (_, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!(reply["outcome"], "applied", "{reply}");
    assert_eq!(t.store.get(&CUSTOMER, &record_id).await.unwrap().unwrap().fields["name"], "Fay N.");
    // And the old one once more, after the newer: still stale.
    let (body, sig) = signed_event("evt_old2", "customer.updated", t0 + 1, name("Older"));
    let (_, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!(reply["outcome"], "stale", "{reply}");
    assert_eq!(t.store.get(&CUSTOMER, &record_id).await.unwrap().unwrap().fields["name"], "Fay N.");
    hub.stop().await;
}

async fn stripe_invoices_arrive_in_the_hub(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let hub = Hub::start(&t.store, &ls.system("")).await;
    ls.webhook_to(&hub.webhook_url()).await;
    let cus = ls.post("/v1/customers", &[("name", "Gus"), ("email", "gus@example.com")]).await;
    let cus_id = cus["id"].as_str().unwrap();
    let customer =
        eventually!("the hub customer", t.store.link_by_external_id("stripe", "customer", cus_id).await.unwrap());
    // localstripe only makes invoices from subscriptions, so the invoice events are
    // shaped here like Stripe's and sent signed, as Stripe would.
    let now = chrono::Utc::now().timestamp();
    let invoice = |status: &str| {
        json!({"id": "in_1", "object": "invoice", "customer": cus_id, "amount_due": 1500, "currency": "eur",
               "status": status, "due_date": 1_767_225_600, "metadata": {"po": "42"}})
    };
    let (body, sig) = signed_event("evt_inv1", "invoice.created", now, invoice("draft"));
    let (status, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("applied")), "{reply}");
    let link = t.store.link_by_external_id("stripe", "invoice", "in_1").await.unwrap().unwrap();
    let record = t.store.get(&INVOICE, &link.record_id).await.unwrap().unwrap();
    assert_eq!(record.fields["customer_id"], customer.record_id.as_str());
    assert_eq!(record.fields["amount"], 1500);
    assert_eq!(record.fields["currency"], "eur");
    assert_eq!(record.fields["status"], "draft");
    assert_eq!(record.fields["due_date"], "2026-01-01");
    assert_eq!(record.fields["metadata"], json!({"po": "42"}));
    let (body, sig) = signed_event("evt_inv2", "invoice.paid", now + 1, invoice("paid"));
    let (_, reply) = hub.webhook(&body, Some(&sig)).await;
    assert_eq!(reply["outcome"], "applied", "{reply}");
    assert_eq!(t.store.get(&INVOICE, &link.record_id).await.unwrap().unwrap().fields["status"], "paid");
    assert_eq!(t.store.changes_of_record("invoice", &link.record_id).await.unwrap()[0].origin, "stripe");
    hub.stop().await;
}

async fn backfill_links_imports_and_exports(t: TestStore) {
    let Some(ls) = LocalStripe::acquire().await else { return };
    let s = &t.store;
    let known = s.create(&CUSTOMER, &obj(json!({"name": "Hal"})), "api").await.unwrap();
    let same_email =
        s.create(&CUSTOMER, &obj(json!({"name": "Ida", "email": "ida@example.com"})), "api").await.unwrap();
    let hub_only = s.create(&CUSTOMER, &obj(json!({"name": "Jo", "email": "jo@example.com"})), "api").await.unwrap();
    let a = ls.post("/v1/customers", &[("name", "Hal"), ("metadata[syncflow_id]", known.id.as_str())]).await;
    let b = ls.post("/v1/customers", &[("name", "Ida I."), ("email", "ida@example.com")]).await;
    let c = ls.post("/v1/customers", &[("email", "kim@example.com")]).await;

    let settings = format!("api_base = \"{}\"\nsecret_key = \"{SECRET_KEY}\"", ls.url);
    let stripe = pipeline(s, &settings);
    let mut reports = 0;
    let import = stripe.backfill(&CUSTOMER, Direction::Import, |_| reports += 1).await.unwrap();
    assert_eq!((import.seen, import.linked, import.created, import.failed), (3, 2, 1, 0), "{import:?}");
    assert_eq!(reports, 3, "progress after every record");
    let linked = |v: &Value| {
        let id = v["id"].as_str().unwrap().to_string();
        async move { s.link_by_external_id("stripe", "customer", &id).await.unwrap().unwrap() }
    };
    assert_eq!(linked(&a).await.record_id, known.id);
    assert_eq!(linked(&b).await.record_id, same_email.id);
    let imported = linked(&c).await;
    assert_eq!(s.get(&CUSTOMER, &imported.record_id).await.unwrap().unwrap().fields["name"], "kim@example.com");

    let export = stripe.backfill(&CUSTOMER, Direction::Export, |_| {}).await.unwrap();
    assert_eq!((export.seen, export.enqueued, export.linked_before, export.total), (4, 1, 3, Some(4)), "{export:?}");
    // The export is bulk-lane work: the engine delivers it and the delivery links it.
    let hub = RunningHub::start(s, &format!("[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\n{settings}")).await;
    let exported = eventually!("the export's link", s.link(CUSTOMER.name, &hub_only.id, "stripe").await.unwrap());
    hub.stop().await;
    let (_, cus) = ls.get(&format!("/v1/customers/{}", exported.external_id)).await;
    assert_eq!(cus["metadata"]["syncflow_id"], hub_only.id.as_str());
    assert_eq!(cus["email"], "jo@example.com");

    // Resumable and idempotent: a rerun from the start finds nothing to do.
    for d in [Direction::Import, Direction::Export] {
        stripe.backfill_reset(&CUSTOMER, d).await.unwrap();
        let again = stripe.backfill(&CUSTOMER, d, |_| {}).await.unwrap();
        assert_eq!((again.created, again.enqueued, again.linked, again.failed), (0, 0, 0, 0), "{d:?}: {again:?}");
    }
    let (_, all) = ls.get("/v1/customers?limit=100").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
}

// The in-repo sandbox covers what localstripe does not: idempotency keys, 429 with
// Retry-After, and `/v1/events` listed newest first (as Stripe does).

/// The inward pipeline of a `stripe` system with these connector settings.
fn pipeline(store: &Store, settings: &str) -> Arc<Pipeline> {
    let table: toml::Table = toml::from_str(&format!("name = \"stripe\"\nkind = \"stripe\"\n{settings}")).unwrap();
    let engine = Engine::new(store.clone(), vec![SystemConfig::from_table(table).unwrap()]).unwrap();
    engine.pipelines().remove("stripe").unwrap()
}

fn sandbox_connector(sandbox: &StripeSandbox) -> syncflow_connectors::stripe::StripeConnector {
    let text = format!("api_base = \"{}\"\nsecret_key = \"{SECRET_KEY}\"\napi_rate_limit = 1000", sandbox.url());
    toml::from_str::<StripeConfig>(&text).unwrap().build("stripe").unwrap()
}

fn customer_change(version: i64, name: &str) -> Change {
    Change {
        seq: version,
        entity: "customer".into(),
        record_id: "cust_01".into(),
        op: Op::Upsert,
        version,
        origin: "api".into(),
        snapshot: json!({"id": "cust_01", "object": "customer", "name": name, "email": null, "metadata": {}}),
        created_at: "2026-01-01T00:00:00.000000Z".into(),
    }
}

#[tokio::test]
async fn a_retried_push_creates_one_customer_and_throttling_is_retried() {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let stripe = sandbox_connector(&sandbox);
    let change = customer_change(1, "Lu");
    let req = PushRequest { delivery_id: 41, attempt: 1, change: &change, link: None };
    // The same delivery pushed twice (a crash before its outcome was recorded).
    let Outcome::Delivered { external_id: first, .. } = stripe.push(req).await else { panic!("delivered") };
    let Outcome::Delivered { external_id: again, .. } = stripe.push(PushRequest { attempt: 2, ..req }).await else {
        panic!("delivered")
    };
    assert_eq!(first, again, "the idempotency key replays the first create");
    assert_eq!(sandbox.stats().customers, 1);

    let throttled = StripeSandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        StripeOptions { rate_limit: Some(1.0), ..StripeOptions::default() },
    )
    .await
    .unwrap();
    let stripe = sandbox_connector(&throttled);
    let outcomes = [stripe.push(req).await, stripe.push(PushRequest { delivery_id: 42, ..req }).await];
    let Outcome::Retry { http_status, retry_after, reason } = &outcomes[1] else { panic!("{outcomes:?}") };
    assert_eq!((*http_status, retry_after.is_some()), (Some(429), true), "{reason}");
}

#[tokio::test]
async fn an_older_upsert_does_not_bring_back_a_customer_deleted_in_stripe() {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let stripe = sandbox_connector(&sandbox);
    let change = customer_change(2, "Lu");
    let link = syncflow_core::sync::Link {
        entity: "customer".into(),
        record_id: "cust_01".into(),
        system: "stripe".into(),
        external_id: "cus_gone".into(),
        synced_version: Some(3),
        fingerprint: Some("deleted".into()),
        snapshot: Some(r#"{"stripe":null,"hub":{"name":"Lu","email":null,"metadata":{}},"at":{}}"#.into()),
        updated_at: 0,
    };
    let outcome = stripe.push(PushRequest { delivery_id: 7, attempt: 1, change: &change, link: Some(&link) }).await;
    assert!(matches!(outcome, Outcome::Delivered { http_status: None, .. }), "{outcome:?}");
    assert_eq!(sandbox.stats().requests, 0, "no call, no new customer");
}

async fn same_second_events_listed_newest_first_end_in_the_latest_state(t: TestStore) {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let s = &t.store;
    let stripe =
        pipeline(s, &format!("api_base = \"{}\"\nsecret_key = \"{SECRET_KEY}\"\napi_rate_limit = 1000", sandbox.url()));
    stripe.poll(true).await.unwrap(); // sets the cursor
    let http = reqwest::Client::new();
    let post = |path: String, form: Vec<(&'static str, &'static str)>| {
        let req = http.post(format!("{}{path}", sandbox.url())).bearer_auth(SECRET_KEY).form(&form);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let cus = post("/v1/customers".into(), vec![("name", "Mo 1")]).await;
    let path = format!("/v1/customers/{}", cus["id"].as_str().unwrap());
    post(path.clone(), vec![("name", "Mo 2")]).await;
    post(path, vec![("name", "Mo 3")]).await;

    let report = stripe.poll(true).await.unwrap();
    assert_eq!(report.fetched, 3, "{report:?}");
    let link = s.link_by_external_id("stripe", "customer", cus["id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(s.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap().fields["name"], "Mo 3");
    // A second poll reads the same second again and finds only known events.
    let again = stripe.poll(true).await.unwrap();
    assert_eq!(again.applied, 0, "{again:?}");
    assert_eq!(s.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap().fields["name"], "Mo 3");
}

/// The sandbox sends each webhook the moment the object changes, so the
/// `customer.created` of our own push routinely arrives before the push's outcome
/// (and its link) is recorded. Resolved by the hub id the object carries, or
/// recognised as the state being pushed, it is an echo: no second hub customer, no
/// second Stripe customer.
async fn webhooks_for_our_creates_that_beat_their_links_make_no_duplicates(t: TestStore) {
    let sandbox = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let systems = format!(
        "[[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"{SECRET_KEY}\"\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\napi_rate_limit = 1000\nconcurrency = 16\n",
        sandbox.url()
    );
    let hub = Hub::start(&t.store, &systems).await;
    sandbox.add_webhook("hub", &hub.webhook_url(), WEBHOOK_SECRET);
    const N: usize = 20;
    for i in 0..N {
        t.store.create(&CUSTOMER, &obj(json!({"name": format!("Racer {i}")})), "api").await.unwrap();
    }
    eventually!("every webhook to arrive", (hub.inbox().await.len() >= N).then_some(()));
    hub.quiet().await;
    assert_eq!(t.store.count(&CUSTOMER).await.unwrap(), N as i64, "no customer created twice in the hub");
    assert_eq!(sandbox.stats().customers, N, "one Stripe customer each");
    let inbox = hub.inbox().await;
    assert!(inbox.iter().all(|e| e.outcome == InboxOutcome::Echo), "{inbox:#?}");
    hub.stop().await;
}
