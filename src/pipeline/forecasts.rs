//! The forecast schedule at the edge. A slot's forecasts are made once the
//! processor's clock is `forecast.grace_ms` past it: on event time the clock
//! of the partition furthest behind (each partition's latest event time
//! applied; every partition must have one, or be empty, so that a partition
//! not yet read cannot be missing from the forecast); on the wall clock the
//! wall clock, held back to the event time of a partition still being
//! caught up on.
//!
//! The owner of input partition 0 makes them, reading every lead from the
//! store as of the slot (`forecast::scheduled`), and commits them through
//! the one commit path: the `lead_forecasts` rows and the outbox rows in one
//! transaction, fenced on partition 0 like a timer round, so a zombie
//! cannot publish and a forecast already stored is not stored or published
//! again. The schedule goes on from its latest stored slot, so a restart
//! or a new owner picks it up where it stood. A replay runs the same
//! schedule on the same clock ([`Schedule::due`]), so it makes the same
//! forecasts.

use std::time::{Duration, Instant};

use crate::config::{ClockMode, Config};
use crate::core::slots::ForecastSlots;
use crate::events::{InputStream, Millis};
use crate::forecast::scheduled::MadeForecast;
use crate::metrics::internal_events::{ForecastSlotsSkipped, ForecastsMade};
use crate::store::{with_store_retry, LeadStore, StoreError};

use super::analytics::DailyHistory;
use super::commit::{apply_and_commit, Fence, Prepared, Sink, Work, FORECAST_PARTITION};
use super::consume::{LoopState, Pipeline};
use super::{PipelineError, RunSummary};

/// How often the live loop looks whether a slot is due.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The schedule as configured.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub slots: ForecastSlots,
    pub grace: Millis,
    pub backfill: usize,
}

impl Schedule {
    pub fn new(config: &Config) -> Option<Schedule> {
        let f = &config.forecast;
        f.enabled.then(|| Schedule {
            slots: f.slots(),
            grace: f.grace_ms as Millis,
            backfill: f.backfill_slots as usize,
        })
    }

    /// The slots from `next` on that `clock` is a grace period past: at
    /// most `backfill`, the latest ones, and how many older ones that skips.
    pub fn due(&self, next: Millis, clock: Millis) -> (Vec<Millis>, usize) {
        let mut due = Vec::new();
        let mut slot = next;
        while slot + self.grace < clock {
            due.push(slot);
            slot += self.slots.every();
        }
        let skipped = due.len().saturating_sub(self.backfill);
        (due.split_off(skipped), skipped)
    }

    /// The first slot not made yet: the one after the schedule's latest,
    /// else the one after the earliest lead was created (`None` before any).
    pub async fn next_slot<S: LeadStore>(&self, store: &S) -> Result<Option<Millis>, StoreError> {
        let after = match store.last_scheduled_forecast().await? {
            Some(last) => Some(last),
            None => store.earliest_creation().await?,
        };
        Ok(after.map(|t| self.slots.first_after(t)))
    }
}

/// Makes the forecasts of the slot `at` and commits them with `fence` into `sink`.
pub async fn make_slot<S: LeadStore>(
    store: &S,
    config: &Config,
    at: Millis,
    fence: Fence<'_>,
    sink: Sink,
) -> Result<Prepared, StoreError> {
    apply_and_commit(store, config, Work::Forecasts { at }, fence, sink).await
}

/// Commits forecasts made on demand (`leadflow forecast --record`): stored
/// and put in the outbox like the schedule's, for partition 0's owner to
/// publish. Returns those that were not stored before.
pub async fn record_on_demand<S: LeadStore>(
    store: &S,
    config: &Config,
    made: &[MadeForecast],
    now: Millis,
) -> Result<Vec<String>, StoreError> {
    let mut new = Vec::new();
    for m in made {
        if !store.forecast_stored(&m.event.forecast_id).await? {
            new.push(m.event.forecast_id.clone());
        }
    }
    Prepared::forecasts(made, false, Vec::new())
        .commit(store, config, Fence::None, Sink::Outbox { at: now })
        .await?;
    Ok(new)
}

