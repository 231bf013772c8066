//! Nurturing timers at the edge: the processor's clock, and rounds that
//! fire the due timers the store's index finds.
//!
//! Live, a processor looks every `nurture.tick_interval_ms` for the timers
//! due by its clock in the partitions it owns, fires them in the pure core
//! and commits the new states with the messages in one transaction, fenced
//! like a batch (the partitions' offsets must still be this instance's) and
//! per lead (the stored timer must still be the one that fired). A replay
//! fires a lead's timers before each of its events and, at the end, sweeps
//! every timer up to the last event time.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::Config;
use crate::events::Millis;
use crate::lead::{fire_timers, LeadState, Output};
use crate::nurture::FireClock;
use crate::store::{LeadStore, StoreError};

/// The processor's clock: wall time in production; tests drive their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at: Millis) -> Self {
        ManualClock(AtomicI64::new(at))
    }

    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A lead whose timers fired, with the timer it had in the store.
pub struct FiredLead {
    pub partition: i32,
    pub state: LeadState,
    pub stored_timer: Option<Millis>,
    pub experiments_changed: bool,
}

/// One round: up to `limit` leads of `partitions` with a timer due by the
/// clock, fired. Nothing is written; the caller commits.
pub async fn fire_round<S: LeadStore>(
    store: &S,
    config: &Config,
    partitions: &[i32],
    clock: FireClock,
    limit: usize,
) -> Result<(Vec<FiredLead>, Vec<(i32, Output)>), StoreError> {
    let due = store
        .due_timers(partitions, clock.bound(), limit as i64)
        .await?;
    let mut leads = Vec::with_capacity(due.len());
    let mut outputs = Vec::new();
    for (partition, mut state) in due {
        let stored_timer = state.nurture.timer;
        let experiments = super::experiments_digest(&state);
        let fired = fire_timers(&mut state, &config.nurture, clock);
        outputs.extend(fired.into_iter().map(|o| (partition, o)));
        leads.push(FiredLead {
            partition,
            experiments_changed: super::experiments_digest(&state) != experiments,
            state,
            stored_timer,
        });
    }
    Ok((leads, outputs))
}
