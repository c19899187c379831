//! A Kafka stand-in: librdkafka's in-process mock cluster (real wire protocol,
//! loopback only), plus small producer/consumer helpers for tests and benches.
//!
//! The mock cluster is not `Send`, so one thread owns it and takes commands
//! (topics, a broker going down) over a channel; dropping the sandbox stops it.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

enum Command {
    CreateTopic(String, i32),
    Broker(bool),
}

type Reply = mpsc::Sender<Result<(), String>>;

pub struct KafkaSandbox {
    bootstrap: String,
    commands: Option<mpsc::Sender<(Command, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

/// One message as read back from a topic.
#[derive(Debug, Clone)]
pub struct KafkaMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

impl KafkaSandbox {
    /// Starts a mock cluster of `brokers` brokers on 127.0.0.1.
    pub fn start(brokers: i32) -> Result<KafkaSandbox, String> {
        let (commands, rx) = mpsc::channel::<(Command, Reply)>();
        let (ready, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kafka-sandbox".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(cluster.bootstrap_servers()));
                while let Ok((command, reply)) = rx.recv() {
                    let result = match command {
                        Command::CreateTopic(topic, partitions) => cluster.create_topic(&topic, partitions, 1),
                        Command::Broker(up) => {
                            (1..=brokers)
                                .try_for_each(|b| if up { cluster.broker_up(b) } else { cluster.broker_down(b) })
                        }
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = started.recv().map_err(|e| e.to_string())??;
        Ok(KafkaSandbox { bootstrap, commands: Some(commands), thread: Some(thread) })
    }

    /// `host:port,…` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn command(&self, c: Command) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.commands.as_ref().ok_or("stopped")?.send((c, reply)).map_err(|e| e.to_string())?;
        answer.recv().map_err(|e| e.to_string())?
    }

    /// Creates `topic` with `partitions` partitions (others are auto-created).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.command(Command::CreateTopic(topic.to_string(), partitions))
    }

    /// Takes every broker down (connections refused) or back up.
    pub fn set_brokers_up(&self, up: bool) -> Result<(), String> {
        self.command(Command::Broker(up))
    }

    /// A client of this cluster.
    pub fn client(&self) -> KafkaClient {
        KafkaClient::new(&self.bootstrap)
    }

    /// Publishes one message and waits for its delivery report.
    pub async fn produce(&self, topic: &str, key: Option<&str>, value: &[u8], headers: &[(&str, &str)]) {
        self.client().produce(topic, key, value, headers).await
    }

    /// Reads `topic` from the beginning until `done` holds for what was read (or
    /// `timeout` passes), with a fresh consumer group.
    pub async fn read(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[KafkaMessage]) -> bool,
    ) -> Vec<KafkaMessage> {
        self.client().read(topic, timeout, done).await
    }
}

/// Test helpers against any Kafka cluster (a sandbox in another process too).
pub struct KafkaClient {
    bootstrap: String,
}

impl KafkaClient {
    pub fn new(bootstrap: &str) -> KafkaClient {
        KafkaClient { bootstrap: bootstrap.to_string() }
    }

    /// A producer for tests (acks=all).
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .expect("producer for the sandbox")
    }

    /// Publishes one message and waits for its delivery report.
    pub async fn produce(&self, topic: &str, key: Option<&str>, value: &[u8], headers: &[(&str, &str)]) {
        let producer = self.producer();
        let h = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(*v) }));
        let mut record = FutureRecord::to(topic).payload(value).headers(h);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(10)).await.expect("sandbox produce");
    }

    /// Reads `topic` from the beginning until `done` holds for what was read (or
    /// `timeout` passes), with a fresh consumer group.
    pub async fn read(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[KafkaMessage]) -> bool,
    ) -> Vec<KafkaMessage> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("sandbox-reader-{}", rand::random::<u64>()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "200")
            .create()
            .expect("consumer for the sandbox");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Ok(Ok(m)) = tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await else {
                continue;
            };
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(KafkaMessage {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
                headers,
            });
        }
        tokio::task::spawn_blocking(move || drop(consumer)).await.ok();
        out
    }
}

impl Drop for KafkaSandbox {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
