//! `kind = "kafka"`: hub changes to a topic, delivery outcomes to a status topic,
//! and events from an inbound topic into the hub — at-least-once both ways.
//!
//! * `config` — settings, the `[systems.librdkafka]` pass-through, secrets kept
//!   out of `Debug`.
//! * `message` — keys, envelopes, headers and the inbound schema (pure).
//! * `consumer` — the inbound topic's consumer group as a `Subscription`: an
//!   offset is stored only after the engine has the event durable in the inbox.
//!
//! Invariants: a change is `delivered` only when the broker's delivery report
//! confirms it (idempotent producer, `acks=all`); all of a record's messages share
//! a key, so they keep their order in one partition. See `docs/kafka.md`.

pub mod config;
mod consumer;
pub mod message;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use syncflow_core::sync::Fields;
use syncflow_core::{Entity, ENTITIES};

pub use config::KafkaConfig;

use crate::{
    Connector, DeliveryOutcome, Inward, InwardEvent, Mapped, ObjectPage, Outcome, PolledEvent, PushRequest,
    RemoteError, StatusSink, Subscription, WebhookError,
};

/// Deliveries one `push_batch` publishes together (all in flight at once).
pub const MAX_BATCH: usize = 500;

/// The shared producer, replaced when librdkafka reports a fatal error (an
/// idempotent producer that lost its sequence state refuses every later message).
pub(crate) struct Producer {
    config: ClientConfig,
    current: Mutex<FutureProducer>,
}

impl Producer {
    fn new(config: ClientConfig) -> Result<Producer, String> {
        let p = config.create().map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(Producer { config, current: Mutex::new(p) })
    }

    pub(crate) fn get(&self) -> FutureProducer {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a fatal error: a fresh producer (new producer id) for the next attempt.
    pub(crate) fn renew_if_fatal(&self, system: &str, e: &KafkaError) {
        if e.rdkafka_error_code() != Some(RDKafkaErrorCode::Fatal) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                tracing::warn!(system, error = %e, "Kafka producer hit a fatal error; replaced it");
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = p;
            }
            Err(e) => tracing::error!(system, error = %e, "cannot recreate the Kafka producer"),
        }
    }
}

pub struct KafkaConnector {
    system: String,
    topic: String,
    inbound_topic: Option<String>,
    dead_letter_topic: Option<String>,
    producer: Arc<Producer>,
    consumer_config: ClientConfig,
    message_timeout: Duration,
    status: Option<Arc<StatusPublisher>>,
}

impl KafkaConnector {
    #[allow(clippy::too_many_arguments)]
    fn new(
        system: &str,
        topic: String,
        status_topic: Option<String>,
        inbound_topic: Option<String>,
        dead_letter_topic: Option<String>,
        producer_config: ClientConfig,
        consumer_config: ClientConfig,
        message_timeout: Duration,
    ) -> Result<Self, String> {
        let producer = Arc::new(Producer::new(producer_config)?);
        let status = status_topic
            .map(|topic| Arc::new(StatusPublisher { system: system.to_string(), producer: producer.clone(), topic }));
        Ok(KafkaConnector {
            system: system.to_string(),
            topic,
            inbound_topic,
            dead_letter_topic,
            producer,
            consumer_config,
            message_timeout,
            status,
        })
    }

    pub fn system(&self) -> &str {
        &self.system
    }
}

/// A delivery report's error as a push outcome: a message the broker will never
/// take is dead; anything else (timeouts, leader moves, a broker down) is retried.
fn classify(system: &str, e: &KafkaError) -> Outcome {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
        )
    );
    let reason = format!("{system}: {e}");
    if permanent {
        Outcome::Reject { http_status: None, reason }
    } else {
        Outcome::Retry { http_status: None, reason, retry_after: None }
    }
}

fn headers(pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (k, v)| {
        h.insert(Header { key: k, value: Some(v.as_bytes()) })
    })
}

