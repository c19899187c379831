//! `kind = "kafka"` against librdkafka's mock cluster (the real Kafka wire protocol,
//! in process, loopback only), on SQLite and PostgreSQL: per-key order on the
//! changes topic, a failed delivery report retried, the status cursor moving only
//! after the broker's ack, the inbound consumer re-reading after a crash before its
//! commit (applied once), and a poison message recorded, dead-lettered and passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use syncflow_connectors::{Connector, Subscription};
use syncflow_core::sync::InboxOutcome;
use syncflow_core::CUSTOMER;
use syncflow_engine::{Engine, Pipeline, SystemConfig};
use syncflow_sandbox::{KafkaMessage, KafkaSandbox};
use syncflow_store::testing::TestStore;
use syncflow_store::{backend_tests, Delivery, DeliveryFilter, DeliveryStatus, Finish, Route, Store};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A `[[systems]]` block of a Kafka system named `bus` on `kafka`.
fn bus(kafka: &KafkaSandbox, extra: &str) -> String {
    format!(
        "[[systems]]\nname = \"bus\"\nkind = \"kafka\"\nbrokers = \"{}\"\nbackoff_initial = \"50ms\"\n\
         backoff_max = \"200ms\"\n{extra}\n",
        kafka.bootstrap()
    )
}

fn engine(store: &Store, systems_toml: &str) -> Arc<Engine> {
    #[derive(serde::Deserialize)]
    struct File {
        systems: Vec<toml::Table>,
    }
    let file: File = toml::from_str(systems_toml).unwrap();
    let configs = file.systems.into_iter().map(|t| SystemConfig::from_table(t).unwrap()).collect();
    Arc::new(Engine::new(store.clone(), configs).unwrap())
}

