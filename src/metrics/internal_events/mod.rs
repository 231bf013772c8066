//! Internal events, after Vector's `src/internal_events`: one struct per
//! thing that happens in leadflow, whose `emit` writes its log line and
//! updates its metrics in one place. Call sites say what happened
//! (`metrics.emit(BatchCommitted { .. })`) and never touch a metric.
//!
//! Volume decides the level: per-message events log at `trace`, per-batch
//! at `debug`, state changes at `info`, incidents that retry at `warn`.
//! A log line that nothing counts (start-up, shutdown) stays a plain
//! `tracing` call where it happens.

mod api;
mod dead_letters;
mod gdpr;
mod models;
mod notify;
mod processor;
mod store;

pub use api::{ApiRateLimited, ApiRequestAnswered};
pub use dead_letters::DeadLettered;
pub use gdpr::{MessageShredded, RetentionErasuresRequested, RetentionSweepFailed};
pub use models::{DriftChecked, ModelRetrainFailed, ModelRetrained, ModelSwitched};
pub use notify::{
    AssignedPartitionsObserved, DeliveryDuplicate, MessageHandled, ProviderResponded,
    ProviderRetry, RateLimitWaited,
};
pub use processor::{
    AnalyticsDaysStored, BatchCommitted, ConsumerError, ConsumerLag, EventReceived,
    ForecastSlotsSkipped, ForecastsMade, LogDiscontinuity, OutboxDepthRead, OutboxPublishFailed,
    OutboxRowsDeleted, OutputPublished, PartitionsAssigned, PartitionsRevoked, TimersFired,
};
pub use store::StoreRetry;

use super::Metrics;

/// Something that happened: logs itself and counts itself.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}
