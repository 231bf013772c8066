//! Training data and the training run: point-in-time rows from closed leads
//! (or a CSV file), a time-based hold-out, the learner, and its metrics.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::drift::Profile;
use super::evaluation::{evaluate, Metrics};
use super::features::{extract, Encoder, FeatureDef, FeatureValue};
use super::linear::{Logistic, LogisticParams};
use super::model::{Learner, ModelType, TrainedModel};
use super::table::{ColumnKind, Table};
use super::trees::{train_boosting, train_forest, BoostingParams, ForestParams};
use super::ScoringConfig;
use crate::core::state::LeadState;
use crate::events::{Millis, Stage};

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("not enough training data: {rows} closed leads, {positives} won (need at least {min_rows} rows and both outcomes)")]
    NotEnoughData {
        rows: usize,
        positives: usize,
        min_rows: usize,
    },
    #[error("{path}: {reason}")]
    Csv { path: String, reason: String },
    #[error("{path} line {line}: {reason}")]
    CsvRow {
        path: String,
        line: u64,
        reason: String,
    },
    #[error(transparent)]
    Fit(#[from] super::linear::FitError),
}

/// One labelled row: a lead's features just before its outcome.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub at: Millis,
    pub values: Vec<FeatureValue>,
    pub label: f64,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub features: Vec<FeatureDef>,
    /// Whether `Example::at` is a time (false: a CSV file's line number).
    pub timed: bool,
    /// Oldest first: the hold-out is the newest tail.
    pub examples: Vec<Example>,
}

/// When the closing stage change happened, if the lead is closed.
pub fn closed_at(lead: &LeadState) -> Option<Millis> {
    matches!(lead.stage, Stage::ClosedWon | Stage::ClosedLost)
        .then_some(lead.stage_entered_at)
        .flatten()
}

impl Dataset {
    /// Rows from closed leads: each lead's state just before it closed,
    /// evaluated at the close.
    pub fn from_closed_leads(
        leads: &[LeadState],
        scoring: &ScoringConfig,
        features: Vec<FeatureDef>,
    ) -> Dataset {
        let mut examples: Vec<Example> = leads
            .iter()
            .filter_map(|lead| {
                let at = closed_at(lead)?;
                let before = lead.pre_close.as_deref()?;
                Some(Example {
                    id: lead.lead_ext_id.clone(),
                    at,
                    values: extract(before, at, &scoring.policy(), &features),
                    label: (lead.stage == Stage::ClosedWon) as u8 as f64,
                })
            })
            .collect();
        examples.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        Dataset {
            features,
            timed: true,
            examples,
        }
    }

    pub fn positives(&self) -> usize {
        self.examples.iter().filter(|e| e.label > 0.5).count()
    }

    pub fn table(&self, encoder: &Encoder, range: std::ops::Range<usize>) -> (Table, Vec<f64>) {
        let mut table = Table::new(encoder.kinds());
        let mut labels = Vec::with_capacity(range.len());
        for example in &self.examples[range] {
            table.push_row(&encoder.encode(&example.values));
            labels.push(example.label);
        }
        (table, labels)
    }

    /// Index where the hold-out (the newest `fraction`) starts.
    pub fn holdout_start(&self, fraction: f64) -> usize {
        let n = self.examples.len();
        n - ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1))
    }

    /// The rows of the time-based hold-out: the newest `fraction`.
    pub fn holdout_rows(&self, fraction: f64) -> std::ops::Range<usize> {
        self.holdout_start(fraction)..self.examples.len()
    }
}

/// How to read a CSV file as training data.
#[derive(Debug, Clone, Default)]
pub struct CsvSpec {
    pub target: String,
    /// Feature columns; empty means every column but the target, id and time.
    pub features: Vec<String>,
    /// Columns to treat as categories; others are numbers when every value
    /// parses as one and categories otherwise.
    pub categorical: Vec<String>,
    /// Orders the rows for the time-based split; file order without it.
    pub time_column: Option<String>,
    pub id_column: Option<String>,
}

