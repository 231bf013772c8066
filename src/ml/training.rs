//! The training run: its configuration, the two ways rows are used (the
//! configured parameters with a time-based hold-out on big data; the
//! parameter search of `selection` and a refit on every row on small data),
//! and the metrics. One file past 600 lines because the two paths and the
//! outcome they fill are one contract, read together; the rows themselves
//! live in `dataset`, the search in `selection`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::drift::Profile;
use super::evaluation::{evaluate, Metrics};
use super::features::{Encoder, FeatureValue};
use super::linear::{Logistic, LogisticParams};
use super::model::{Learner, ModelType, TrainedModel};
use super::selection::{choose_boosting, choose_forest, choose_logistic, Folds, Tried};
use super::table::Table;
use super::trees::{train_boosting, train_forest, BoostingParams, ForestParams};
use crate::events::Millis;

pub use super::dataset::{
    closed_at, parse_outcome, parse_time, CsvSpec, Dataset, DatasetError, Example,
};

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("not enough training data: {rows} closed leads, {positives} won (need at least {min_rows} rows and both outcomes)")]
    NotEnoughData {
        rows: usize,
        positives: usize,
        min_rows: usize,
    },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Fit(#[from] super::linear::FitError),
}

/// Everything `train` needs to know besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub model_type: ModelType,
    /// Closed leads of this many days (up to the newest close) are used.
    pub window_days: u32,
    /// The newest fraction of closes held out for the metrics.
    pub holdout_fraction: f64,
    /// The newest fraction of the rest that early stopping watches.
    pub validation_fraction: f64,
    pub min_rows: usize,
    /// Up to this many rows, parameters are chosen by cross-validation and
    /// the model refit on every row (0: never; the configured parameters as
    /// they are, with the time-based hold-out and early stopping).
    pub cross_validation_max_rows: usize,
    pub cross_validation_folds: usize,
    pub gradient_boosting: BoostingParams,
    pub random_forest: ForestParams,
    pub logistic: LogisticParams,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            model_type: ModelType::GradientBoosting,
            window_days: 90,
            holdout_fraction: 0.2,
            validation_fraction: 0.15,
            min_rows: 50,
            cross_validation_max_rows: 20_000,
            cross_validation_folds: 5,
            gradient_boosting: BoostingParams::default(),
            random_forest: ForestParams::default(),
            logistic: LogisticParams::default(),
        }
    }
}

impl TrainingConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fraction = |key: &str, v: f64| {
            if v > 0.0 && v < 0.9 {
                Ok(())
            } else {
                Err((key.to_string(), format!("{v} must be between 0 and 0.9")))
            }
        };
        fraction("training.holdout_fraction", self.holdout_fraction)?;
        fraction("training.validation_fraction", self.validation_fraction)?;
        if !(2..=20).contains(&self.cross_validation_folds) {
            return Err((
                "training.cross_validation_folds".into(),
                format!("{} is outside 2..20", self.cross_validation_folds),
            ));
        }
        if self.window_days == 0 {
            return Err(("training.window_days".into(), "must be at least 1".into()));
        }
        let gb = &self.gradient_boosting;
        if !(gb.learning_rate > 0.0 && gb.learning_rate <= 1.0) {
            return Err((
                "training.gradient_boosting.learning_rate".into(),
                format!("{} must be in (0, 1]", gb.learning_rate),
            ));
        }
        for (key, v) in [
            ("training.gradient_boosting.subsample", gb.subsample),
            ("training.gradient_boosting.colsample", gb.colsample),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err((key.into(), format!("{v} must be in (0, 1]")));
            }
        }
        for (key, v, least) in [
            ("training.gradient_boosting.max_leaves", gb.max_leaves, 2),
            ("training.gradient_boosting.max_trees", gb.max_trees, 1),
            ("training.random_forest.trees", self.random_forest.trees, 1),
            (
                "training.random_forest.max_leaves",
                self.random_forest.max_leaves,
                2,
            ),
        ] {
            if v < least {
                return Err((key.into(), format!("{v} is less than {least}")));
            }
        }
        for (key, alpha) in [
            (
                "training.gradient_boosting.linear_start_alpha",
                gb.linear_start_alpha.unwrap_or(0.0),
            ),
            ("training.logistic.alpha", self.logistic.alpha),
        ] {
            if !(alpha >= 0.0 && alpha.is_finite()) {
                return Err((
                    key.into(),
                    format!("{alpha} must be a penalty of 0 or more"),
                ));
            }
        }
        for (key, bins) in [
            ("training.gradient_boosting.max_bins", gb.max_bins),
            (
                "training.random_forest.max_bins",
                self.random_forest.max_bins,
            ),
        ] {
            if !(2..=255).contains(&bins) {
                return Err((key.into(), format!("{bins} is outside 2..255")));
            }
        }
        Ok(())
    }

    pub fn params_json(&self) -> serde_json::Value {
        match self.model_type {
            ModelType::GradientBoosting => serde_json::to_value(&self.gradient_boosting),
            ModelType::RandomForest => serde_json::to_value(&self.random_forest),
            ModelType::Logistic => serde_json::to_value(&self.logistic),
        }
        .expect("parameters are plain data")
    }
}