#[async_trait::async_trait]
impl Connector for KafkaConnector {
    async fn push(&self, req: PushRequest<'_>) -> Outcome {
        self.push_batch(&[req]).await.pop().expect("one outcome per request")
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    /// Enqueues every message first (librdkafka batches them per partition), then
    /// waits for each delivery report.
    async fn push_batch(&self, reqs: &[PushRequest<'_>]) -> Vec<Outcome> {
        let producer = self.producer.get();
        let mut fatal = None;
        let mut pending = Vec::with_capacity(reqs.len());
        for req in reqs {
            let c = req.change;
            let topic = message::topic_for(&self.topic, &c.entity);
            let key = message::key(&c.entity, &c.record_id);
            let value = message::change_value(req);
            let record =
                FutureRecord::to(&topic).key(&key).payload(&value).headers(headers(&message::change_headers(req)));
            pending.push(match producer.send_result(record) {
                Ok(delivery) => Ok((topic, delivery)),
                Err((e, _)) => {
                    let outcome = classify(&self.system, &e);
                    fatal = fatal.or(Some(e));
                    Err(outcome)
                }
            });
        }
        let mut out = Vec::with_capacity(reqs.len());
        for p in pending {
            out.push(match p {
                Err(outcome) => outcome,
                Ok((topic, delivery)) => match delivery.await {
                    Ok(Ok(d)) => Outcome::Delivered {
                        http_status: None,
                        external_id: Some(message::position(&topic, d.partition, d.offset)),
                        link: None,
                    },
                    Ok(Err((e, _))) => {
                        let outcome = classify(&self.system, &e);
                        fatal = fatal.or(Some(e));
                        outcome
                    }
                    Err(_) => Outcome::Retry {
                        http_status: None,
                        reason: format!("{}: the producer dropped the message", self.system),
                        retry_after: None,
                    },
                },
            });
        }
        if let Some(e) = fatal {
            self.producer.renew_if_fatal(&self.system, &e);
        }
        out
    }

    fn uses_links(&self) -> bool {
        false
    }

    fn inward(&self) -> Option<&dyn Inward> {
        self.inbound_topic.is_some().then_some(self as &dyn Inward)
    }

    fn push_timeout(&self) -> Option<Duration> {
        Some(config::push_timeout(self.message_timeout))
    }

    fn status_sink(&self) -> Option<Arc<dyn StatusSink>> {
        self.status.clone().map(|s| s as Arc<dyn StatusSink>)
    }
}

/// Publishes delivery outcomes to the status topic.
struct StatusPublisher {
    system: String,
    producer: Arc<Producer>,
    topic: String,
}

#[async_trait::async_trait]
impl StatusSink for StatusPublisher {
    async fn publish(&self, outcomes: &[DeliveryOutcome]) -> Result<(), RemoteError> {
        let producer = self.producer.get();
        let failed = |e: KafkaError| {
            self.producer.renew_if_fatal(&self.system, &e);
            RemoteError(format!("status topic {}: {e}", self.topic))
        };
        let mut pending = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let key = message::key(&o.entity, &o.record_id);
            let value = message::status_value(o);
            let h = headers(&[("id", message::status_id(o)), ("content-type", message::CONTENT_TYPE.into())]);
            let record = FutureRecord::to(&self.topic).key(&key).payload(&value).headers(h);
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => return Err(failed(e)),
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(failed(e)),
                Err(_) => return Err(RemoteError(format!("status topic {}: message dropped", self.topic))),
            }
        }
        Ok(())
    }
}

/// Every field of each entity: an inbound message may set any of them.
fn all_fields(entity: &'static Entity) -> &'static [&'static str] {
    static NAMES: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    let names =
        NAMES.get_or_init(|| ENTITIES.iter().map(|e| (e.name, e.fields.iter().map(|f| f.name).collect())).collect());
    names.get(entity.name).map_or(&[], Vec::as_slice)
}

fn unsupported(what: &str) -> RemoteError {
    RemoteError(format!("a Kafka topic cannot {what}; events arrive on the inbound topic"))
}

#[async_trait::async_trait]
impl Inward for KafkaConnector {
    fn parse_webhook(
        &self,
        _headers: &reqwest::header::HeaderMap,
        _body: &[u8],
        _now: i64,
    ) -> Result<InwardEvent, WebhookError> {
        Err(WebhookError::NotConfigured)
    }

    fn parse_stored(&self, payload: &str) -> Result<InwardEvent, String> {
        message::parse_stored(payload)
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    fn start_position(&self) -> String {
        String::new()
    }

    async fn events_since(&self, _position: &str) -> Result<Vec<PolledEvent>, RemoteError> {
        Err(unsupported("be polled"))
    }

    async fn fetch(&self, _entity: &'static Entity, _external_id: &str) -> Result<Option<Value>, RemoteError> {
        Err(unsupported("be asked for one object"))
    }

    fn synced_fields(&self, entity: &'static Entity) -> &'static [&'static str] {
        all_fields(entity)
    }

    fn to_hub(&self, _entity: &'static Entity, object: &Value) -> Mapped {
        let fields: Fields = object["fields"].as_object().map(|f| f.clone().into_iter().collect()).unwrap_or_default();
        Mapped { fields, refs: Vec::new(), owned: false }
    }

    fn hub_id(&self, object: &Value) -> Option<String> {
        object["id"].as_str().map(str::to_string)
    }

    async fn list_objects(&self, _entity: &'static Entity, _after: Option<&str>) -> Result<ObjectPage, RemoteError> {
        Err(unsupported("list objects for backfill"))
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn Subscription>>, RemoteError> {
        let Some(topic) = &self.inbound_topic else { return Ok(None) };
        let sub = consumer::KafkaSubscription::new(
            &self.system,
            &self.consumer_config,
            topic,
            self.dead_letter_topic.clone(),
            self.producer.clone(),
        )?;
        Ok(Some(Box::new(sub)))
    }

    fn ordered(&self) -> bool {
        true
    }
}
