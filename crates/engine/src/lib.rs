//! Syncflow's outward delivery engine: the dispatcher turns changes into
//! deliveries (one per subscribed system, never the origin), and per-system
//! workers perform them through connectors with rate limits, backoff, dead letters
//! and status callbacks. All state lives in the store's transaction table, so any
//! node can pick up where another stopped.

pub mod config;
mod engine;
pub mod policy;

pub use config::SystemConfig;
pub use engine::{Engine, EngineError};