/// What a training run reports to a progress bar or the log.
pub trait Progress: Sync {
    fn stage(&self, name: &str, total: u64);
    fn advance(&self, done: u64);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Where a model's metrics come from: always rows it did not see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EvaluationMethod {
    /// The newest rows, scored by a model fitted on the older ones.
    #[default]
    HoldOut,
    /// Every row, scored by the fold model that did not see it.
    CrossValidated { folds: usize },
    /// Every row, scored by the forest's trees that did not draw it.
    OutOfBag,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(default)]
    pub method: EvaluationMethod,
    pub model: Metrics,
    /// The rule-based initial score (÷100) on the same rows, when the data
    /// has it: the bar a model must clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_score: Option<Metrics>,
}

pub struct TrainingOutcome {
    pub model: TrainedModel,
    pub evaluation: Evaluation,
    /// The dataset's rows the evaluation scored (a model compared with this
    /// one is scored on the same rows).
    pub evaluated: std::ops::Range<usize>,
    /// The probabilities the evaluation scored, one per row of `evaluated`.
    pub probabilities: Vec<f64>,
    /// Rows the returned model was fitted on.
    pub train_rows: usize,
    pub holdout_rows: usize,
    /// The parameters the model was fitted with (chosen ones after a search,
    /// the number of trees included).
    pub params: serde_json::Value,
    /// The candidates a search compared (empty without a search).
    pub tried: Vec<Tried>,
    /// Times of the oldest and newest row the model was fitted on.
    pub window: (Millis, Millis),
    /// Drift reference: the training rows' feature distributions.
    pub profile: Profile,
    /// The whole run: encoding, fitting, evaluating.
    pub seconds: f64,
    /// The learner alone (binning and any parameter search included),
    /// comparable with other libraries' fit.
    pub fit_seconds: f64,
}

/// What a fit produced, before the outcome's bookkeeping.
struct Fitted {
    learner: Learner,
    evaluation: Option<(EvaluationMethod, Vec<f64>)>,
    evaluated: std::ops::Range<usize>,
    train_rows: usize,
    params: serde_json::Value,
    tried: Vec<Tried>,
}