struct Running {
    store: Store,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    fn start(store: &Store, systems_toml: &str) -> Running {
        let (stop, rx) = watch::channel(false);
        let tasks = engine(store, systems_toml).spawn(rx);
        Running { store: store.clone(), stop, tasks }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    async fn wait_for(&self, filter: DeliveryFilter, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = self.store.deliveries(&DeliveryFilter { limit: 1000, ..filter.clone() }).await.unwrap();
            if pred(&list) {
                return list;
            }
            assert!(Instant::now() < deadline, "condition not reached; deliveries: {list:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn all_final(list: &[Delivery]) -> bool {
    !list.is_empty() && list.iter().all(|d| d.status.is_final())
}

fn header(m: &KafkaMessage, name: &str) -> String {
    m.headers.get(name).cloned().unwrap_or_default()
}

backend_tests!(
    changes_are_published_in_order_per_key,
    a_failed_delivery_report_is_retried,
    the_status_cursor_moves_only_after_the_broker_acks,
    an_inbound_message_read_again_after_a_crash_is_applied_once,
    a_poison_message_is_recorded_and_passed_and_inbound_changes_are_not_published_back,
);

async fn changes_are_published_in_order_per_key(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    kafka.create_topic("hub.customer.changes", 4).unwrap();
    let run = Running::start(&t.store, &bus(&kafka, "topic = \"hub.{entity}.changes\"\nconcurrency = 4"));
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(t.store.create(&CUSTOMER, &obj(json!({"name": format!("C{i}")})), "api").await.unwrap().id);
    }
    for round in 1..=3 {
        for id in &ids {
            let patch = obj(json!({"name": format!("{id} v{round}")}));
            t.store.update(&CUSTOMER, id, &patch, None, "api").await.unwrap();
        }
    }
    let list = run.wait_for(DeliveryFilter::default(), |l| l.len() == 24 && all_final(l)).await;
    let delivered: Vec<&Delivery> = list.iter().filter(|d| d.status == DeliveryStatus::Delivered).collect();
    // Each delivered one names where it landed.
    assert!(delivered.iter().all(|d| d.external_id.as_deref().unwrap().starts_with("hub.customer.changes/")));
    let messages = kafka.read("hub.customer.changes", WAIT, |m| m.len() >= delivered.len()).await;
    assert_eq!(messages.len(), delivered.len());
    for id in &ids {
        let key = format!("customer/{id}");
        let of_record: Vec<&KafkaMessage> = messages.iter().filter(|m| m.key.as_deref() == Some(&key)).collect();
        assert!(!of_record.is_empty());
        assert!(of_record.iter().all(|m| m.partition == of_record[0].partition), "one partition per key");
        let mut by_offset = of_record.clone();
        by_offset.sort_by_key(|m| m.offset);
        let seqs: Vec<i64> = by_offset.iter().map(|m| header(m, "id").parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "changes of {id} out of order: {seqs:?}");
        let last = by_offset.last().unwrap();
        assert_eq!(last.value["data"]["name"], format!("{id} v3"), "the newest state is published last");
        for m in &of_record {
            assert_eq!(m.value["change"]["seq"].to_string(), header(m, "id"));
            assert_eq!(m.value["change"]["record_id"], id.as_str());
            assert_eq!(header(m, "syncflow-origin"), "api");
            assert_eq!(header(m, "content-type"), "application/json");
        }
    }
    run.stop().await;
}

async fn a_failed_delivery_report_is_retried(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    kafka.create_topic("syncflow.changes", 1).unwrap();
    kafka.set_brokers_up(false).unwrap();
    let run = Running::start(&t.store, &bus(&kafka, "[systems.librdkafka]\n\"message.timeout.ms\" = 1000"));
    let c = t.store.create(&CUSTOMER, &obj(json!({"name": "Patient"})), "api").await.unwrap();
    let retried = run
        .wait_for(DeliveryFilter::default(), |l| {
            l.iter().any(|d| d.attempts >= 1 && d.status == DeliveryStatus::Retrying)
        })
        .await;
    assert!(retried[0].remarks.as_deref().unwrap().contains("timed out"), "{:?}", retried[0].remarks);
    kafka.set_brokers_up(true).unwrap();
    let done = run.wait_for(DeliveryFilter::default(), all_final).await;
    assert_eq!(done[0].status, DeliveryStatus::Delivered, "{done:#?}");
    let attempts = t.store.attempts(done[0].id).await.unwrap();
    assert!(attempts.len() >= 2 && attempts[0].outcome == "retrying", "{attempts:#?}");
    let messages = kafka.read("syncflow.changes", WAIT, |m| !m.is_empty()).await;
    assert_eq!(messages[0].key.as_deref(), Some(format!("customer/{}", c.id).as_str()));
    run.stop().await;
}

async fn the_status_cursor_moves_only_after_the_broker_acks(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    kafka.create_topic("hub.status", 1).unwrap();
    let eng = engine(
        &t.store,
        &bus(&kafka, "status_topic = \"hub.status\"\n[systems.librdkafka]\n\"message.timeout.ms\" = 1000"),
    );
    let connector = eng.connectors().remove("bus").unwrap();
    let sink = connector.status_sink().expect("a status topic is configured");
    // First call starts the cursor at "now"; the outcome recorded after it is published.
    assert_eq!(syncflow_engine::status::publish_once(&t.store, "bus", sink.as_ref()).await.unwrap(), 0);
    let c = t.store.create(&CUSTOMER, &obj(json!({"name": "Reported"})), "api").await.unwrap();
    t.store.dispatch(&[Route { system: "bus".into(), entities: vec!["customer".into()] }], 10).await.unwrap();
    let claimed = t.store.claim("bus", "n1", 10, 60_000, &[]).await.unwrap();
    let finish = Finish {
        status: DeliveryStatus::Dead,
        next_attempt_at: None,
        http_status: None,
        external_id: None,
        remarks: Some("refused".into()),
        duration_ms: 1,
        link: None,
        callback_to: None,
    };
    assert!(t.store.finish(&claimed[0].delivery, "n1", &finish).await.unwrap());
    let cursor = syncflow_engine::status::cursor_name("bus");
    let before = t.store.cursor(&cursor).await.unwrap();
    // The outcome becomes readable once it is a settle period old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kafka.set_brokers_up(false).unwrap();
    assert!(syncflow_engine::status::publish_once(&t.store, "bus", sink.as_ref()).await.is_err());
    assert_eq!(t.store.cursor(&cursor).await.unwrap(), before, "no ack, no move");
    kafka.set_brokers_up(true).unwrap();
    let deadline = Instant::now() + WAIT;
    while syncflow_engine::status::publish_once(&t.store, "bus", sink.as_ref()).await.map_or(true, |n| n == 0) {
        assert!(Instant::now() < deadline, "never published");
    }
    assert_ne!(t.store.cursor(&cursor).await.unwrap(), before);
    let messages = kafka.read("hub.status", WAIT, |m| !m.is_empty()).await;
    let ours: Vec<&KafkaMessage> = messages.iter().filter(|m| m.value["record_id"] == c.id.as_str()).collect();
    assert!(!ours.is_empty());
    assert!(ours.iter().all(|m| m.value["status"] == "dead" && m.value["remarks"] == "refused"));
    assert_eq!(ours[0].key.as_deref(), Some(format!("customer/{}", c.id).as_str()));
    // Nothing more to publish: the cursor is past it.
    assert_eq!(syncflow_engine::status::publish_once(&t.store, "bus", sink.as_ref()).await.unwrap(), 0);
}

async fn subscribe(connector: &Arc<dyn Connector>) -> Box<dyn Subscription> {
    connector.inward().unwrap().subscribe().await.unwrap().expect("an inbound topic is configured")
}

async fn next(sub: &dyn Subscription) -> syncflow_connectors::SubscribedMessage {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a message in time").unwrap()
}

async fn close(sub: Box<dyn Subscription>) {
    tokio::task::spawn_blocking(move || drop(sub)).await.unwrap();
}

async fn an_inbound_message_read_again_after_a_crash_is_applied_once(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    kafka.create_topic("crm.events", 1).unwrap();
    // A crashed member holds its partitions until its session times out: keep that short.
    let settings = "inbound_topic = \"crm.events\"\ngroup_id = \"hub\"\n[systems.librdkafka]\n\
                    \"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500";
    let eng = engine(&t.store, &bus(&kafka, settings));
    let connector = eng.connectors().remove("bus").unwrap();
    let pipeline: Arc<Pipeline> = eng.pipelines().remove("bus").unwrap();
    let first = json!({"event_id": "crm-1", "entity": "customer", "op": "upsert", "external_id": "c-1",
                       "fields": {"name": "Once", "email": "once@example.com"}});
    kafka.produce("crm.events", Some("customer/c-1"), first.to_string().as_bytes(), &[]).await;

    // Read and applied, then the process dies before the offset is stored.
    let sub = subscribe(&connector).await;
    let msg = next(sub.as_ref()).await;
    pipeline.receive_message(sub.as_ref(), &msg).await.unwrap();
    close(sub).await;
    let link = t.store.link_by_external_id("bus", "customer", "c-1").await.unwrap().expect("applied");

    // The next reader of the group gets it again: a duplicate, not a second customer.
    let sub = subscribe(&connector).await;
    let again = next(sub.as_ref()).await;
    assert_eq!(again.position, msg.position);
    pipeline.receive_message(sub.as_ref(), &again).await.unwrap();
    sub.done(&again).unwrap();
    close(sub).await;
    let page = t.store.list(&CUSTOMER, &Default::default()).await.unwrap();
    assert_eq!(page.data.len(), 1, "applied once");
    assert_eq!(page.data[0].id, link.record_id);
    let inbox = t.store.inbox("bus", 0, 100).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].outcome, InboxOutcome::Applied);

