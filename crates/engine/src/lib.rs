//! Syncflow's outward delivery engine: the dispatcher turns changes into
//! deliveries (one per subscribed system, never the origin), and per-system
//! workers perform them through connectors with rate limits, backoff, dead letters
//! and status callbacks; and the inward pipeline every two-way system shares
//! (`inward`, `backfill`). All state lives in the store, so any node can pick up
//! where another stopped.

pub mod backfill;
mod breaker;
pub mod config;
mod engine;
pub mod inward;
mod log;
pub mod policy;
pub mod reconcile;
pub mod retention;
pub mod status;
pub mod subscription;

pub use breaker::BreakerSettings;
pub use config::SystemConfig;
pub use engine::{ClusterSettings, Engine, EngineError};
pub use inward::{InwardError, Pipeline, PollReport, WebhookError, WebhookReceipt};
pub use retention::RetentionSettings;
