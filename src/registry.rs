//! The model registry's workflows over a [`LeadStore`]: build training data
//! from the store, train off the async runtime, register, compare with the
//! active model on the same hold-out, activate, and load the active model.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::{Millis, MILLIS_PER_DAY};
use crate::ml::drift::Profile;
use crate::ml::evaluation::{evaluate, Metrics};
use crate::ml::features::{extract, feature_defs};
use crate::ml::model::TrainedModel;
use crate::ml::table::Table;
use crate::ml::training::{
    evaluate_model, train, Dataset, Evaluation, Progress, TrainingError, TrainingOutcome,
};
use crate::ml::{ActiveModel, ScoringConfig};
use crate::store::{LeadStore, ModelEntry, NewModel, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error("model version {version} does not decode: {reason}")]
    Corrupt { version: i64, reason: String },
    #[error("training task failed: {0}")]
    Task(String),
}

/// Whether a newly trained model becomes the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Never,
    /// Only if its ROC AUC is at least the active model's on the same rows,
    /// rows the active model was not fitted on (see `comparison_rows`; when
    /// there are none, or nothing is active, it is activated).
    IfNotWorse,
    Always,
}

/// What the registry stores as `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMetrics {
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// The model that was active, on the same hold-out, when this one was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<(i64, Metrics)>,
}

pub struct Registered {
    pub version: i64,
    pub outcome: TrainingOutcome,
    pub previous: Option<(i64, Metrics)>,
    pub activated: bool,
}

/// The rows a new model is compared with the active one on.
struct Comparison {
    rows: std::ops::Range<usize>,
    /// Whether the active model cannot have been fitted on them.
    unseen: bool,
}

/// The new model's evaluated rows closed after the active model's training
/// window, when they hold both outcomes; otherwise all of its evaluated rows,
/// which the active model may have been fitted on.
async fn comparison_rows<S: LeadStore>(
    store: &S,
    dataset: &Dataset,
    outcome: &TrainingOutcome,
    active: i64,
) -> Result<Comparison, StoreError> {
    let all = outcome.evaluated.clone();
    let window_end = match dataset.timed {
        true => store
            .model_record(active)
            .await?
            .and_then(|r| r.entry.window_end),
        false => None,
    };
    let Some(end) = window_end else {
        return Ok(Comparison {
            rows: all,
            unseen: false,
        });
    };
    let start = all.start + dataset.examples[all.clone()].partition_point(|e| e.at <= end);
    let rows = start..all.end;
    let labels = dataset.examples[rows.clone()].iter().map(|e| e.label > 0.5);
    let both = labels.clone().any(|p| p) && labels.clone().any(|p| !p);
    Ok(if both {
        Comparison { rows, unseen: true }
    } else {
        Comparison {
            rows: all,
            unseen: false,
        }
    })
}

/// Closed leads of the `window_days` up to the newest close, as training rows.
pub async fn dataset_from_store<S: LeadStore>(
    store: &S,
    scoring: &ScoringConfig,
    window_days: u32,
) -> Result<Dataset, StoreError> {
    let features = feature_defs(&scoring.features);
    let Some(newest) = store.newest_close().await? else {
        return Ok(Dataset {
            features,
            timed: true,
            examples: Vec::new(),
        });
    };
    let leads = store
        .closed_leads(newest - window_days as Millis * MILLIS_PER_DAY)
        .await?;
    Ok(Dataset::from_closed_leads(&leads, scoring, features))
}

/// Features of the leads updated in the drift window (up to the newest
/// update), each as of its own last update: the population being scored.
pub async fn recent_traffic<S: LeadStore>(
    store: &S,
    scoring: &ScoringConfig,
    model: &TrainedModel,
    limit: i64,
) -> Result<Table, StoreError> {
    let mut table = Table::new(model.encoder.kinds());
    let Some(newest) = store.newest_update().await? else {
        return Ok(table);
    };
    let since = newest - scoring.model.drift_window_days as Millis * MILLIS_PER_DAY;
    for lead in store.recent_leads(since, limit).await? {
        let values = extract(
            &lead,
            lead.updated_at,
            &scoring.policy(),
            &model.encoder.features,
        );
        table.push_row(&model.encoder.encode(&values));
    }
    Ok(table)
}

