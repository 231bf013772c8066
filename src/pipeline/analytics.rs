//! The daily analytics history at the edge: a UTC day's rows
//! (`analytics::history`) are stored once the processor's clock (the one
//! the forecast schedule follows, `forecasts.rs`) is `analytics.grace_ms`
//! past the day's end, by the owner of partition 0, through the one commit
//! path and fenced on partition 0 like a forecast slot. The history goes on
//! from its latest stored day, so a restart or a new owner picks it up where
//! it stood, and a replay on event time stores the same days.

use crate::config::Config;
use crate::events::{Millis, MILLIS_PER_DAY};
use crate::store::{LeadStore, StoreError};

use crate::metrics::internal_events::AnalyticsDaysStored;
use crate::store::with_store_retry;

use super::commit::{apply_and_commit, Fence, Sink, Work};
use super::consume::{LoopState, Pipeline};
use super::PipelineError;

/// The history's schedule as configured.
#[derive(Debug, Clone, Copy)]
pub struct DailyHistory {
    pub grace: Millis,
}

impl DailyHistory {
    pub fn new(config: &Config) -> Option<DailyHistory> {
        let a = &config.analytics;
        a.daily.then_some(DailyHistory {
            grace: a.grace_ms as Millis,
        })
    }

    /// The days from `next` on whose end `clock` is a grace period past.
    pub fn due(&self, next: i64, clock: Millis) -> std::ops::Range<i64> {
        let mut end = next;
        while (end + 1) * MILLIS_PER_DAY + self.grace < clock {
            end += 1;
        }
        next..end
    }

    /// The first day not stored yet: the one after the latest stored, else
    /// the day the earliest lead was created (`None` before any).
    pub async fn next_day<S: LeadStore>(&self, store: &S) -> Result<Option<i64>, StoreError> {
        Ok(match store.last_analytics_day().await? {
            Some(last) => Some(last + 1),
            None => store
                .earliest_creation()
                .await?
                .map(|t| t.div_euclid(MILLIS_PER_DAY)),
        })
    }
}

/// Stores the rows of `day`, committed with `fence`; returns how many.
pub async fn store_day<S: LeadStore>(
    store: &S,
    config: &Config,
    day: i64,
    fence: Fence<'_>,
) -> Result<usize, StoreError> {
    let prepared =
        apply_and_commit(store, config, Work::Analytics { day }, fence, Sink::Caller).await?;
    Ok(prepared.analytics.len())
}

impl<S: LeadStore + 'static> Pipeline<S> {
    /// Stores every day of the history due by `clock`; returns how many.
    pub(super) async fn run_daily_history(
        &self,
        history: &DailyHistory,
        clock: Millis,
        state: &mut LoopState,
    ) -> Result<usize, PipelineError> {
        let next = match state.history_next {
            Some(next) => next,
            None => match with_store_retry("read the analytics history", &self.metrics, || {
                history.next_day(self.store.as_ref())
            })
            .await?
            {
                Some(next) => next,
                None => return Ok(0),
            },
        };
        state.history_next = Some(next);
        let due = history.due(next, clock);
        let days = (due.end - due.start) as usize;
        let mut rows = 0;
        for day in due {
            rows += with_store_retry("store an analytics day", &self.metrics, || {
                store_day(
                    self.store.as_ref(),
                    &self.config,
                    day,
                    Fence::Hold(&state.positions),
                )
            })
            .await?;
            state.history_next = Some(day + 1);
        }
        if days > 0 {
            self.metrics.emit(AnalyticsDaysStored { days, rows });
        }
        Ok(days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_due_once_the_clock_is_a_grace_period_past_its_end() {
        let history = DailyHistory { grace: 1000 };
        let day = MILLIS_PER_DAY;
        assert_eq!(history.due(5, 6 * day), 5..5);
        assert_eq!(history.due(5, 6 * day + 1000), 5..5);
        assert_eq!(history.due(5, 6 * day + 1001), 5..6);
        assert_eq!(history.due(5, 9 * day + 1001), 5..9);
    }
}
