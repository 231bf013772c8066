//! Messages either consumer could not process.

use tracing::warn;

use super::InternalEvent;
use crate::metrics::Metrics;

/// A message written to the dead-letter topic with its reason.
pub struct DeadLettered<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The rejection's kind: the `reason` label.
    pub reason: &'a str,
    pub error: &'a str,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        warn!(
            topic = %self.topic,
            partition = self.partition,
            offset = self.offset,
            kind = self.reason,
            error = %self.error,
            "message dead-lettered"
        );
        m.dead_letters.with_label_values(&[self.reason]).inc();
    }
}