/// Reads a target value as 1 (won) or 0 (lost).
pub fn parse_outcome(raw: &str) -> Result<f64, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "won" | "closed_won" => Ok(1.0),
        "0" | "0.0" | "false" | "no" | "lost" | "closed_lost" => Ok(0.0),
        other => Err(format!(
            "outcome `{other}` is not one of 1/0, true/false, yes/no, won/lost, closed_won/closed_lost"
        )),
    }
}

pub fn parse_time(raw: &str) -> Result<Millis, String> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_millis()
        })
        .map_err(|_| format!("`{raw}` is not epoch millis, RFC 3339 or YYYY-MM-DD"))
}

impl Dataset {
    pub fn from_csv(
        path: &str,
        reader: impl Read,
        spec: &CsvSpec,
    ) -> Result<Dataset, TrainingError> {
        let csv_error = |reason: String| TrainingError::Csv {
            path: path.to_string(),
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(reader);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(e.to_string()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let column = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                csv_error(format!(
                    "no column `{name}` (columns: {})",
                    headers.join(", ")
                ))
            })
        };
        let target = column(&spec.target)?;
        let time = spec.time_column.as_deref().map(column).transpose()?;
        let id = spec.id_column.as_deref().map(column).transpose()?;
        let feature_columns: Vec<usize> = if spec.features.is_empty() {
            (0..headers.len())
                .filter(|i| *i != target && Some(*i) != time && Some(*i) != id)
                .collect()
        } else {
            spec.features
                .iter()
                .map(|f| column(f))
                .collect::<Result<_, _>>()?
        };
        for name in &spec.categorical {
            if !feature_columns.iter().any(|&c| headers[c] == *name) {
                return Err(csv_error(format!(
                    "categorical column `{name}` is not a feature column"
                )));
            }
        }
        let mut records = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i as u64 + 2;
            let record = record.map_err(|e| TrainingError::CsvRow {
                path: path.to_string(),
                line,
                reason: e.to_string(),
            })?;
            records.push((line, record));
        }
        let kinds: Vec<ColumnKind> = feature_columns
            .iter()
            .map(|&c| {
                let forced = spec.categorical.contains(&headers[c]);
                let numeric = records.iter().all(|(_, r)| {
                    let v = r[c].trim();
                    v.is_empty() || v.parse::<f64>().is_ok()
                });
                if forced || !numeric {
                    ColumnKind::Categorical
                } else {
                    ColumnKind::Numeric
                }
            })
            .collect();
        let row_error = |line: u64, reason: String| TrainingError::CsvRow {
            path: path.to_string(),
            line,
            reason,
        };
        let mut examples = Vec::with_capacity(records.len());
        for (line, record) in &records {
            let label = parse_outcome(&record[target])
                .map_err(|r| row_error(*line, format!("column `{}`: {r}", spec.target)))?;
            let at = match time {
                Some(t) => parse_time(&record[t])
                    .map_err(|r| row_error(*line, format!("column `{}`: {r}", headers[t])))?,
                None => *line as Millis,
            };
            let values = feature_columns
                .iter()
                .zip(&kinds)
                .map(|(&c, kind)| {
                    let v = record[c].trim();
                    match kind {
                        ColumnKind::Numeric => FeatureValue::Number(v.parse().unwrap_or(f64::NAN)),
                        ColumnKind::Categorical => {
                            FeatureValue::Category((!v.is_empty()).then(|| v.to_string()))
                        }
                    }
                })
                .collect();
            examples.push(Example {
                id: id.map_or_else(|| format!("line {line}"), |c| record[c].to_string()),
                at,
                values,
                label,
            });
        }
        // Stable: rows with equal times keep their file order.
        examples.sort_by_key(|e| e.at);
        let features = feature_columns
            .iter()
            .zip(kinds)
            .map(|(&c, kind)| FeatureDef {
                name: headers[c].clone(),
                kind,
            })
            .collect();
        Ok(Dataset {
            features,
            timed: time.is_some(),
            examples,
        })
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model: Metrics,
    /// The rule-based initial score (÷100) on the same rows, when the data
    /// has it: the bar a model must clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_score: Option<Metrics>,
}

