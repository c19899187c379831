//! The inbound topic's consumer group as a `Subscription`. librdkafka commits in
//! the background and on close, but only offsets we stored — and we store one
//! only when the engine says the message is durable in the inbox (`done`). A
//! crash before that re-reads the message; the inbox drops the repeat.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;

use super::message::{self, parse_inbound, parse_position};
use super::Producer;
use crate::{RemoteError, SubscribedMessage, Subscription};

pub(crate) struct KafkaSubscription {
    system: String,
    consumer: StreamConsumer,
    dead_letter_topic: Option<String>,
    producer: Arc<Producer>,
}

impl KafkaSubscription {
    pub(crate) fn new(
        system: &str,
        config: &ClientConfig,
        topic: &str,
        dead_letter_topic: Option<String>,
        producer: Arc<Producer>,
    ) -> Result<Self, RemoteError> {
        let consumer: StreamConsumer =
            config.create().map_err(|e| RemoteError(format!("{system}: cannot create the Kafka consumer: {e}")))?;
        consumer.subscribe(&[topic]).map_err(|e| RemoteError(format!("{system}: cannot subscribe to {topic}: {e}")))?;
        Ok(KafkaSubscription { system: system.to_string(), consumer, dead_letter_topic, producer })
    }
}

#[async_trait::async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&self) -> Result<SubscribedMessage, RemoteError> {
        let m = self.consumer.recv().await.map_err(|e| RemoteError(format!("{}: {e}", self.system)))?;
        let position = message::position(m.topic(), m.partition(), m.offset());
        let id_header = m.headers().and_then(|h| {
            h.iter().find(|h| h.key == "id").and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
        });
        let fallback_id = id_header.filter(|v| !v.is_empty()).unwrap_or(&position).to_string();
        let at = m.timestamp().to_millis().map_or_else(|| chrono::Utc::now().timestamp(), |ms| ms / 1000);
        let bytes = m.payload().unwrap_or_default();
        let (event, payload) = match parse_inbound(bytes, &fallback_id, at) {
            Ok((event, stored)) => (Ok(event), stored),
            Err(why) => (Err(why), String::from_utf8_lossy(bytes).into_owned()),
        };
        Ok(SubscribedMessage { position, payload, event })
    }

    fn done(&self, msg: &SubscribedMessage) -> Result<(), RemoteError> {
        let (topic, partition, offset) =
            parse_position(&msg.position).ok_or_else(|| RemoteError(format!("bad position {}", msg.position)))?;
        // Stores offset + 1: the next message to read.
        self.consumer
            .store_offset(topic, partition, offset)
            .map_err(|e| RemoteError(format!("{}: cannot store offset {}: {e}", self.system, msg.position)))
    }

    async fn reject(&self, msg: &SubscribedMessage, why: &str) -> Result<(), RemoteError> {
        let Some(topic) = &self.dead_letter_topic else { return Ok(()) };
        let h = super::headers(&[
            ("syncflow-reason", why.to_string()),
            ("syncflow-source", msg.position.clone()),
            ("syncflow-system", self.system.clone()),
        ]);
        let record = FutureRecord::to(topic).key(&msg.position).payload(&msg.payload).headers(h);
        match self.producer.get().send(record, Duration::from_secs(5)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.producer.renew_if_fatal(&self.system, &e);
                Err(RemoteError(format!("dead-letter topic {topic}: {e}")))
            }
        }
    }
}
