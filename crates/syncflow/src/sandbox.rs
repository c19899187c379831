//! `syncflow sandbox <system>`: runs one of the loopback stand-ins as a process, so
//! any client (curl, a script, another hub) can be pointed at it. The first line of
//! output is the address to use (for Kafka: the bootstrap servers); Ctrl-C stops it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use syncflow_sandbox::salesforce::{SalesforceOptions, SalesforceSandbox};
use syncflow_sandbox::{KafkaSandbox, Receiver, StripeOptions, StripeSandbox};

#[derive(clap::Subcommand)]
pub enum Sandbox {
    /// A Stripe stand-in (customers, events, signed webhooks, idempotency keys).
    Stripe {
        #[arg(long, default_value = "127.0.0.1:12111")]
        listen: SocketAddr,
        /// Requests per second before 429s.
        #[arg(long)]
        rate_limit: Option<f64>,
    },
    /// A Salesforce stand-in: OAuth (client credentials), sObjects, upsert by external
    /// id, Collections, query/queryAll, limits; `/_sandbox/ui/…` edits as another user.
    Salesforce {
        #[arg(long, default_value = "127.0.0.1:12113")]
        listen: SocketAddr,
        #[arg(long, default_value = "syncflow-sandbox")]
        client_id: String,
        #[arg(long, default_value = "sandbox-secret")]
        client_secret: String,
        /// The org's daily API allowance.
        #[arg(long, default_value_t = 100_000)]
        daily_limit: u64,
    },
    /// A Kafka cluster: librdkafka's mock cluster on 127.0.0.1 (the real wire
    /// protocol, in memory) for `kind = "kafka"` systems and `kcat`.
    Kafka {
        /// Number of brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Topics to create first, as NAME or NAME:PARTITIONS (others are auto-created).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// A JSON receiver for `kind = "http"` systems (verifies `Syncflow-Signature` with --secret).
    Receiver {
        #[arg(long, default_value = "127.0.0.1:12112")]
        listen: SocketAddr,
        #[arg(long)]
        secret: Option<String>,
    },
}

pub async fn run(which: Sandbox) -> Result<()> {
    match which {
        Sandbox::Stripe { listen, rate_limit } => {
            let options = StripeOptions { rate_limit, ..StripeOptions::default() };
            let s = StripeSandbox::start(listen, options).await.with_context(|| format!("listening on {listen}"))?;
            println!("{}", s.url());
            eprintln!(
                "Stripe sandbox: any sk_test_… key works; POST /_config/webhooks/<id> (url, secret) adds a webhook"
            );
        }
        Sandbox::Salesforce { listen, client_id, client_secret, daily_limit } => {
            let options = SalesforceOptions { client_id, client_secret, daily_limit, ..SalesforceOptions::default() };
            let s =
                SalesforceSandbox::start(listen, options).await.with_context(|| format!("listening on {listen}"))?;
            println!("{}", s.url());
            eprintln!(
                "Salesforce sandbox: login_url and instance_url are the address above; POST /services/oauth2/token"
            );
        }
        Sandbox::Kafka { brokers, topics } => {
            let kafka = kafka(brokers, &topics)?;
            println!("{}", kafka.bootstrap());
            eprintln!("Kafka mock cluster ({brokers} broker(s), in memory); point `brokers` or kcat -b at it");
            tokio::signal::ctrl_c().await?;
            tokio::task::spawn_blocking(move || drop(kafka)).await?;
            return Ok(());
        }
        Sandbox::Receiver { listen, secret } => {
            let r = Receiver::start_on(listen, secret.as_deref(), Duration::ZERO)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("{}", r.url(""));
            eprintln!("receiver: POST any path; GET /_received lists what arrived");
        }
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn kafka(brokers: i32, topics: &[String]) -> Result<KafkaSandbox> {
    if !(1..=16).contains(&brokers) {
        bail!("--brokers must be 1 to 16");
    }
    let kafka = KafkaSandbox::start(brokers).map_err(|e| anyhow!("starting the mock cluster: {e}"))?;
    for t in topics {
        let (name, partitions) = match t.split_once(':') {
            Some((n, p)) => (n, p.parse().map_err(|_| anyhow!("--topic {t}: partitions must be a number"))?),
            None => (t.as_str(), 1),
        };
        kafka.create_topic(name, partitions).map_err(|e| anyhow!("creating topic {name}: {e}"))?;
    }
    Ok(kafka)
}
