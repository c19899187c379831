//! `kind = "kafka"` settings: brokers, topics, the consumer group, and a
//! `[systems.librdkafka]` table handed to librdkafka as is (SASL/SSL settings,
//! tuning). Values that look secret never reach `Debug` output.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::KafkaConnector;

/// The changes topic when none is configured.
pub const DEFAULT_TOPIC: &str = "syncflow.changes";
/// How long librdkafka may try to deliver one message (its `message.timeout.ms`)
/// unless the librdkafka table says otherwise.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;

/// The longest one push may take: librdkafka gives up on a message after
/// `message.timeout.ms`, plus a margin for the delivery report to arrive.
pub fn push_timeout(message_timeout: Duration) -> Duration {
    message_timeout + Duration::from_secs(5)
}

/// `push_timeout` read from a `[[systems]]` table of kind `kafka` (for the engine's
/// lease check, before the connector is built).
pub fn push_timeout_of(settings: &toml::Table) -> Duration {
    let ms = settings
        .get("librdkafka")
        .and_then(|t| t.get("message.timeout.ms"))
        .and_then(|v| v.as_integer().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(DEFAULT_MESSAGE_TIMEOUT_MS);
    push_timeout(Duration::from_millis(ms))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Where changes go, default `syncflow.changes`; `{entity}` is replaced by the
    /// change's entity (`syncflow.{entity}.changes`).
    pub topic: Option<String>,
    /// Where the final outcome of every delivery to every system goes; none: not published.
    pub status_topic: Option<String>,
    /// Events to apply to the hub (the documented inbound schema); none: outward only.
    pub inbound_topic: Option<String>,
    /// Consumer group of the inbound topic, default `syncflow-<system>`.
    pub group_id: Option<String>,
    /// Where inbound messages that cannot be applied are copied, with the reason.
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties, passed through (`security.protocol`, `sasl.*`, …).
    /// Values may be strings, numbers or booleans; secrets come from `${VAR}`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, toml::Value>,
}

/// Whether a librdkafka property holds a secret (its value is never printed).
pub(crate) fn is_secret(key: &str) -> bool {
    ["password", "secret", "key", "token", "jaas", "pem", "credential"].iter().any(|w| key.contains(w))
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let librdkafka: BTreeMap<&str, String> = self
            .librdkafka
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***".to_string() } else { v.to_string() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("status_topic", &self.status_topic)
            .field("inbound_topic", &self.inbound_topic)
            .field("group_id", &self.group_id)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("librdkafka", &librdkafka)
            .finish()
    }
}

/// Kafka topic names: letters, digits, `.`, `_`, `-` (at most 249).
fn check_topic(what: &str, name: &str) -> Result<(), String> {
    let plain = name.replace("{entity}", "x");
    if plain.is_empty()
        || plain.len() > 249
        || !plain.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("`{what}` = `{name}` is not a valid topic name (letters, digits, . _ -)"));
    }
    Ok(())
}

impl KafkaConfig {
    pub fn build(self, system: &str) -> Result<KafkaConnector, String> {
        if self.brokers.trim().is_empty() {
            return Err("`brokers` must not be empty (host:port[,host:port])".into());
        }
        let topic = self.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.to_string());
        check_topic("topic", &topic)?;
        for (what, t) in [
            ("status_topic", &self.status_topic),
            ("inbound_topic", &self.inbound_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ] {
            if let Some(t) = t {
                if t.contains("{entity}") {
                    return Err(format!("`{what}` cannot use {{entity}}"));
                }
                check_topic(what, t)?;
            }
        }
        if self.inbound_topic.is_some() && self.inbound_topic == self.status_topic {
            return Err("`inbound_topic` and `status_topic` must differ".into());
        }
        let mut common = ClientConfig::new();
        common.set("bootstrap.servers", &self.brokers);
        common.set("client.id", format!("syncflow-{system}"));
        for (k, v) in &self.librdkafka {
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(format!("librdkafka.{k} must be a string, number or boolean")),
            };
            common.set(k, value);
        }
        let message_timeout = match common.get("message.timeout.ms") {
            Some(ms) => ms.parse::<u64>().map_err(|_| "librdkafka.message.timeout.ms must be a number".to_string())?,
            None => DEFAULT_MESSAGE_TIMEOUT_MS,
        };

        let mut producer = common.clone();
        // At-least-once, in order per partition, no duplicates from internal retries.
        producer.set("enable.idempotence", "true");
        producer.set("acks", "all");
        producer.set("message.timeout.ms", message_timeout.to_string());
        if producer.get("linger.ms").is_none() {
            producer.set("linger.ms", "5");
        }
        if producer.get("compression.type").is_none() {
            producer.set("compression.type", "none");
        }

        let mut consumer = common;
        consumer.set("group.id", self.group_id.clone().unwrap_or_else(|| format!("syncflow-{system}")));
        // Offsets are stored by us after the inbox has the event, committed by
        // librdkafka in the background and on close.
        consumer.set("enable.auto.commit", "true");
        consumer.set("enable.auto.offset.store", "false");
        if consumer.get("auto.offset.reset").is_none() {
            consumer.set("auto.offset.reset", "earliest");
        }
        if consumer.get("auto.commit.interval.ms").is_none() {
            consumer.set("auto.commit.interval.ms", "1000");
        }
        for k in ["enable.idempotence", "acks", "message.timeout.ms", "linger.ms", "compression.type"] {
            consumer.remove(k);
        }
        KafkaConnector::new(
            system,
            topic,
            self.status_topic,
            self.inbound_topic,
            self.dead_letter_topic,
            producer,
            consumer,
            Duration::from_millis(message_timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<KafkaConfig, toml::de::Error> {
        toml::from_str(&format!("brokers = \"127.0.0.1:9\"\n{extra}"))
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = config("[librdkafka]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"hub\"").unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("hub"));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let err = |extra: &str| config(extra).unwrap().build("bus").err().unwrap();
        assert!(err("topic = \"a b\"").contains("not a valid topic name"));
        assert!(err("status_topic = \"s.{entity}\"").contains("cannot use {entity}"));
        assert!(err("inbound_topic = \"x\"\nstatus_topic = \"x\"").contains("must differ"));
        assert!(err("[librdkafka]\n\"no.such.property\" = 1").contains("cannot create the Kafka producer"));
        assert!(config("colour = \"red\"").is_err(), "unknown keys are refused");
        let ok = config("topic = \"hub.{entity}.changes\"").unwrap().build("bus").unwrap();
        assert_eq!(message_topic(&ok), "hub.{entity}.changes");
    }

    fn message_topic(c: &KafkaConnector) -> &str {
        &c.topic
    }
}
