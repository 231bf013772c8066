//! Retention (GDPR): leads without an event for `gdpr.inactive_retention_days`
//! on the processor's clock are erased. Every `gdpr.retention_check_interval_s`
//! each processor looks in the partitions it owns (the store's index of
//! leads by partition and latest event time) and publishes an erasure for
//! each such lead to its partition, as `leadflow erase` would: the erasure
//! is then applied by the partition's owner in order with the lead's
//! events, exactly once, through the one commit path.
//!
//! The erasure's time is the instant the lead's retention ran out (its
//! latest event time plus the period), so the same lead gives the same
//! erasure event however many sweeps or instances see it before it is
//! applied (a repeat is a duplicate). It is conditional
//! (`ERASE_IF_INACTIVE_SINCE`): a lead with a newer event by the time the
//! erasure is applied is kept.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::config::ClockMode;
use crate::events::{Millis, MILLIS_PER_DAY};
use crate::gdpr::{request_erasure, ErasureRequest};
use crate::metrics::internal_events::{RetentionErasuresRequested, RetentionSweepFailed};
use crate::store::{with_store_retry, LeadStore};

use super::consume::{LoopState, Pipeline};
use super::PipelineError;

/// Leads erased per partition and sweep; the rest wait for the next sweep.
const SWEEP_LIMIT: i64 = 1_000;

const ACTOR: &str = "retention";

impl<S: LeadStore + 'static> Pipeline<S> {
    /// Publishes the erasures of the owned partitions' inactive leads when
    /// a sweep is due; returns how many.
    pub(super) async fn erase_inactive(
        &self,
        state: &mut LoopState,
    ) -> Result<usize, PipelineError> {
        let gdpr = &self.config.gdpr;
        let interval = Duration::from_secs(gdpr.retention_check_interval_s);
        if gdpr.inactive_retention_days == 0
            || state.positions.is_empty()
            || state
                .retention_checked
                .is_some_and(|at| at.elapsed() < interval)
        {
            return Ok(0);
        }
        state.retention_checked = Some(Instant::now());
        let period = gdpr.inactive_retention_days as Millis * MILLIS_PER_DAY;
        let reason = format!("no activity for {} days", gdpr.inactive_retention_days);
        let owned: BTreeSet<i32> = state.positions.keys().map(|(_, p)| *p).collect();
        let mut requested = 0;
        for partition in owned {
            let clock = match self.config.processor.clock {
                ClockMode::Wall => Some(self.clock.now()),
                ClockMode::EventTime => self.stream_time(state, partition).await?,
            };
            let Some(clock) = clock else { continue };
            let before = clock - period;
            let inactive = with_store_retry("read inactive leads", &self.metrics, || {
                self.store.inactive_leads(partition, before, SWEEP_LIMIT)
            })
            .await?;
            let producer = self.producer.get();
            let mut published = 0;
            for (lead, latest) in &inactive {
                let request = ErasureRequest {
                    lead_ext_id: lead,
                    actor: ACTOR,
                    reason: Some(&reason),
                    at: latest + period,
                    inactive_since: Some(*latest),
                };
                let store = self.store.as_ref();
                if let Err(e) =
                    request_erasure(&self.config, &self.codec, &producer, store, request).await
                {
                    self.metrics.emit(RetentionSweepFailed {
                        partition,
                        error: &e,
                    });
                    break;
                }
                published += 1;
            }
            self.metrics.emit(RetentionErasuresRequested {
                partition,
                leads: published,
                inactive_before: before,
            });
            requested += published;
        }
        Ok(requested)
    }
}
