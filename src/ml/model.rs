//! A trained conversion model: its features, their encoding and the learner,
//! stored as one JSON document in the model registry.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::{Encoder, FeatureValue};
use super::linear::Logistic;
use super::trees::{Booster, Forest};
use crate::core::apply::Explanation;
use crate::events::ScoreFactor;

crate::events::string_enum!(
    ModelType {
        GradientBoosting => "gradient_boosting",
        RandomForest => "random_forest",
        Logistic => "logistic",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Learner {
    GradientBoosting(Booster),
    RandomForest(Forest),
    Logistic(Logistic),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    pub encoder: Encoder,
    pub learner: Learner,
}

impl TrainedModel {
    pub fn model_type(&self) -> ModelType {
        match self.learner {
            Learner::GradientBoosting(_) => ModelType::GradientBoosting,
            Learner::RandomForest(_) => ModelType::RandomForest,
            Learner::Logistic(_) => ModelType::Logistic,
        }
    }

    pub fn probability_encoded(&self, row: &[f64]) -> f64 {
        match &self.learner {
            Learner::GradientBoosting(b) => b.probability(row),
            Learner::RandomForest(f) => f.probability(row),
            Learner::Logistic(l) => l.probability(row),
        }
    }

    /// The same bits as [`TrainedModel::probability_encoded`] of the encoded
    /// row; gradient boosting (without a linear start) reads only the
    /// features its trees split on, straight from `values`.
    pub fn probability(&self, values: &[FeatureValue]) -> f64 {
        if let Learner::GradientBoosting(b) = &self.learner {
            if let Some(margin) = b.margin_of_features(self.encoder.value_reader(values)) {
                return crate::ml::table::sigmoid(margin);
            }
        }
        self.probability_encoded(&self.encoder.encode(values))
    }

    /// [`TrainedModel::probability`] of many rows, in their order, spread over
    /// the machine's cores (a file to score, as other libraries' batch
    /// predict does); each row is the same bits as scored alone.
    pub fn probabilities<R: AsRef<[FeatureValue]> + Sync>(&self, rows: &[R]) -> Vec<f64> {
        // Per task, rows enough that scheduling is a small share.
        rows.par_iter()
            .with_min_len(256)
            .map(|row| self.probability(row.as_ref()))
            .collect()
    }

    /// The probability with the `top` features that contributed most.
    pub fn explain(&self, values: &[FeatureValue], top: usize) -> Explanation {
        let row = self.encoder.encode(values);
        let mut contributions = vec![0.0; row.len()];
        let bias = match &self.learner {
            Learner::GradientBoosting(b) => b.attribute(&row, &mut contributions),
            Learner::RandomForest(f) => f.attribute(&row, &mut contributions),
            Learner::Logistic(l) => l.attribute(&row, &mut contributions),
        };
        let total = bias + contributions.iter().sum::<f64>();
        let probability = match &self.learner {
            Learner::RandomForest(f) => f.calibration.apply(total),
            _ => crate::ml::table::sigmoid(total),
        };
        let mut order: Vec<usize> = (0..row.len())
            .filter(|&i| contributions[i] != 0.0)
            .collect();
        order.sort_by(|&a, &b| {
            contributions[b]
                .abs()
                .total_cmp(&contributions[a].abs())
                .then(a.cmp(&b))
        });
        let factors = order
            .into_iter()
            .take(top)
            .map(|i| ScoreFactor {
                feature: self.encoder.features[i].name.clone(),
                contribution: contributions[i],
            })
            .collect();
        Explanation {
            probability,
            factors,
        }
    }
}