pub fn train(
    dataset: &Dataset,
    config: &TrainingConfig,
    progress: &dyn Progress,
) -> Result<TrainingOutcome, TrainingError> {
    let started = std::time::Instant::now();
    let n = dataset.examples.len();
    let positives = dataset.positives();
    if n < config.min_rows.max(4) || positives == 0 || positives == n {
        return Err(TrainingError::NotEnoughData {
            rows: n,
            positives,
            min_rows: config.min_rows.max(4),
        });
    }
    let searched = n <= config.cross_validation_max_rows;
    // Without a search the newest rows stay out of everything but the
    // metrics; with one the final model sees every row, so the categories
    // are coded from every row too (codes come from frequencies, not labels).
    let coded_rows = if searched {
        n
    } else {
        dataset.holdout_start(config.holdout_fraction)
    };
    let encoder = Encoder::fit(
        dataset.features.clone(),
        dataset.examples[..coded_rows]
            .iter()
            .map(|e| e.values.as_slice()),
    );
    let (table, y) = dataset.table(&encoder, 0..n);
    let encoded = started.elapsed().as_secs_f64();
    let fitted = if searched {
        fit_searched(dataset, &table, &y, &encoder, config, progress)?
    } else {
        fit_with_holdout(&table, &y, coded_rows, config, progress)?
    };
    let fit_done = started.elapsed().as_secs_f64();
    let model = TrainedModel {
        encoder: encoder.clone(),
        learner: fitted.learner,
    };
    let (method, probabilities) = fitted.evaluation.unwrap_or_else(|| {
        (
            EvaluationMethod::HoldOut,
            probabilities_of(&model, dataset, fitted.evaluated.clone()),
        )
    });
    let evaluation = evaluation_of(dataset, fitted.evaluated.clone(), &probabilities, method);
    tracing::debug!(
        encode_s = encoded,
        fit_s = fit_done - encoded,
        evaluate_s = started.elapsed().as_secs_f64() - fit_done,
        "training time"
    );
    let fit_table = table.select(&(0..fitted.train_rows).collect::<Vec<_>>());
    Ok(TrainingOutcome {
        profile: Profile::of(&encoder.features, &fit_table),
        model,
        evaluation,
        probabilities,
        holdout_rows: fitted.evaluated.len(),
        evaluated: fitted.evaluated,
        train_rows: fitted.train_rows,
        params: fitted.params,
        tried: fitted.tried,
        window: (
            dataset.examples[0].at,
            dataset.examples[fitted.train_rows - 1].at,
        ),
        seconds: started.elapsed().as_secs_f64(),
        fit_seconds: fit_done - encoded,
    })
}

/// The configured parameters as they are: the newest rows held out for the
/// metrics, the newest of the rest watching early stopping. For data big
/// enough that neither slice is missed.
fn fit_with_holdout(
    table: &Table,
    y: &[f64],
    holdout_start: usize,
    config: &TrainingConfig,
    progress: &dyn Progress,
) -> Result<Fitted, TrainingError> {
    let rows = |range: std::ops::Range<usize>| table.select(&range.collect::<Vec<_>>());
    let train_y = &y[..holdout_start];
    let learner = match config.model_type {
        ModelType::GradientBoosting => {
            let params = &config.gradient_boosting;
            let valid_start =
                holdout_start - ((holdout_start as f64 * config.validation_fraction) as usize);
            let fit = rows(0..valid_start);
            let valid = rows(valid_start..holdout_start);
            progress.stage("gradient boosting (trees)", params.max_trees as u64);
            let booster = train_boosting(
                &fit,
                &train_y[..valid_start],
                (valid_start < holdout_start).then_some((&valid, &train_y[valid_start..])),
                params,
                &mut |trees, _| progress.advance(trees as u64),
            );
            Learner::GradientBoosting(booster)
        }
        ModelType::RandomForest => {
            progress.stage("random forest (trees)", config.random_forest.trees as u64);
            Learner::RandomForest(train_forest(
                &rows(0..holdout_start),
                train_y,
                &config.random_forest,
                &|done| progress.advance(done as u64),
            ))
        }
        ModelType::Logistic => {
            progress.stage("logistic regression", 1);
            let model = Logistic::fit(&rows(0..holdout_start), train_y, &config.logistic)?;
            progress.advance(1);
            Learner::Logistic(model)
        }
    };
    Ok(Fitted {
        learner,
        evaluation: None,
        evaluated: holdout_start..y.len(),
        train_rows: holdout_start,
        params: config.params_json(),
        tried: Vec::new(),
    })
}

