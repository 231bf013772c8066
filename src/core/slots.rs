//! When scheduled forecasts fall: at midnight UTC of a weekday, then every
//! `interval_days`. The core needs the slots to keep, per lead, the score
//! it held at the latest slot it moved past (see
//! [`crate::core::state::SlotSnapshot`]): a forecast made later, on a clock
//! that has run on, can then still see the pipeline as it stood at its slot.

use crate::events::{Millis, MILLIS_PER_DAY};

/// 1970-01-05, the first Monday after the epoch.
const FIRST_MONDAY: Millis = 4 * MILLIS_PER_DAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForecastSlots {
    anchor: Millis,
    every: Millis,
}

impl ForecastSlots {
    /// Slots every `interval_days` days (at least one) at midnight UTC, one
    /// of them on `weekday` (0 is Monday, 6 Sunday).
    pub fn new(interval_days: u32, weekday: u32) -> Self {
        ForecastSlots {
            anchor: FIRST_MONDAY + (weekday % 7) as Millis * MILLIS_PER_DAY,
            every: interval_days.max(1) as Millis * MILLIS_PER_DAY,
        }
    }

    pub fn every(&self) -> Millis {
        self.every
    }

    /// The latest slot strictly before `t`.
    pub fn last_before(&self, t: Millis) -> Millis {
        self.anchor + (t - 1 - self.anchor).div_euclid(self.every) * self.every
    }

    /// The first slot strictly after `t`.
    pub fn first_after(&self, t: Millis) -> Millis {
        self.last_before(t + 1) + self.every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekly_slots_fall_on_the_weekday_at_midnight() {
        let slots = ForecastSlots::new(7, 0);
        // 2026-01-01 was a Thursday; the next Monday is 2026-01-05.
        let thursday = 1_767_225_600_000 + 3_600_000;
        let monday = 1_767_571_200_000;
        assert_eq!(slots.first_after(thursday), monday);
        assert_eq!(slots.first_after(monday), monday + 7 * MILLIS_PER_DAY);
        assert_eq!(slots.last_before(monday), monday - 7 * MILLIS_PER_DAY);
        assert_eq!(slots.last_before(monday + 1), monday);
        let sunday = ForecastSlots::new(7, 6);
        assert_eq!(sunday.first_after(thursday), monday - MILLIS_PER_DAY);
    }

    #[test]
    fn daily_slots_and_times_before_the_epoch() {
        let slots = ForecastSlots::new(1, 3);
        assert_eq!(slots.first_after(0), MILLIS_PER_DAY);
        assert_eq!(slots.last_before(0), -MILLIS_PER_DAY);
        assert_eq!(ForecastSlots::new(0, 0).every(), MILLIS_PER_DAY);
    }
}
