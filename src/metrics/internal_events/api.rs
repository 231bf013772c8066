//! The REST API's events.

use tracing::{debug, info};

use super::InternalEvent;
use crate::metrics::Metrics;

/// A REST API request answered.
pub struct ApiRequestAnswered<'a> {
    /// The route template (`/api/v1/leads/{id}`), not the path.
    pub route: &'a str,
    pub status: u16,
    pub seconds: f64,
}

impl InternalEvent for ApiRequestAnswered<'_> {
    fn emit(self, m: &Metrics) {
        debug!(
            route = self.route,
            status = self.status,
            seconds = self.seconds,
            "API request"
        );
        m.api_requests
            .with_label_values(&[self.route, &self.status.to_string()])
            .inc();
        m.api_request_seconds
            .with_label_values(&[self.route])
            .observe(self.seconds);
    }
}

/// A REST API request refused by its key's rate limit.
pub struct ApiRateLimited<'a> {
    pub scope: &'a str,
}

impl InternalEvent for ApiRateLimited<'_> {
    fn emit(self, m: &Metrics) {
        info!(scope = self.scope, "API request over its key's rate limit");
        m.api_rate_limited.with_label_values(&[self.scope]).inc();
    }
}