/// Small data: parameters chosen by cross-validation (out-of-bag rows for
/// the forest), then one model on every row. Rows in time order keep the
/// time-based hold-out for the metrics: the search runs on the older rows,
/// the winner fitted on them is scored on the newest, and the final model
/// is the winner refitted on all. Rows without times are scored by their
/// held-out predictions from the search.
fn fit_searched(
    dataset: &Dataset,
    table: &Table,
    y: &[f64],
    encoder: &Encoder,
    config: &TrainingConfig,
    progress: &dyn Progress,
) -> Result<Fitted, TrainingError> {
    let n = y.len();
    let timed = dataset.timed;
    let search_rows = if timed {
        dataset.holdout_start(config.holdout_fraction)
    } else {
        n
    };
    let search_table = table.select(&(0..search_rows).collect::<Vec<_>>());
    let search_y = &y[..search_rows];
    let folds = Folds::new(
        search_y,
        config.cross_validation_folds,
        timed,
        config.gradient_boosting.seed,
    );
    let done = std::sync::atomic::AtomicU64::new(0);
    let on_fit = || progress.advance(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
    // The newest rows' probabilities from the winner fitted on the older ones.
    let holdout_probabilities = |learner: &Learner| -> Vec<f64> {
        let model = TrainedModel {
            encoder: encoder.clone(),
            learner: learner.clone(),
        };
        (search_rows..n)
            .map(|r| model.probability_encoded(&table.row(r)))
            .collect()
    };
    let (learner, held_out, method, params, tried) = match config.model_type {
        ModelType::GradientBoosting => {
            let base = &config.gradient_boosting;
            let fits = super::selection::boosting_fits(base, &config.logistic, folds.count);
            progress.stage(
                "gradient boosting (cross-validated fits)",
                (fits + 1 + timed as usize) as u64,
            );
            let chosen = choose_boosting(
                &search_table,
                search_y,
                &folds,
                base,
                &config.logistic,
                &on_fit,
            );
            let refit = |table: &Table, y: &[f64]| {
                let booster = train_boosting(table, y, None, &chosen.params, &mut |_, _| {});
                on_fit();
                Learner::GradientBoosting(booster)
            };
            let holdout = timed.then(|| holdout_probabilities(&refit(&search_table, search_y)));
            (
                refit(table, y),
                holdout.unwrap_or(chosen.held_out),
                EvaluationMethod::CrossValidated { folds: folds.count },
                serde_json::to_value(&chosen.params),
                chosen.tried,
            )
        }
        ModelType::RandomForest => {
            let base = &config.random_forest;
            let candidates = super::selection::forest_candidates(base).len();
            progress.stage(
                "random forest (out-of-bag compared fits)",
                (candidates + timed as usize) as u64,
            );
            let (chosen, fit) = choose_forest(&search_table, search_y, base, &on_fit);
            let (learner, held_out) = if timed {
                let older = Learner::RandomForest(fit.forest);
                let holdout = holdout_probabilities(&older);
                let all = train_forest(table, y, &chosen.params, &|_| {});
                on_fit();
                (Learner::RandomForest(all), holdout)
            } else {
                (Learner::RandomForest(fit.forest), chosen.held_out)
            };
            (
                learner,
                held_out,
                EvaluationMethod::OutOfBag,
                serde_json::to_value(&chosen.params),
                chosen.tried,
            )
        }
        ModelType::Logistic => {
            let base = &config.logistic;
            let candidates = super::selection::logistic_candidates(base).len();
            progress.stage(
                "logistic regression (cross-validated fits)",
                (candidates * folds.count + 1 + timed as usize) as u64,
            );
            let chosen = choose_logistic(&search_table, search_y, &folds, base, &on_fit);
            // Every candidate failing on some fold is a fit error on the
            // configured penalty, which says why.
            let params = chosen.as_ref().map_or(base.clone(), |c| c.params.clone());
            let refit = |table: &Table, y: &[f64]| -> Result<Learner, TrainingError> {
                let model = Logistic::fit(table, y, &params)?;
                on_fit();
                Ok(Learner::Logistic(model))
            };
            let holdout = if timed {
                Some(holdout_probabilities(&refit(&search_table, search_y)?))
            } else {
                None
            };
            let learner = refit(table, y)?;
            let (held_out, tried) = match chosen {
                Some(c) => (c.held_out, c.tried),
                None => (Vec::new(), Vec::new()),
            };
            (
                learner,
                holdout.unwrap_or(held_out),
                EvaluationMethod::CrossValidated { folds: folds.count },
                serde_json::to_value(&params),
                tried,
            )
        }
    };
    let (method, evaluated) = if timed {
        (EvaluationMethod::HoldOut, search_rows..n)
    } else {
        (method, 0..n)
    };
    for t in &tried {
        tracing::debug!(params = %t.params, log_loss = t.log_loss, "candidate");
    }
    Ok(Fitted {
        learner,
        evaluation: Some((method, held_out)),
        evaluated,
        train_rows: n,
        params: params.expect("parameters are plain data"),
        tried,
    })
}

/// A model's metrics on some of a dataset's rows (features matched by name,
/// so a model trained on other columns still reads what it knows).
pub fn evaluate_model(
    model: &TrainedModel,
    dataset: &Dataset,
    rows: std::ops::Range<usize>,
) -> Evaluation {
    let probabilities = probabilities_of(model, dataset, rows.clone());
    evaluation_of(dataset, rows, &probabilities, EvaluationMethod::HoldOut)
}

/// A model's probabilities for some of a dataset's rows.
fn probabilities_of(
    model: &TrainedModel,
    dataset: &Dataset,
    rows: std::ops::Range<usize>,
) -> Vec<f64> {
    let position: BTreeMap<&str, usize> = dataset
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    dataset.examples[rows]
        .iter()
        .map(|e| {
            let values: Vec<FeatureValue> = model
                .encoder
                .features
                .iter()
                .map(|f| match position.get(f.name.as_str()) {
                    Some(&i) => e.values[i].clone(),
                    None => FeatureValue::Number(f64::NAN),
                })
                .collect();
            model.probability(&values)
        })
        .collect()
}

/// The metrics of `probabilities` for a dataset's `rows`, with the rule
/// score's on the same rows when the data has it.
pub fn evaluation_of(
    dataset: &Dataset,
    rows: std::ops::Range<usize>,
    probabilities: &[f64],
    method: EvaluationMethod,
) -> Evaluation {
    let examples = &dataset.examples[rows];
    let labels: Vec<f64> = examples.iter().map(|e| e.label).collect();
    let rule_score = dataset
        .features
        .iter()
        .position(|f| f.name == "initial_score")
        .map(|i| {
            let scores: Vec<f64> = examples
                .iter()
                .map(|e| match e.values[i] {
                    FeatureValue::Number(v) if v.is_finite() => v / 100.0,
                    _ => 0.0,
                })
                .collect();
            evaluate(&scores, &labels)
        });
    Evaluation {
        method,
        model: evaluate(probabilities, &labels),
        rule_score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::features::FeatureDef;
    use crate::ml::table::ColumnKind;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn dataset(n: usize, timed: bool) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let examples = (0..n)
            .map(|i| {
                let x: f64 = rng.random::<f64>() * 2.0 - 1.0;
                let c = ["a", "b", "c"][rng.random_range(0..3)];
                let logit = 2.0 * x + if c == "b" { 1.0 } else { -0.5 };
                Example {
                    id: format!("row {i}"),
                    at: i as Millis,
                    values: vec![
                        FeatureValue::Number(x),
                        FeatureValue::Category(Some(c.to_string())),
                    ],
                    label: (rng.random::<f64>() < crate::ml::table::sigmoid(logit)) as u8 as f64,
                }
            })
            .collect();
        Dataset {
            features: vec![
                FeatureDef {
                    name: "x".into(),
                    kind: ColumnKind::Numeric,
                },
                FeatureDef {
                    name: "c".into(),
                    kind: ColumnKind::Categorical,
                },
            ],
            timed,
            examples,
        }
    }

    #[test]
    fn small_data_are_searched_and_refit_on_every_row() {
        for model_type in [
            ModelType::GradientBoosting,
            ModelType::RandomForest,
            ModelType::Logistic,
        ] {
            let config = TrainingConfig {
                model_type,
                ..TrainingConfig::default()
            };
            // Without times: every row fits the model, every row is scored
            // by a model that did not see it.
            let untimed = train(&dataset(800, false), &config, &NoProgress).unwrap();
            assert_eq!(untimed.train_rows, 800, "{model_type}");
            assert_eq!(untimed.evaluated, 0..800);
            assert_eq!(untimed.evaluation.model.rows, 800);
            let expected = match model_type {
                ModelType::RandomForest => EvaluationMethod::OutOfBag,
                _ => EvaluationMethod::CrossValidated { folds: 5 },
            };
            assert_eq!(untimed.evaluation.method, expected);
            assert!(!untimed.tried.is_empty());
            assert!(untimed.evaluation.model.roc_auc > 0.7, "{model_type}");

            // With times: the newest fifth is the hold-out, yet the final
            // model saw it too.
            let timed = train(&dataset(800, true), &config, &NoProgress).unwrap();
            assert_eq!(timed.train_rows, 800);
            assert_eq!(timed.evaluated, 640..800);
            assert_eq!(timed.evaluation.method, EvaluationMethod::HoldOut);
            assert_eq!(timed.window, (0, 799));
            assert_eq!(timed.probabilities.len(), 160);
        }
    }

    #[test]
    fn without_a_search_the_configured_parameters_train_as_they_are() {
        let config = TrainingConfig {
            cross_validation_max_rows: 0,
            ..TrainingConfig::default()
        };
        let outcome = train(&dataset(800, true), &config, &NoProgress).unwrap();
        assert_eq!(outcome.train_rows, 640);
        assert_eq!(outcome.evaluated, 640..800);
        assert!(outcome.tried.is_empty());
        assert_eq!(outcome.params, config.params_json());
        assert_eq!(outcome.window, (0, 639));
    }

    #[test]
    fn scoring_from_feature_values_gives_the_bits_of_the_encoded_row() {
        let config = TrainingConfig {
            cross_validation_max_rows: 0,
            ..TrainingConfig::default()
        };
        let model = train(&dataset(800, true), &config, &NoProgress)
            .unwrap()
            .model;
        let crate::ml::model::Learner::GradientBoosting(booster) = &model.learner else {
            panic!("the default learner is gradient boosting");
        };
        // Only a booster without a linear start reads the values directly.
        assert!(booster.linear.is_none());
        let rows = [
            vec![
                FeatureValue::Number(0.3),
                FeatureValue::Category(Some("b".into())),
            ],
            vec![
                FeatureValue::Number(-0.9),
                FeatureValue::Category(Some("a".into())),
            ],
            vec![FeatureValue::Number(f64::NAN), FeatureValue::Category(None)],
            vec![
                FeatureValue::Number(f64::INFINITY),
                FeatureValue::Category(Some("unseen".into())),
            ],
            vec![
                FeatureValue::Number(7.0),
                FeatureValue::Category(Some("c".into())),
            ],
        ];
        let mut distinct = std::collections::BTreeSet::new();
        for row in &rows {
            let encoded = model.encoder.encode(row);
            let direct = model.probability(row);
            assert_eq!(
                direct.to_bits(),
                model.probability_encoded(&encoded).to_bits(),
                "{row:?}"
            );
            distinct.insert(direct.to_bits());
        }
        assert!(
            distinct.len() >= 3,
            "the rows should score apart: {distinct:?}"
        );
    }
}
