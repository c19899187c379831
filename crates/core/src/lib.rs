//! Syncflow's domain: which entities exist, how their fields validate, hub ids, and
//! the record and change types every other crate shares. No I/O lives here.

pub mod clock;
pub mod entity;
pub mod error;
pub mod id;
pub mod metrics;
pub mod record;
pub mod sync;

pub use clock::{Clock, ConflictPolicy};
pub use entity::{Entity, FieldDef, FieldType, Storage, CUSTOMER, ENTITIES, INVOICE, STOCK_READING};
pub use error::FieldError;
pub use record::{now_timestamp, Change, Op, Record};
