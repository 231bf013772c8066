//! GDPR at the edge: retention sweeps, messages not published or not sent
//! because their lead's key was shredded (the erasures themselves are
//! counted with their batch: `BatchCommitted`).

use std::fmt::Display;

use tracing::{info, warn};

use super::InternalEvent;
use crate::metrics::Metrics;

/// Erasures of inactive leads published by a retention sweep.
pub struct RetentionErasuresRequested {
    pub partition: i32,
    pub leads: usize,
    /// Leads with no event since before this (epoch millis) were erased.
    pub inactive_before: i64,
}

impl InternalEvent for RetentionErasuresRequested {
    fn emit(self, m: &Metrics) {
        if self.leads > 0 {
            info!(
                partition = self.partition,
                leads = self.leads,
                inactive_before = self.inactive_before,
                "retention: erasures of inactive leads published"
            );
        }
        m.retention_erasures.inc_by(self.leads as u64);
    }
}

/// A retention sweep stopped: the erasure could not be published; the
/// next sweep tries again.
pub struct RetentionSweepFailed<'a> {
    pub partition: i32,
    pub error: &'a dyn Display,
}

impl InternalEvent for RetentionSweepFailed<'_> {
    fn emit(self, m: &Metrics) {
        warn!(partition = self.partition, error = %self.error, "retention sweep stopped; retrying at the next one");
        m.retention_failures.inc();
    }
}

/// An outbound message not published, or not sent, because its lead's data
/// key was shredded by an erasure.
pub struct MessageShredded<'a> {
    pub message_id: &'a str,
}

impl InternalEvent for MessageShredded<'_> {
    fn emit(self, m: &Metrics) {
        info!(message_id = %self.message_id, "message of an erased lead dropped: its data key is shredded");
        m.messages_shredded.inc();
    }
}
