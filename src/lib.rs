//! leadflow: a Kafka stream processor for B2B lead management.
//! See `docs/ARCHITECTURE.md` for the data flow and the module map.

pub mod api;
pub mod codec;
pub mod config;
pub mod events;
pub mod import;
pub mod kafka;
pub mod lead;
pub mod metrics;
pub mod notify;
pub mod nurture;
pub mod pipeline;
pub mod scoring;
pub mod simulate;
pub mod store;
