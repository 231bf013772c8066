//! `/models` (the registry, activation, retraining) and `/jobs/{id}`.
//!
//! A retrain is a job: `POST /models/retrain` answers 202 with its id at
//! once and trains on a blocking thread, as the processor's own retrains
//! do; `GET /jobs/{id}` says how it went. Jobs live in the memory of the
//! processor that runs them (a restart forgets them; the model registry
//! keeps what they made).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::clock::wall_clock_millis;
use crate::events::timestamp::format as rfc3339;
use crate::ml::model::ModelType;
use crate::ml::training::NoProgress;
use crate::registry::{dataset_from_store, train_and_register, Activation};
use crate::store::{ModelRecord, Models, StoreError};

use super::problem::{ApiJson, ApiPath, Problem};
use super::ApiState;

/// A registry entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub version: i64,
    /// gradient_boosting, random_forest or logistic.
    pub model_type: String,
    pub active: bool,
    pub activated_at: Option<String>,
    pub trained_at: String,
    /// cli, schedule, drift, api, csv:<file>.
    pub reason: String,
    pub train_rows: i64,
    pub holdout_rows: i64,
    pub training_seconds: f64,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Hold-out metrics (ROC AUC, Brier, ...) and the previous model's on the same rows.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// The features the model reads, in order.
    #[schema(value_type = Vec<Object>)]
    pub features: serde_json::Value,
}

impl From<ModelRecord> for ModelView {
    fn from(r: ModelRecord) -> ModelView {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        let e = r.entry;
        ModelView {
            version: r.version,
            model_type: e.model_type,
            active: r.active,
            activated_at: r.activated_at.map(rfc3339),
            trained_at: rfc3339(e.trained_at),
            reason: e.reason,
            train_rows: e.train_rows,
            holdout_rows: e.holdout_rows,
            training_seconds: e.training_seconds,
            params: json(&e.params),
            metrics: json(&e.metrics),
            features: json(&e.features),
        }
    }
}

#[utoipa::path(
    get, path = "/api/v1/models", tag = "models",
    params(super::reports::NoQuery),
    responses((status = 200, description = "Every model version, newest first", body = Vec<ModelView>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn list(
    State(api): State<Arc<ApiState>>,
    _query: super::problem::ApiQuery<super::reports::NoQuery>,
) -> Result<Json<Vec<ModelView>>, Problem> {
    let models = api.store.list_models().await?;
    Ok(Json(models.into_iter().map(ModelView::from).collect()))
}

async fn record(api: &ApiState, version: i64) -> Result<ModelRecord, Problem> {
    api.store
        .model_record(version)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no model version {version}")))
}

#[utoipa::path(
    get, path = "/api/v1/models/{version}", tag = "models",
    params(("version" = i64, Path, description = "The registry version")),
    responses((status = 200, description = "The model version", body = ModelView), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn one(
    State(api): State<Arc<ApiState>>,
    ApiPath(version): ApiPath<i64>,
) -> Result<Json<ModelView>, Problem> {
    Ok(Json(ModelView::from(record(&api, version).await?)))
}

#[utoipa::path(
    post, path = "/api/v1/models/{version}/activate", tag = "models",
    params(("version" = i64, Path, description = "The registry version")),
    responses((status = 200, description = "The version is the active model; running processors switch to it within scoring.model.poll_interval_ms", body = ModelView), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn activate(
    State(api): State<Arc<ApiState>>,
    ApiPath(version): ApiPath<i64>,
) -> Result<Json<ModelView>, Problem> {
    match api.store.activate_model(version, wall_clock_millis()).await {
        Err(StoreError::ModelNotFound(v)) => {
            return Err(Problem::not_found(format!("no model version {v}")))
        }
        other => other?,
    }
    Ok(Json(ModelView::from(record(&api, version).await?)))
}

/// The seed's retrain request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrainRequest {
    /// Must be true: the request asks for a retrain.
    pub retrain_model: bool,
    /// gradient_boosting, random_forest or logistic; default: scoring.training.model_type.
    pub ml_model_type: Option<String>,
}

/// A background job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// retrain.
    pub kind: String,
    /// running, succeeded or failed.
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The version the retrain registered, and whether it became active
    /// (only if not worse than the active model on the same rows).
    pub model_version: Option<i64>,
    pub activated: Option<bool>,
    pub error: Option<String>,
}

/// Jobs by id.
#[derive(Default)]
pub struct Jobs(Mutex<BTreeMap<String, Job>>);

impl Jobs {
    fn put(&self, job: Job) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(job.id.clone(), job);
    }

    fn get(&self, id: &str) -> Option<Job> {
        self.0.lock().expect("not poisoned").get(id).cloned()
    }
}

#[utoipa::path(
    post, path = "/api/v1/models/retrain", tag = "models",
    request_body = RetrainRequest,
    responses((status = 202, description = "Training started; follow it at /api/v1/jobs/{id}", body = Job), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn retrain(
    State(api): State<Arc<ApiState>>,
    ApiJson(request): ApiJson<RetrainRequest>,
) -> Result<(StatusCode, Json<Job>), Problem> {
    if !request.retrain_model {
        return Err(Problem::bad_request(
            "invalid_body",
            "retrain_model is false: there is nothing to do",
        ));
    }
    let mut scoring = api.config.scoring.clone();
    if let Some(t) = &request.ml_model_type {
        scoring.training.model_type = t.parse::<ModelType>().map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("ml_model_type: {e}"),
            )
        })?;
    }
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let job = Job {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        kind: "retrain".into(),
        status: "running".into(),
        started_at: rfc3339(wall_clock_millis()),
        finished_at: None,
        model_version: None,
        activated: None,
        error: None,
    };
    api.jobs.put(job.clone());
    let running = job.clone();
    let api_task = api.clone();
    tokio::spawn(async move {
        let store = api_task.store.as_ref();
        let window = scoring.training.window_days;
        let result = match dataset_from_store(store, &scoring, window).await {
            Ok(dataset) => {
                let now = wall_clock_millis();
                train_and_register(
                    store,
                    &scoring,
                    dataset,
                    "api",
                    Activation::IfNotWorse,
                    Arc::new(NoProgress),
                    now,
                    true,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let finished = Some(rfc3339(wall_clock_millis()));
        api_task.jobs.put(match result {
            Ok(registered) => Job {
                status: "succeeded".into(),
                finished_at: finished,
                model_version: Some(registered.version),
                activated: Some(registered.activated),
                ..running
            },
            Err(e) => Job {
                status: "failed".into(),
                finished_at: finished,
                error: Some(e),
                ..running
            },
        });
    });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(
    get, path = "/api/v1/jobs/{id}", tag = "models",
    params(("id" = String, Path, description = "The job id POST /models/retrain gave")),
    responses((status = 200, description = "The job", body = Job), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn job(
    State(api): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, Problem> {
    api.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no job `{id}` on this processor")))
}
