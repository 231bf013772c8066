//! Machine learning: features of a lead's state, the tree and linear
//! learners, training with a time-based hold-out, evaluation and drift.
//! Scoring itself (the blend of rules and model) is the core's; a trained
//! model takes part in it as a [`ConversionModel`].

pub mod csv_scoring;
pub mod dataset;
pub mod derived;
pub mod drift;
pub mod evaluation;
pub mod features;
pub mod linear;
pub mod model;
pub mod selection;
pub mod table;
pub mod training;
pub mod trees;

use serde::{Deserialize, Serialize};

use crate::core::apply::{ConversionModel, Explanation, ScorePolicy};
use crate::core::rules::{RuleConfig, SegmentThresholds};
use crate::core::state::LeadState;
use crate::events::{InteractionKind, Millis};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    pub rules: RuleConfig,
    pub segments: SegmentThresholds,
    pub model: ModelConfig,
    pub features: features::FeatureConfig,
    pub training: training::TrainingConfig,
}

/// How the conversion model takes part in scoring, and when it is renewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// final = ml_weight × ml_score + (1 − ml_weight) × initial_score.
    pub ml_weight: f64,
    /// Factors listed in each LeadScore.
    pub top_factors: usize,
    /// How often a running processor looks for a newly activated model.
    pub poll_interval_ms: u64,
    /// Retrain when the active model is this old (0: never on a schedule).
    pub retrain_interval_days: u32,
    /// Retrain when any feature's PSI passes this (0: never on drift).
    pub drift_threshold: f64,
    /// Recent traffic = leads updated in this many days up to the newest update.
    pub drift_window_days: u32,
    pub drift_check_interval_s: u64,
    /// Fewer recent leads than this give no drift figure.
    pub drift_min_rows: usize,
    /// After a retrain, no other for this long whatever the drift.
    pub retrain_cooldown_s: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            ml_weight: 0.6,
            top_factors: 5,
            poll_interval_ms: 2000,
            retrain_interval_days: 30,
            drift_threshold: 0.25,
            drift_window_days: 14,
            drift_check_interval_s: 300,
            drift_min_rows: 200,
            retrain_cooldown_s: 3600,
        }
    }
}

/// The registry's active model, as the processor holds it.
#[derive(Debug, Clone)]
pub struct ActiveModel {
    pub version: i64,
    pub model: model::TrainedModel,
    /// The drift reference stored with the model.
    pub profile: Option<drift::Profile>,
}

impl ScoringConfig {
    /// What the core's scoring reads of this configuration.
    pub fn policy(&self) -> ScorePolicy<'_> {
        ScorePolicy {
            rules: &self.rules,
            segments: &self.segments,
            ml_weight: self.model.ml_weight,
            top_factors: self.model.top_factors,
        }
    }
}

impl ConversionModel for ActiveModel {
    fn version_label(&self) -> String {
        self.version.to_string()
    }

    fn explain(&self, state: &LeadState, at: Millis, policy: &ScorePolicy<'_>) -> Explanation {
        let values = features::extract(state, at, policy, &self.model.encoder.features);
        self.model.explain(&values, policy.top_factors)
    }
}

impl ScoringConfig {
    /// Returns the offending key (relative to `scoring.`) and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let r = &self.rules;
        let finite = |key: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err((key.to_string(), format!("{v} is not a finite number")))
            }
        };
        finite("rules.base", r.base)?;
        finite("rules.default_source_weight", r.default_source_weight)?;
        finite("rules.probability_weight", r.probability_weight)?;
        for (source, w) in &r.source_weights {
            finite(&format!("rules.source_weights.{source}"), *w)?;
        }
        for (kind, w) in &r.interaction_weights {
            let key = format!("rules.interaction_weights.{kind}");
            kind.parse::<InteractionKind>()
                .map_err(|e| (key.clone(), e))?;
            finite(&key, *w)?;
        }
        if !(r.engagement_half_life_days.is_finite() && r.engagement_half_life_days > 0.0) {
            return Err((
                "rules.engagement_half_life_days".into(),
                format!(
                    "{} must be a positive number of days",
                    r.engagement_half_life_days
                ),
            ));
        }
        if !(r.engagement_cap.is_finite() && r.engagement_cap >= 0.0) {
            return Err((
                "rules.engagement_cap".into(),
                format!("{} must be zero or more", r.engagement_cap),
            ));
        }
        for (i, band) in r.value_bands.iter().enumerate() {
            let key = format!("rules.value_bands[{i}]");
            if !(band.min.is_finite() && band.min >= 0.0) {
                return Err((key, format!("min {} must be zero or more", band.min)));
            }
            finite(&key, band.points)?;
            if i > 0 && band.min <= r.value_bands[i - 1].min {
                return Err((
                    key,
                    format!(
                        "min {} must be greater than the previous band's {}",
                        band.min,
                        r.value_bands[i - 1].min
                    ),
                ));
            }
        }
        let s = &self.segments;
        for (key, v) in [
            ("segments.premium", s.premium),
            ("segments.high_priority", s.high_priority),
            ("segments.standard", s.standard),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err((key.into(), format!("{v} is outside 0..100")));
            }
        }
        let m = &self.model;
        if !(0.0..=1.0).contains(&m.ml_weight) {
            return Err((
                "model.ml_weight".into(),
                format!("{} is outside 0..1", m.ml_weight),
            ));
        }
        if m.poll_interval_ms == 0 || m.drift_check_interval_s == 0 {
            return Err((
                "model".into(),
                "poll_interval_ms and drift_check_interval_s must be positive".into(),
            ));
        }
        if !(m.drift_threshold.is_finite() && m.drift_threshold >= 0.0) {
            return Err((
                "model.drift_threshold".into(),
                format!("{} must be zero or more", m.drift_threshold),
            ));
        }
        if m.drift_window_days == 0 {
            return Err((
                "model.drift_window_days".into(),
                "must be at least 1".into(),
            ));
        }
        for name in self
            .features
            .numeric_attributes
            .iter()
            .chain(&self.features.categorical_attributes)
        {
            if name.trim().is_empty() {
                return Err(("features".into(), "an attribute name is empty".into()));
            }
        }
        if let Some(name) = self
            .features
            .numeric_attributes
            .iter()
            .find(|n| self.features.categorical_attributes.contains(n))
        {
            return Err((
                "features".into(),
                format!("attribute `{name}` is listed as both numeric and categorical"),
            ));
        }
        self.training.validate()?;
        if !(s.premium > s.high_priority && s.high_priority > s.standard) {
            return Err((
                "segments".into(),
                format!(
                    "thresholds must fall: premium {} > high_priority {} > standard {}",
                    s.premium, s.high_priority, s.standard
                ),
            ));
        }
        Ok(())
    }
}
