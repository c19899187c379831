//! Kafka end to end, on SQLite and PostgreSQL: a hub (store + engine + HTTP server
//! on 127.0.0.1) with a Kafka system on librdkafka's mock cluster, an `http`
//! receiver and the in-repo Stripe stand-in. A customer created through the API
//! reaches the changes topic and the receiver; the status topic reports both a
//! delivered and a dead outcome; a customer from the inbound topic reaches Stripe
//! and the receiver but is not published back to the changes topic.

use std::time::{Duration, Instant};

mod common;

use serde_json::{json, Value};
use syncflow_sandbox::{KafkaMessage, KafkaSandbox, Receiver, Reply, StripeOptions, StripeSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, Delivery, DeliveryFilter, DeliveryStatus, Store};

const WAIT: Duration = Duration::from_secs(30);

use common::hub::RunningHub as Hub;

async fn deliveries_until(store: &Store, what: &str, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = store.deliveries(&DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; deliveries: {list:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn status_of(list: &[Delivery], record: &str, system: &str) -> Option<DeliveryStatus> {
    list.iter().find(|d| d.record_id == record && d.system == system).map(|d| d.status)
}

fn reported(messages: &[KafkaMessage], record: &str, system: &str, status: &str) -> bool {
    messages
        .iter()
        .any(|m| m.value["record_id"] == record && m.value["system"] == system && m.value["status"] == status)
}

backend_tests!(a_customer_flows_through_kafka_both_ways);

async fn a_customer_flows_through_kafka_both_ways(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    for topic in ["syncflow.changes", "hub.status", "crm.events"] {
        kafka.create_topic(topic, 2).unwrap();
    }
    let stripe = StripeSandbox::start("127.0.0.1:0".parse().unwrap(), StripeOptions::default()).await.unwrap();
    let rx = Receiver::start(None, Duration::ZERO).await;
    rx.script([Reply::error(422, "no such country")]); // the first push to the receiver is refused
    let systems = format!(
        "[[systems]]\nname = \"bus\"\nkind = \"kafka\"\nbrokers = \"{}\"\nstatus_topic = \"hub.status\"\n\
         inbound_topic = \"crm.events\"\n\n\
         [[systems]]\nname = \"crm\"\nkind = \"http\"\nurl = \"{}\"\n\n\
         [[systems]]\nname = \"stripe\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key = \"sk_test_kafka\"\n\
         api_rate_limit = 1000\n",
        kafka.bootstrap(),
        rx.url("/crm"),
        stripe.url()
    );
    let hub = Hub::start(&t.store, &systems).await;
    let http = reqwest::Client::new();

    // Out: the API's customer reaches the changes topic and the receiver (refused there).
    let created: Value = http
        .post(format!("{}/v1/customers", hub.url))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ada = created["id"].as_str().unwrap().to_string();
    let changes = kafka
        .read("syncflow.changes", WAIT, |m| m.iter().any(|m| m.value["change"]["record_id"] == ada.as_str()))
        .await;
    let msg = changes.iter().find(|m| m.value["change"]["record_id"] == ada.as_str()).unwrap();
    assert_eq!(msg.key.as_deref(), Some(format!("customer/{ada}").as_str()));
    assert_eq!(msg.value["data"]["email"], "ada@example.com");
    assert_eq!(msg.headers["syncflow-origin"], "api");
    deliveries_until(&t.store, "Ada's deliveries", |l| {
        status_of(l, &ada, "crm") == Some(DeliveryStatus::Dead)
            && status_of(l, &ada, "bus") == Some(DeliveryStatus::Delivered)
            && status_of(l, &ada, "stripe") == Some(DeliveryStatus::Delivered)
    })
    .await;
    assert!(rx.received().iter().any(|r| r.body["change"]["record_id"] == ada.as_str()));

    // In: a customer from the inbound topic reaches Stripe and the receiver.
    let event = json!({"event_id": "crm-7-created", "entity": "customer", "op": "upsert", "external_id": "crm-7",
                       "fields": {"name": "Bea", "email": "bea@example.com"}});
    kafka.produce("crm.events", Some("customer/crm-7"), event.to_string().as_bytes(), &[]).await;
    let list = deliveries_until(&t.store, "Bea's deliveries", |l| {
        l.iter().any(|d| d.record_id != ada && d.system == "crm" && d.status == DeliveryStatus::Delivered)
            && l.iter().any(|d| d.record_id != ada && d.system == "stripe" && d.status == DeliveryStatus::Delivered)
    })
    .await;
    let bea = list.iter().find(|d| d.record_id != ada).unwrap().record_id.clone();
    let link = t.store.link_by_external_id("bus", "customer", "crm-7").await.unwrap().unwrap();
    assert_eq!(link.record_id, bea);
    assert!(rx.applied().iter().any(|b| b["data"]["name"] == "Bea"));
    let stripe_id = list.iter().find(|d| d.record_id == bea && d.system == "stripe").unwrap().external_id.clone();
    assert!(stripe_id.unwrap().starts_with("cus_"));
    assert_eq!(status_of(&list, &bea, "bus"), None, "never routed back to its origin");

    // Status: every final outcome, keyed like the change.
    let statuses = kafka
        .read("hub.status", WAIT, |m| {
            reported(m, &ada, "crm", "dead")
                && reported(m, &bea, "crm", "delivered")
                && reported(m, &bea, "stripe", "delivered")
                && reported(m, &ada, "bus", "delivered")
        })
        .await;
    assert!(reported(&statuses, &ada, "crm", "dead"), "{statuses:#?}");
    assert!(reported(&statuses, &bea, "crm", "delivered"), "{statuses:#?}");
    let dead = statuses.iter().find(|m| m.value["record_id"] == ada.as_str() && m.value["system"] == "crm").unwrap();
    assert_eq!(dead.key.as_deref(), Some(format!("customer/{ada}").as_str()));
    assert!(dead.value["remarks"].as_str().unwrap().contains("no such country"));

    // Not published back: the changes topic holds Ada only.
    let changes = kafka.read("syncflow.changes", WAIT, |m| !m.is_empty()).await;
    assert!(changes.iter().all(|m| m.value["change"]["record_id"] == ada.as_str()), "{changes:#?}");
    hub.stop().await;
}
