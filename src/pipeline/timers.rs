//! Nurturing timers at the edge: rounds that fire the due timers the
//! store's index finds.
//!
//! Live, a processor looks every `nurture.tick_interval_ms` for the timers
//! due by its clock in the partitions it owns, fires them in the pure core
//! and commits the new states with the messages in one transaction, fenced
//! like a batch (the partitions' offsets must still be this instance's) and
//! per lead (the stored timer must still be the one that fired). A replay
//! fires a lead's timers before each of its events and, at the end, sweeps
//! every timer up to the last event time.

use crate::config::Config;
use crate::core::apply::{fire_timers, Output};
use crate::core::nurture::FireClock;
use crate::core::state::LeadState;
use crate::events::Millis;
use crate::store::{LeadStore, StoreError};

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
        let experiments = super::commit::experiments_digest(&state);
        let fired = fire_timers(&mut state, &config.nurture, clock);
        outputs.extend(fired.into_iter().map(|o| (partition, o)));
        leads.push(FiredLead {
            partition,
            experiments_changed: super::commit::experiments_digest(&state) != experiments,
            state,
            stored_timer,
        });
    }
    Ok((leads, outputs))
}
