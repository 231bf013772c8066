//! The processing loop: effectively-once with the database as the record of
//! truth.
//!
//! - **Assignment.** The consumer's rebalance callback reads the next offset
//!   of every assigned partition from the database and assigns once with
//!   those offsets (as rust-arroyo does); a partition the database has never
//!   seen starts from the beginning. Kafka's committed offsets are written
//!   too, after each batch, but only for lag monitoring.
//! - **Order.** Each partition group (partition p of the co-partitioned
//!   input topics) is merged by event time ([`merge`]), so a lead's events
//!   are applied in one deterministic order.
//! - **Batches.** The merged events are applied by the pure core; the touched
//!   leads, the output events (outbox) and each partition's offset advance go
//!   into one database transaction. The advance is a compare-and-set: an
//!   instance that lost a partition without noticing is fenced off and stops.
//! - **Outputs.** The [`outbox`] relay publishes committed outputs with an
//!   idempotent producer and deletes them after the broker's ack.
//! - **Timers.** Between batches the loop fires the nurturing timers due by
//!   its clock in its partitions ([`timers`]), in transactions fenced like
//!   batches.
//! - **Forecasts.** The owner of partition 0 makes the scheduled forecasts
//!   when its clock passes a slot ([`forecasts`]), stored and put in the
//!   outbox in one transaction fenced like a timer round.
//! - **Analytics history.** The same owner stores each UTC day's analytics
//!   rows once that clock has passed the day ([`analytics`]), fenced alike.
//! - **Bad input.** A message that cannot be decoded goes to the dead-letter
//!   topic with its reason, and its offset is committed with the batch. If
//!   most of a window of messages is bad, the processor stops: that is a bad
//!   deploy, not bad data. Transient failures (database, broker, registry) are
//!   retried with backoff and never dead-lettered.

pub mod analytics;
mod assignment;
mod batch;
pub mod commit;
mod consume;
mod decode;
pub mod forecasts;
pub mod merge;
pub mod models;
pub mod outbox;
pub mod replay;
mod retention;
pub mod timers;

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::kafka::deadletter::TooManyInvalid;
use crate::store::StoreError;

pub use assignment::Assignment;
pub use consume::Pipeline;
pub use decode::check_event_time;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "{invalid} of the last {window} messages could not be processed (most recent: {last_reason}); \
         stopping, as this looks like a bad deploy or a wrong topic rather than bad data. \
         Raise processor.dead_letter_max_ratio if it is expected"
    )]
    TooManyInvalid {
        invalid: usize,
        window: usize,
        last_reason: String,
    },
    #[error("the processor needs a multi-threaded tokio runtime (the rebalance callback reads the store)")]
    Runtime,
    #[error("partition assignment failed: {0}")]
    Assignment(String),
}

impl From<TooManyInvalid> for PipelineError {
    fn from(e: TooManyInvalid) -> Self {
        PipelineError::TooManyInvalid {
            invalid: e.invalid,
            window: e.window,
            last_reason: e.last_reason,
        }
    }
}

/// Counters of one run, logged on exit and returned to callers and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub consumed: u64,
    pub applied: u64,
    pub duplicates: u64,
    /// Events for erased leads, dropped (GDPR).
    pub dropped_after_erasure: u64,
    pub dead_lettered: u64,
    pub outputs: u64,
    pub batches: u64,
}

pub struct RunOptions {
    /// Stop after this long without a new message (for scripts and tests).
    pub exit_when_idle: Option<Duration>,
}
