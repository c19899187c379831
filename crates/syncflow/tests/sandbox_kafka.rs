//! `syncflow sandbox kafka` as a process: the first line is a bootstrap address
//! that a Kafka client can produce to and consume from.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use syncflow_sandbox::KafkaClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_kafka_prints_a_working_bootstrap_address_first() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["sandbox", "kafka", "--topic", "demo:2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("a first line in time")
    .unwrap()
    .unwrap();
    let bootstrap = first.trim().to_string();
    assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap:?}");
    let client = KafkaClient::new(&bootstrap);
    client.produce("demo", Some("k"), br#"{"hello":"kafka"}"#, &[("id", "1")]).await;
    let got = client.read("demo", Duration::from_secs(20), |m| !m.is_empty()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value["hello"], "kafka");
    assert_eq!(got[0].headers["id"], "1");
}