pub struct TrainingOutcome {
    pub model: TrainedModel,
    pub evaluation: Evaluation,
    pub train_rows: usize,
    pub holdout_rows: usize,
    /// Close times of the oldest and newest training row.
    pub window: (Millis, Millis),
    /// Drift reference: the training rows' feature distributions.
    pub profile: Profile,
    /// The whole run: encoding, fitting, evaluating.
    pub seconds: f64,
    /// The learner alone (binning included), comparable with other libraries' fit.
    pub fit_seconds: f64,
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
    let holdout_start = dataset.holdout_start(config.holdout_fraction);
    let encoder = Encoder::fit(
        dataset.features.clone(),
        dataset.examples[..holdout_start]
            .iter()
            .map(|e| e.values.as_slice()),
    );
    let (train_table, train_y) = dataset.table(&encoder, 0..holdout_start);
    let encoded = started.elapsed().as_secs_f64();
    let learner = match config.model_type {
        ModelType::GradientBoosting => {
            let params = &config.gradient_boosting;
            let valid_start =
                holdout_start - ((holdout_start as f64 * config.validation_fraction) as usize);
            let fit_rows: Vec<usize> = (0..valid_start).collect();
            let valid_rows: Vec<usize> = (valid_start..holdout_start).collect();
            let fit = train_table.select(&fit_rows);
            let valid = train_table.select(&valid_rows);
            progress.stage("gradient boosting (trees)", params.max_trees as u64);
            let booster = train_boosting(
                &fit,
                &train_y[..valid_start],
                (!valid_rows.is_empty()).then_some((&valid, &train_y[valid_start..])),
                params,
                &mut |trees, _| progress.advance(trees as u64),
            );
            Learner::GradientBoosting(booster)
        }
        ModelType::RandomForest => {
            progress.stage("random forest (trees)", config.random_forest.trees as u64);
            Learner::RandomForest(train_forest(
                &train_table,
                &train_y,
                &config.random_forest,
                &|done| progress.advance(done as u64),
            ))
        }
        ModelType::Logistic => {
            progress.stage("logistic regression", 1);
            let model = Logistic::fit(&train_table, &train_y, &config.logistic)?;
            progress.advance(1);
            Learner::Logistic(model)
        }
    };
    let fitted = started.elapsed().as_secs_f64();
    let model = TrainedModel {
        encoder: encoder.clone(),
        learner,
    };
    let evaluation = evaluate_model(&model, dataset, holdout_start..n);
    tracing::debug!(
        encode_s = encoded,
        fit_s = fitted - encoded,
        evaluate_s = started.elapsed().as_secs_f64() - fitted,
        "training time"
    );
    Ok(TrainingOutcome {
        profile: Profile::of(&encoder.features, &train_table),
        model,
        evaluation,
        train_rows: holdout_start,
        holdout_rows: n - holdout_start,
        window: (
            dataset.examples[0].at,
            dataset.examples[holdout_start - 1].at,
        ),
        seconds: started.elapsed().as_secs_f64(),
        fit_seconds: fitted - encoded,
    })
}

/// A model's metrics on some of a dataset's rows (features matched by name,
/// so a model trained on other columns still reads what it knows).
pub fn evaluate_model(
    model: &TrainedModel,
    dataset: &Dataset,
    rows: std::ops::Range<usize>,
) -> Evaluation {
    let position: BTreeMap<&str, usize> = dataset
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    let examples = &dataset.examples[rows];
    let labels: Vec<f64> = examples.iter().map(|e| e.label).collect();
    let probabilities: Vec<f64> = examples
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
        .collect();
    let rule_score = position.get("initial_score").map(|&i| {
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
        model: evaluate(&probabilities, &labels),
        rule_score,
    }
}
