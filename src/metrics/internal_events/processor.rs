//! The processor's consume, commit and relay loop.

use std::fmt::Display;
use std::time::Duration;

use tracing::{debug, error, info, trace, warn};

use super::InternalEvent;
use crate::metrics::Metrics;

/// A message read from an input topic, before decoding.
pub struct EventReceived<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl InternalEvent for EventReceived<'_> {
    fn emit(self, m: &Metrics) {
        trace!(topic = %self.topic, partition = self.partition, offset = self.offset, "message received");
        m.events_consumed.with_label_values(&[self.topic]).inc();
    }
}

/// The Kafka consumer reported an error while fetching; it goes on.
pub struct ConsumerError<'a> {
    /// `processor` or `notify`.
    pub consumer: &'static str,
    pub error: &'a dyn Display,
}

impl InternalEvent for ConsumerError<'_> {
    fn emit(self, m: &Metrics) {
        warn!(consumer = self.consumer, error = %self.error, "consumer error");
        m.consumer_errors.with_label_values(&[self.consumer]).inc();
    }
}

/// An assigned partition's first message was not at the stored offset.
pub struct LogDiscontinuity<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub stored_next_offset: i64,
    pub first_offset: i64,
}

impl InternalEvent for LogDiscontinuity<'_> {
    fn emit(self, m: &Metrics) {
        warn!(
            topic = %self.topic,
            partition = self.partition,
            stored_next_offset = self.stored_next_offset,
            first_offset = self.first_offset,
            "the log does not continue where the store left off (topic recreated, data lost or expired); applying from here"
        );
        m.log_discontinuities.with_label_values(&[self.topic]).inc();
    }
}

/// A batch of input events committed to the store with its outbox rows.
pub struct BatchCommitted {
    pub events: usize,
    pub applied: u64,
    pub duplicates: u64,
    /// Events for erased leads, dropped.
    pub dropped_after_erasure: u64,
    /// Leads this batch erased.
    pub erased: usize,
    pub outputs: usize,
    pub duration: Duration,
}

impl InternalEvent for BatchCommitted {
    fn emit(self, m: &Metrics) {
        debug!(
            events = self.events,
            applied = self.applied,
            duplicates = self.duplicates,
            dropped_after_erasure = self.dropped_after_erasure,
            erased = self.erased,
            outputs = self.outputs,
            ms = self.duration.as_millis() as u64,
            "batch committed"
        );
        if self.erased > 0 {
            info!(leads = self.erased, "leads erased");
        }
        m.events_applied.inc_by(self.applied);
        m.events_duplicate.inc_by(self.duplicates);
        m.events_dropped_erased.inc_by(self.dropped_after_erasure);
        m.leads_erased.inc_by(self.erased as u64);
        m.outputs_written.inc_by(self.outputs as u64);
        m.outbox_depth.add(self.outputs as i64);
        m.batch_commit_seconds.observe(self.duration.as_secs_f64());
        m.batch_events.observe(self.events as f64);
    }
}

/// A round of due nurturing timers committed.
pub struct TimersFired {
    pub leads: usize,
    pub outputs: usize,
}

impl InternalEvent for TimersFired {
    fn emit(self, m: &Metrics) {
        if self.leads > 0 {
            debug!(
                leads = self.leads,
                outputs = self.outputs,
                "nurturing timers fired"
            );
        }
        m.timers_fired.inc_by(self.leads as u64);
        m.outputs_written.inc_by(self.outputs as u64);
        m.outbox_depth.add(self.outputs as i64);
    }
}

/// Milliseconds since the epoch as an RFC 3339 time, for a log line.
fn utc(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).map_or(millis.to_string(), |t| t.to_rfc3339())
}

/// A forecast slot's forecasts committed: the kinds made and, with the
/// reason, the kinds the data did not allow.
pub struct ForecastsMade<'a> {
    /// The slot, in milliseconds since the epoch.
    pub at: i64,
    pub made: &'a [String],
    pub not_made: &'a [(String, String)],
}

