//! Hold-out metrics for a binary classifier's probabilities.

use serde::{Deserialize, Serialize};

/// Probabilities are clipped this far from 0 and 1 for the log loss.
const EPSILON: f64 = 1e-15;
const CALIBRATION_BINS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub rows: usize,
    pub positives: usize,
    /// At a 0.5 threshold.
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub roc_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    /// Expected calibration error: over ten equal-width probability bins, the
    /// row-weighted gap between the mean prediction and the observed rate.
    pub calibration_error: f64,
}

pub fn evaluate(probabilities: &[f64], labels: &[f64]) -> Metrics {
    let n = probabilities.len();
    let (mut tp, mut fp, mut tn, mut fneg) = (0usize, 0usize, 0usize, 0usize);
    let mut log_loss = 0.0;
    let mut brier = 0.0;
    let mut bins = [(0.0f64, 0.0f64, 0usize); CALIBRATION_BINS];
    for (&p, &y) in probabilities.iter().zip(labels) {
        let positive = y > 0.5;
        match (p >= 0.5, positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fneg += 1,
        }
        let clipped = p.clamp(EPSILON, 1.0 - EPSILON);
        log_loss -= if positive {
            clipped.ln()
        } else {
            (1.0 - clipped).ln()
        };
        brier += (p - y).powi(2);
        let bin = ((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        bins[bin].0 += p;
        bins[bin].1 += y;
        bins[bin].2 += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let calibration_error = bins
        .iter()
        .filter(|b| b.2 > 0)
        .map(|(p, y, c)| (p - y).abs() / *c as f64 * ratio(*c, n))
        .sum();
    Metrics {
        rows: n,
        positives: tp + fneg,
        accuracy: ratio(tp + tn, n),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fneg),
        roc_auc: roc_auc(probabilities, labels),
        log_loss: log_loss / n.max(1) as f64,
        brier: brier / n.max(1) as f64,
        calibration_error,
    }
}

/// The probability that a random positive scores above a random negative
/// (ties count half), from the rank sum; 0.5 when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Tied scores share the mean of their ranks (1-based).
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] > 0.5 {
                rank_sum += mean_rank;
            }
        }
        i = j + 1;
    }
    let positives = labels.iter().filter(|y| **y > 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartcore::metrics::{ClassificationMetrics, Metrics as _};

    #[test]
    fn auc_matches_smartcore_and_handles_ties() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let ours = roc_auc(&scores, &labels);
        let theirs = ClassificationMetrics::<f64>::roc_auc_score()
            .get_score(&labels.to_vec(), &scores.to_vec());
        assert!((ours - theirs).abs() < 1e-12, "{ours} vs {theirs}");
        assert_eq!(roc_auc(&[0.2, 0.2], &[0.0, 1.0]), 0.5);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0.0, 1.0]), 1.0);
    }

    #[test]
    fn metrics_of_a_small_case() {
        let m = evaluate(&[0.9, 0.2, 0.6, 0.1], &[1.0, 0.0, 0.0, 1.0]);
        assert_eq!((m.rows, m.positives), (4, 2));
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.precision, 0.5);
        assert_eq!(m.recall, 0.5);
        let expected_loss = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln() + 0.1f64.ln()) / 4.0;
        assert!((m.log_loss - expected_loss).abs() < 1e-12);
        assert!((m.brier - (0.01 + 0.04 + 0.36 + 0.81) / 4.0).abs() < 1e-12);
        // Bins: 0.1 (y=1), 0.2 (y=0), 0.6 (y=0), 0.9 (y=1), each a quarter.
        assert!((m.calibration_error - (0.9 + 0.2 + 0.6 + 0.1) / 4.0).abs() < 1e-12);
    }
}