/// Rows read for a drift reference or check.
pub const TRAFFIC_SAMPLE: i64 = 20_000;

pub async fn load_model<S: LeadStore>(
    store: &S,
    version: i64,
) -> Result<Option<ActiveModel>, RegistryError> {
    let Some(document) = store.model_document(version).await? else {
        return Ok(None);
    };
    let corrupt = |e: serde_json::Error| RegistryError::Corrupt {
        version,
        reason: e.to_string(),
    };
    let model: TrainedModel = serde_json::from_str(&document.model).map_err(corrupt)?;
    let profile: Option<Profile> = document
        .profile
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(corrupt)?;
    Ok(Some(ActiveModel {
        version,
        model,
        profile,
    }))
}

pub async fn load_active<S: LeadStore>(store: &S) -> Result<Option<ActiveModel>, RegistryError> {
    match store.active_model_version().await? {
        Some(version) => load_model(store, version).await,
        None => Ok(None),
    }
}

/// Trains on a dataset on a blocking thread, registers the result, and
/// activates it as `activation` says. `reason` is recorded (cli, schedule,
/// drift, api, csv:<file>).
#[allow(clippy::too_many_arguments)]
pub async fn train_and_register<S: LeadStore>(
    store: &S,
    scoring: &ScoringConfig,
    dataset: Dataset,
    reason: &str,
    activation: Activation,
    progress: Arc<dyn Progress + Send>,
    now: Millis,
    traffic_reference: bool,
) -> Result<Registered, RegistryError> {
    let training = scoring.training.clone();
    let (dataset, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = train(&dataset, &training, progress.as_ref());
        (dataset, outcome)
    })
    .await
    .map_err(|e| RegistryError::Task(e.to_string()))?;
    let mut outcome = outcome?;
    if traffic_reference {
        let traffic = recent_traffic(store, scoring, &outcome.model, TRAFFIC_SAMPLE).await?;
        if traffic.rows() >= scoring.model.drift_min_rows {
            outcome.profile = Profile::of(&outcome.model.encoder.features, &traffic);
        }
    }
    let window = dataset.timed.then_some(outcome.window);
    let active = load_active(store).await?;
    let comparison = match &active {
        Some(active) => Some(comparison_rows(store, &dataset, &outcome, active.version).await?),
        None => None,
    };
    let previous = active.as_ref().zip(comparison.as_ref()).map(|(active, c)| {
        (
            active.version,
            evaluate_model(&active.model, &dataset, c.rows.clone()).model,
        )
    });
    let activate = match activation {
        Activation::Never => false,
        Activation::Always => true,
        Activation::IfNotWorse => match (&previous, &comparison) {
            (Some((_, active)), Some(c)) if c.unseen => {
                let offset = c.rows.start - outcome.evaluated.start;
                let ours = &outcome.probabilities[offset..offset + c.rows.len()];
                let labels: Vec<f64> = dataset.examples[c.rows.clone()]
                    .iter()
                    .map(|e| e.label)
                    .collect();
                evaluate(ours, &labels).roc_auc >= active.roc_auc
            }
            // The active model saw every row there is to compare on (a
            // model refitted on all its rows saw its own hold-out), which
            // flatters it: nothing shows the newer model worse.
            _ => true,
        },
    };
    let stored = StoredMetrics {
        evaluation: outcome.evaluation.clone(),
        previous: previous.clone(),
    };
    let version = store
        .insert_model(&NewModel {
            entry: ModelEntry {
                model_type: outcome.model.model_type().as_str().to_string(),
                params: outcome.params.to_string(),
                features: serde_json::to_string(&outcome.model.encoder.features)
                    .expect("plain data"),
                metrics: serde_json::to_string(&stored).expect("plain data"),
                reason: reason.to_string(),
                window_start: window.map(|w| w.0),
                window_end: window.map(|w| w.1),
                train_rows: outcome.train_rows as i64,
                holdout_rows: outcome.holdout_rows as i64,
                trained_at: now,
                training_seconds: outcome.seconds,
            },
            model: serde_json::to_string(&outcome.model).expect("plain data"),
            profile: Some(serde_json::to_string(&outcome.profile).expect("plain data")),
        })
        .await?;
    if activate {
        store.activate_model(version, now).await?;
    }
    Ok(Registered {
        version,
        outcome,
        previous,
        activated: activate,
    })
}
