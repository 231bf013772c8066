//! The REST API's settings (`[api]`): page and body limits, and the rate
//! limit of each key by its scope.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve `/api/v1` on `http.listen` (the processor only).
    pub enabled: bool,
    /// Rows of a page when the request does not say.
    pub default_page_size: u32,
    /// The most rows a page may ask for; more is a 400.
    pub max_page_size: u32,
    /// A larger request body is refused with 413.
    pub max_body_bytes: usize,
    pub rate_limits: RateLimits,
}

/// Requests per second each key may make, by its scope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub read: Rate,
    pub write: Rate,
    pub admin: Rate,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            default_page_size: 50,
            max_page_size: 500,
            max_body_bytes: 65_536,
            rate_limits: RateLimits::default(),
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            read: Rate {
                per_second: 100.0,
                burst: 200,
            },
            write: Rate {
                per_second: 50.0,
                burst: 100,
            },
            admin: Rate {
                per_second: 10.0,
                burst: 20,
            },
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("api.{key}"),
        reason: reason.into(),
    }
}

impl ApiConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_page_size == 0 {
            return Err(invalid("max_page_size", "must be at least 1"));
        }
        if !(1..=self.max_page_size).contains(&self.default_page_size) {
            return Err(invalid(
                "default_page_size",
                format!(
                    "{} is outside 1..=max_page_size ({})",
                    self.default_page_size, self.max_page_size
                ),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        let limits = &self.rate_limits;
        for (scope, rate) in [
            ("read", limits.read),
            ("write", limits.write),
            ("admin", limits.admin),
        ] {
            if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
                return Err(invalid(
                    &format!("rate_limits.{scope}.per_second"),
                    format!("{} is not a positive number", rate.per_second),
                ));
            }
            if rate.burst == 0 {
                return Err(invalid(
                    &format!("rate_limits.{scope}.burst"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}
