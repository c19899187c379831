//! Local stand-ins of external systems, bound to loopback only: used by tests,
//! benchmarks and the demo so that every behaviour crossing a process boundary is
//! exercised over real HTTP.

pub mod receiver;
pub mod salesforce;
pub mod stripe;

pub use receiver::{Receiver, Reply};
pub use salesforce::{SalesforceOptions, SalesforceSandbox, SalesforceStats};
pub use stripe::{StripeOptions, StripeSandbox};
