//! Local stand-ins of external systems, bound to loopback only: used by tests,
//! benchmarks and the demo so that every behaviour crossing a process boundary is
//! exercised over real HTTP (Kafka: librdkafka's mock cluster, the real wire protocol).

pub mod kafka;
pub mod receiver;
pub mod salesforce;
pub mod stripe;

pub use kafka::{KafkaClient, KafkaMessage, KafkaSandbox};
pub use receiver::{Receiver, Reply};
pub use salesforce::{SalesforceOptions, SalesforceSandbox, SalesforceStats};
pub use stripe::{StripeOptions, StripeSandbox};
