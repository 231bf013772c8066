//! The scheduled forecasts' settings (`[forecast]`): when the processor
//! makes them, how far they look and at which confidence levels.

use serde::{Deserialize, Serialize};

use crate::core::slots::ForecastSlots;

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastConfig {
    /// Scheduled forecasts on (`leadflow forecast` works either way).
    pub enabled: bool,
    /// Days between scheduled forecasts.
    pub interval_days: u32,
    /// The weekday (at 00:00 UTC) one slot falls on; the others follow
    /// every `interval_days`.
    pub weekday: Weekday,
    /// How far pipeline_value looks: the value expected to be won within it.
    pub horizon_days: u32,
    /// Days of lead volume lead_generation forecasts.
    pub lead_generation_days: u32,
    /// Confidence levels of the intervals. The first gives each event's
    /// `confidence`, `lower` and `upper`; a pipeline_value event lists them
    /// all, and `lead_forecasts` stores every level of every kind.
    pub levels: Vec<f64>,
    /// How long after a slot the processor's clock must be before its
    /// forecast is made, for events that arrive late.
    pub grace_ms: u64,
    /// After a long stop, at most this many missed slots are made up (the
    /// latest ones); older ones are skipped and counted.
    pub backfill_slots: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            enabled: true,
            interval_days: 7,
            weekday: Weekday::Monday,
            horizon_days: 30,
            lead_generation_days: 14,
            levels: vec![0.8, 0.95],
            grace_ms: 3_600_000,
            backfill_slots: 8,
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("forecast.{key}"),
        reason: reason.into(),
    }
}

impl ForecastConfig {
    pub fn slots(&self) -> ForecastSlots {
        ForecastSlots::new(self.interval_days, self.weekday as u32)
    }

    /// The slots the core keeps scores for, when scheduling is on.
    pub fn enabled_slots(&self) -> Option<ForecastSlots> {
        self.enabled.then(|| self.slots())
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=366).contains(&self.interval_days) {
            return Err(invalid(
                "interval_days",
                format!("{} is outside 1..=366", self.interval_days),
            ));
        }
        for (key, days) in [
            ("horizon_days", self.horizon_days),
            ("lead_generation_days", self.lead_generation_days),
        ] {
            if !(1..=366).contains(&days) {
                return Err(invalid(key, format!("{days} is outside 1..=366")));
            }
        }
        if self.levels.is_empty() {
            return Err(invalid("levels", "needs at least one level"));
        }
        if let Some(bad) = self.levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
            return Err(invalid("levels", format!("{bad} is not between 0 and 1")));
        }
        if self.grace_ms >= self.interval_days as u64 * 86_400_000 {
            return Err(invalid(
                "grace_ms",
                format!(
                    "{} ms is not shorter than the interval of {} days",
                    self.grace_ms, self.interval_days
                ),
            ));
        }
        if self.backfill_slots == 0 {
            return Err(invalid("backfill_slots", "must be at least 1"));
        }
        Ok(())
    }
}
