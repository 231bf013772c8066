//! The delivery worker (`leadflow notify`).

use std::fmt::Display;
use std::time::Duration;

use tracing::{debug, trace, warn};

use super::InternalEvent;
use crate::metrics::Metrics;

/// The worker's assignment size, read on each commit tick.
pub struct AssignedPartitionsObserved {
    pub partitions: usize,
}

impl InternalEvent for AssignedPartitionsObserved {
    fn emit(self, m: &Metrics) {
        m.assigned_partitions.set(self.partitions as i64);
    }
}

/// A message whose message_id was already handled: not sent again.
pub struct DeliveryDuplicate<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for DeliveryDuplicate<'_> {
    fn emit(self, m: &Metrics) {
        debug!(message_id = %self.message_id, "message already handled; not sent again");
        m.notify_dedupe_hits.inc();
    }
}

/// A message's outcome recorded: sent, failed, bounced or dropped.
pub struct MessageHandled<'a> {
    pub message_id: &'a str,
    pub channel: &'a str,
    pub template: &'a str,
    pub outcome: &'a str,
}

impl InternalEvent for MessageHandled<'_> {
    fn emit(self, m: &Metrics) {
        debug!(message_id = %self.message_id, channel = self.channel, template = %self.template, outcome = self.outcome, "message handled");
        m.notify_messages
            .with_label_values(&[self.channel, self.template, self.outcome])
            .inc();
    }
}

/// A provider answered a request (or it failed without an answer).
pub struct ProviderResponded<'a> {
    pub provider: &'a str,
    /// `2xx`, `429`, `4xx` or `error`.
    pub status: &'a str,
    pub duration: Duration,
}

impl InternalEvent for ProviderResponded<'_> {
    fn emit(self, m: &Metrics) {
        trace!(
            provider = self.provider,
            status = self.status,
            ms = self.duration.as_millis() as u64,
            "provider responded"
        );
        m.notify_provider_seconds
            .with_label_values(&[self.provider, self.status])
            .observe(self.duration.as_secs_f64());
    }
}

/// A provider request failed transiently; it is repeated after `retry_in`.
pub struct ProviderRetry<'a> {
    pub message_id: &'a str,
    pub channel: &'a str,
    pub template: &'a str,
    pub attempt: u32,
    pub error: &'a dyn Display,
    pub retry_in: Duration,
}

impl InternalEvent for ProviderRetry<'_> {
    fn emit(self, m: &Metrics) {
        warn!(message_id = %self.message_id, attempt = self.attempt, error = %self.error, retry_in_ms = self.retry_in.as_millis() as u64, "provider request failed; retrying");
        m.notify_retries
            .with_label_values(&[self.channel, self.template])
            .inc();
    }
}

/// A send waited for its channel's rate limit.
pub struct RateLimitWaited<'a> {
    pub channel: &'a str,
    pub wait: Duration,
}

impl InternalEvent for RateLimitWaited<'_> {
    fn emit(self, m: &Metrics) {
        trace!(
            channel = self.channel,
            ms = self.wait.as_millis() as u64,
            "waiting for the rate limit"
        );
        m.notify_rate_limit_waits
            .with_label_values(&[self.channel])
            .inc();
        m.notify_rate_limit_wait_seconds
            .with_label_values(&[self.channel])
            .inc_by(self.wait.as_secs_f64());
    }
}
