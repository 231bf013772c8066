//! leadflow: a Kafka stream processor for B2B lead management.
//! See `docs/ARCHITECTURE.md` for the data flow and the module map.

pub mod analytics;
pub mod api;
pub mod codec;
pub mod config;
pub mod core;
pub mod events;
pub mod forecast;
pub mod gdpr;
pub mod import;
pub mod kafka;
pub mod metrics;
pub mod ml;
pub mod notify;
pub mod pipeline;
pub mod registry;
pub mod retry;
pub mod simulate;
pub mod store;
pub mod templates;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
