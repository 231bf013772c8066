//! The daily analytics history's settings (`[analytics]`).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::events::MILLIS_PER_DAY;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// The processor stores each day's rows in `lead_analytics` once its
    /// clock has passed the day (`leadflow analytics` works either way).
    pub daily: bool,
    /// How long after midnight (UTC) the processor's clock must be before
    /// the day is stored, for events that arrive late.
    pub grace_ms: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            daily: true,
            grace_ms: 3_600_000,
        }
    }
}

impl AnalyticsConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.grace_ms >= MILLIS_PER_DAY as u64 {
            return Err(ConfigError::Invalid {
                key: "analytics.grace_ms".into(),
                reason: format!("{} ms is not shorter than a day", self.grace_ms),
            });
        }
        Ok(())
    }
}
