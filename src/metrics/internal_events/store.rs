//! The database behind every consumer.

use std::fmt::Display;
use std::time::Duration;

use tracing::warn;

use super::InternalEvent;
use crate::metrics::Metrics;

/// A store operation failed transiently and is retried after `retry_in`.
pub struct StoreRetry<'a> {
    /// The operation, as the log should name it.
    pub what: &'a str,
    pub error: &'a dyn Display,
    pub retry_in: Duration,
}

impl InternalEvent for StoreRetry<'_> {
    fn emit(self, m: &Metrics) {
        warn!(error = %self.error, retry_in_ms = self.retry_in.as_millis() as u64, "{}: store unavailable, retrying", self.what);
        m.store_retries.inc();
    }
}