    // Committed now: a new reader starts after it.
    let second = json!({"entity": "customer", "op": "upsert", "external_id": "c-1", "fields": {"name": "Twice"}});
    kafka.produce("crm.events", Some("customer/c-1"), second.to_string().as_bytes(), &[("id", "crm-2")]).await;
    let sub = subscribe(&connector).await;
    let m = next(sub.as_ref()).await;
    assert_ne!(m.position, msg.position, "the committed message is not read again");
    assert_eq!(m.event.as_ref().unwrap().event_id, "crm-2", "the id header names the event");
    pipeline.receive_message(sub.as_ref(), &m).await.unwrap();
    sub.done(&m).unwrap();
    close(sub).await;
    assert_eq!(t.store.get(&CUSTOMER, &link.record_id).await.unwrap().unwrap().fields["name"], "Twice");
}

async fn a_poison_message_is_recorded_and_passed_and_inbound_changes_are_not_published_back(t: TestStore) {
    let kafka = KafkaSandbox::start(1).unwrap();
    for topic in ["crm.events", "crm.dead", "syncflow.changes"] {
        kafka.create_topic(topic, 1).unwrap();
    }
    let extra = "inbound_topic = \"crm.events\"\ndead_letter_topic = \"crm.dead\"";
    let run = Running::start(&t.store, &bus(&kafka, extra));
    kafka.produce("crm.events", None, b"{not json", &[]).await;
    let bad_email = json!({"event_id": "e-bad", "entity": "customer", "op": "upsert", "external_id": "x-9",
                           "fields": {"name": "Bad", "email": "not-an-address"}});
    kafka.produce("crm.events", None, bad_email.to_string().as_bytes(), &[]).await;
    let good = json!({"event_id": "e-good", "entity": "customer", "op": "upsert", "external_id": "x-1",
                      "fields": {"name": "Good"}});
    kafka.produce("crm.events", None, good.to_string().as_bytes(), &[]).await;
    let deadline = Instant::now() + WAIT;
    let link = loop {
        if let Some(l) = t.store.link_by_external_id("bus", "customer", "x-1").await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "the good message was never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let inbox = t.store.inbox("bus", 0, 100).await.unwrap();
    let outcomes: Vec<(&str, InboxOutcome)> = inbox.iter().map(|r| (r.event_id.as_str(), r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            ("crm.events/0/0", InboxOutcome::Rejected),
            ("e-bad", InboxOutcome::Rejected),
            ("e-good", InboxOutcome::Applied)
        ]
    );
    assert!(inbox[0].remarks.as_deref().unwrap().contains("not JSON"));
    assert_eq!(inbox[0].payload, "{not json");
    let dead = kafka.read("crm.dead", WAIT, |m| m.len() >= 2).await;
    assert_eq!(dead.len(), 2);
    assert!(header(&dead[0], "syncflow-reason").contains("not JSON"));
    assert_eq!(header(&dead[0], "syncflow-source"), "crm.events/0/0");
    assert!(header(&dead[1], "syncflow-reason").contains("email"));

    // Origin rule: the inbound customer is not published back to the changes topic;
    // a later API change (dispatched after it) is.
    let api = t.store.create(&CUSTOMER, &obj(json!({"name": "From API"})), "api").await.unwrap();
    let list = run
        .wait_for(DeliveryFilter { system: Some("bus".into()), ..Default::default() }, |l| {
            l.iter().any(|d| d.record_id == api.id && d.status.is_final())
        })
        .await;
    assert!(list.iter().all(|d| d.record_id != link.record_id), "{list:#?}");
    let changes = kafka.read("syncflow.changes", WAIT, |m| !m.is_empty()).await;
    assert!(changes.iter().all(|m| m.value["change"]["record_id"] != link.record_id.as_str()));
    run.stop().await;
}