impl<S: LeadStore + 'static> Pipeline<S> {
    /// If this instance owns partition 0: makes the forecasts of every due
    /// slot and stores every due day of the analytics history; returns how
    /// many slots and days it made.
    pub(super) async fn run_schedules(
        &self,
        state: &mut LoopState,
        summary: &mut RunSummary,
    ) -> Result<usize, PipelineError> {
        let schedule = Schedule::new(&self.config);
        let history = DailyHistory::new(&self.config);
        if schedule.is_none() && history.is_none() {
            return Ok(0);
        }
        let owner = (
            self.config.topics.input(InputStream::Leads).to_string(),
            FORECAST_PARTITION,
        );
        if !state.positions.contains_key(&owner)
            || state
                .forecast_checked
                .is_some_and(|at| at.elapsed() < CHECK_INTERVAL)
        {
            return Ok(0);
        }
        state.forecast_checked = Some(Instant::now());
        let Some(clock) = self.forecast_clock(state).await? else {
            return Ok(0);
        };
        let mut made = 0;
        if let Some(schedule) = schedule {
            made += self
                .run_forecast_schedule(&schedule, clock, state, summary)
                .await?;
        }
        if let Some(history) = history {
            made += self.run_daily_history(&history, clock, state).await?;
        }
        Ok(made)
    }

    /// Makes the forecasts of every slot due by `clock`; returns how many.
    async fn run_forecast_schedule(
        &self,
        schedule: &Schedule,
        clock: Millis,
        state: &mut LoopState,
        summary: &mut RunSummary,
    ) -> Result<usize, PipelineError> {
        let next = match state.forecast_next {
            Some(next) => next,
            None => match with_store_retry("read forecast schedule", &self.metrics, || {
                schedule.next_slot(self.store.as_ref())
            })
            .await?
            {
                Some(next) => next,
                None => return Ok(0),
            },
        };
        let (due, skipped) = schedule.due(next, clock);
        if skipped > 0 {
            self.metrics.emit(ForecastSlotsSkipped {
                slots: skipped,
                from: next,
            });
        }
        state.forecast_next = Some(next);
        for &slot in &due {
            let now = self.clock.now();
            let prepared = with_store_retry("make forecasts", &self.metrics, || {
                make_slot(
                    self.store.as_ref(),
                    &self.config,
                    slot,
                    Fence::Hold(&state.positions),
                    Sink::Outbox { at: now },
                )
            })
            .await?;
            summary.outputs += prepared.outputs.len() as u64;
            let made: Vec<String> = prepared.forecasts.iter().map(|f| f.kind.clone()).collect();
            let not_made: Vec<(String, String)> = prepared
                .not_made
                .iter()
                .map(|n| (n.kind.to_string(), n.reason.clone()))
                .collect();
            self.metrics.emit(ForecastsMade {
                at: slot,
                made: &made,
                not_made: &not_made,
            });
            state.forecast_next = Some(slot + schedule.slots.every());
        }
        Ok(due.len())
    }

    /// The clock the schedules follow; `None` while some partition with
    /// input has applied none of it yet. On event time, the slowest
    /// partition's. On the wall clock, the wall clock, held back to the event
    /// time of any partition this instance is still catching up on (after a
    /// stop, or over a backlog of history), so a slot is not made from a
    /// half-read log.
    async fn forecast_clock(&self, state: &LoopState) -> Result<Option<Millis>, PipelineError> {
        let wall = self.config.processor.clock == ClockMode::Wall;
        let mut slowest: Option<Millis> = None;
        for partition in 0..self.config.kafka.partitions {
            let caught_up = self.partition_caught_up(state, partition);
            let owned = state.positions.keys().any(|(_, p)| *p == partition);
            if wall && (caught_up || !owned) {
                continue;
            }
            let known = match state.stream_time.get(&partition) {
                Some(t) => Some(*t),
                None => {
                    with_store_retry("read stream time", &self.metrics, || {
                        self.store.partition_stream_time(partition)
                    })
                    .await?
                }
            };
            match known {
                Some(t) => slowest = Some(slowest.map_or(t, |s| s.min(t))),
                // Read to the end: an empty partition holds nothing back.
                None if caught_up => {}
                None => return Ok(None),
            }
        }
        if wall {
            let now = self.clock.now();
            return Ok(Some(slowest.map_or(now, |s| s.min(now))));
        }
        Ok(slowest)
    }
}