impl InternalEvent for ForecastsMade<'_> {
    fn emit(self, m: &Metrics) {
        let slot = utc(self.at);
        info!(%slot, made = ?self.made, "scheduled forecasts made");
        for kind in self.made {
            m.forecasts_made.with_label_values(&[kind]).inc();
        }
        for (kind, reason) in self.not_made {
            info!(%slot, %kind, %reason, "scheduled forecast not made");
            m.forecasts_not_made.with_label_values(&[kind]).inc();
        }
        m.outputs_written.inc_by(self.made.len() as u64);
        m.outbox_depth.add(self.made.len() as i64);
        m.forecast_last_slot.set(self.at.div_euclid(1_000));
    }
}

/// Forecast slots too old to make up after a stop.
pub struct ForecastSlotsSkipped {
    pub slots: usize,
    /// The oldest slot skipped, in milliseconds since the epoch.
    pub from: i64,
}

impl InternalEvent for ForecastSlotsSkipped {
    fn emit(self, m: &Metrics) {
        warn!(
            slots = self.slots,
            from = %utc(self.from),
            "forecast slots older than forecast.backfill_slots skipped"
        );
        m.forecast_slots_skipped.inc_by(self.slots as u64);
    }
}

/// Days of the analytics history stored.
pub struct AnalyticsDaysStored {
    pub days: usize,
    pub rows: usize,
}

impl InternalEvent for AnalyticsDaysStored {
    fn emit(self, m: &Metrics) {
        info!(
            days = self.days,
            rows = self.rows,
            "analytics history stored"
        );
        m.analytics_days.inc_by(self.days as u64);
        m.analytics_rows.inc_by(self.rows as u64);
    }
}

/// Partitions handed to this instance, at the offsets the store holds.
pub struct PartitionsAssigned {
    pub partitions: usize,
}

impl InternalEvent for PartitionsAssigned {
    fn emit(self, m: &Metrics) {
        info!(
            partitions = self.partitions,
            "partitions assigned at stored offsets"
        );
        m.assigned_partitions.set(self.partitions as i64);
    }
}

/// Partitions taken away, by a rebalance or (with `error`) a failed one.
pub struct PartitionsRevoked<'a> {
    pub partitions: usize,
    pub error: Option<&'a dyn std::fmt::Debug>,
}

impl InternalEvent for PartitionsRevoked<'_> {
    fn emit(self, m: &Metrics) {
        match self.error {
            None => info!(partitions = self.partitions, "partitions revoked"),
            Some(e) => error!(error = ?e, "rebalance error; unassigning"),
        }
        m.assigned_partitions.set(0);
        m.consumer_lag.reset();
    }
}

/// A partition's lag, from librdkafka's cached high watermark.
pub struct ConsumerLag<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub lag: i64,
}

impl InternalEvent for ConsumerLag<'_> {
    fn emit(self, m: &Metrics) {
        m.consumer_lag
            .with_label_values(&[self.topic, &self.partition.to_string()])
            .set(self.lag);
    }
}

/// The outbox's depth as read from the store at start-up.
pub struct OutboxDepthRead {
    pub depth: i64,
}

impl InternalEvent for OutboxDepthRead {
    fn emit(self, m: &Metrics) {
        debug!(depth = self.depth, "outbox depth at start");
        m.outbox_depth.set(self.depth);
    }
}

/// The broker acknowledged one output the relay published.
pub struct OutputPublished<'a> {
    pub topic: &'a str,
}

impl InternalEvent for OutputPublished<'_> {
    fn emit(self, m: &Metrics) {
        trace!(topic = %self.topic, "output published");
        m.outputs_published.with_label_values(&[self.topic]).inc();
    }
}

/// Published outbox rows deleted from the store.
pub struct OutboxRowsDeleted {
    pub rows: usize,
}

impl InternalEvent for OutboxRowsDeleted {
    fn emit(self, m: &Metrics) {
        trace!(rows = self.rows, "published outbox rows deleted");
        m.outbox_depth.sub(self.rows as i64);
    }
}

/// Publishing outbox rows failed; the relay retries after `retry_in`.
pub struct OutboxPublishFailed<'a> {
    pub error: &'a dyn Display,
    pub retry_in: Duration,
}

impl InternalEvent for OutboxPublishFailed<'_> {
    fn emit(self, m: &Metrics) {
        warn!(error = %self.error, retry_in_ms = self.retry_in.as_millis() as u64, "outbox relay: publish failed, retrying");
        m.relay_errors.inc();
    }
}
