//! Platt scaling: a forest's mean leaf value mapped to a calibrated probability.

use serde::{Deserialize, Serialize};

use crate::ml::table::sigmoid;

/// p' = sigmoid(a · logit(p) + b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

impl Platt {
    pub(super) const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    pub(super) fn logit(p: f64) -> f64 {
        let p = p.clamp(1e-4, 1.0 - 1e-4);
        (p / (1.0 - p)).ln()
    }

    pub fn apply(&self, p: f64) -> f64 {
        sigmoid(self.a * Self::logit(p) + self.b)
    }

    /// Newton's method on the log-loss of (a, b), lightly ridged.
    pub(super) fn fit(scores: &[f64], y: &[f64]) -> Platt {
        let x: Vec<f64> = scores.iter().map(|p| Self::logit(*p)).collect();
        let (mut a, mut b) = (1.0, 0.0);
        for _ in 0..50 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
                (1e-3 * (a - 1.0), 1e-3 * b, 1e-3, 0.0, 1e-3);
            for (xi, yi) in x.iter().zip(y) {
                let p = sigmoid(a * xi + b);
                let w = (p * (1.0 - p)).max(1e-12);
                ga += (p - yi) * xi;
                gb += p - yi;
                haa += w * xi * xi;
                hab += w * xi;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-12 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            a -= da;
            b -= db;
            if da.abs() + db.abs() < 1e-9 {
                break;
            }
        }
        if a.is_finite() && b.is_finite() {
            Platt { a, b }
        } else {
            Self::IDENTITY
        }
    }
}
