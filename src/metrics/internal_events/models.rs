//! The model watcher: swaps, drift and retraining.

use std::fmt::Display;

use tracing::{debug, info, warn};

use super::InternalEvent;
use crate::metrics::Metrics;

/// The processor now scores with registry version `to` (`None`: rules).
pub struct ModelSwitched {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl InternalEvent for ModelSwitched {
    fn emit(self, m: &Metrics) {
        info!(from = ?self.from, to = ?self.to, "scoring model switched");
        m.model_version.set(self.to.unwrap_or(0));
        if self.from.is_some() || self.to.is_some() {
            m.model_swaps.inc();
        }
    }
}

/// A drift check: each feature's PSI, recent traffic against the active
/// model's reference; `worst` is the highest. `drifted`: it passed
/// `threshold`, and a retrain follows.
pub struct DriftChecked<'a> {
    pub psi: &'a [(String, f64)],
    pub worst: (&'a str, f64),
    pub rows: usize,
    pub threshold: f64,
    pub drifted: bool,
}

impl InternalEvent for DriftChecked<'_> {
    fn emit(self, m: &Metrics) {
        for (feature, value) in self.psi {
            m.feature_psi.with_label_values(&[feature]).set(*value);
        }
        let (feature, psi) = self.worst;
        debug!(feature, psi, rows = self.rows, "drift check");
        if self.drifted {
            info!(feature, psi, threshold = self.threshold, "feature drift");
        }
    }
}

/// A retraining run registered a model (and activated it or not).
pub struct ModelRetrained<'a> {
    pub reason: &'a str,
    pub version: i64,
    pub auc: f64,
    pub previous: Option<(i64, f64)>,
    pub activated: bool,
}

impl InternalEvent for ModelRetrained<'_> {
    fn emit(self, m: &Metrics) {
        info!(
            reason = self.reason,
            version = self.version,
            auc = self.auc,
            previous = ?self.previous,
            activated = self.activated,
            "retrained"
        );
        let result = if self.activated {
            "activated"
        } else {
            "kept_previous"
        };
        m.model_retrains
            .with_label_values(&[self.reason, result])
            .inc();
    }
}

/// A retraining run failed.
pub struct ModelRetrainFailed<'a> {
    pub reason: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for ModelRetrainFailed<'_> {
    fn emit(self, m: &Metrics) {
        warn!(reason = self.reason, error = %self.error, "retraining failed");
        m.model_retrains
            .with_label_values(&[self.reason, "failed"])
            .inc();
    }
}
