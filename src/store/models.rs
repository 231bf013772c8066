//! The model registry: versions, their metrics and documents, and the one active model.

use super::*;

/// What training says about a model: written with it, read back in lists.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelEntry {
    pub model_type: String,
    pub params: String,
    pub features: String,
    pub metrics: String,
    pub reason: String,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub train_rows: i64,
    pub holdout_rows: i64,
    pub trained_at: i64,
    pub training_seconds: f64,
}

/// A model to add to the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    pub entry: ModelEntry,
    pub model: String,
    pub profile: Option<String>,
}

/// A registry entry without the (large) serialized model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelRecord {
    pub version: i64,
    #[sqlx(flatten)]
    pub entry: ModelEntry,
    pub active: bool,
    pub activated_at: Option<i64>,
}

/// The serialized model and its drift reference.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelDocument {
    pub version: i64,
    pub model: String,
    pub profile: Option<String>,
}

const MODEL_COLUMNS: &str = "version, model_type, params, features, metrics, reason, window_start,
    window_end, train_rows, holdout_rows, trained_at, training_seconds, active, activated_at";

store_concern! {
    /// The model registry: versions, their metrics and documents, and the one active model.
    pub trait Models {
        /// Adds a model (inactive) and returns its version.
        async fn insert_model(&self, m: &NewModel) -> Result<i64, StoreError> {
            let e = &m.entry;
            Ok(sqlx::query_scalar(
                "INSERT INTO models (model_type, params, features, metrics, reason, window_start,
                    window_end, train_rows, holdout_rows, trained_at, training_seconds, model, profile)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 RETURNING version",
            )
            .bind(&e.model_type)
            .bind(&e.params)
            .bind(&e.features)
            .bind(&e.metrics)
            .bind(&e.reason)
            .bind(e.window_start)
            .bind(e.window_end)
            .bind(e.train_rows)
            .bind(e.holdout_rows)
            .bind(e.trained_at)
            .bind(e.training_seconds)
            .bind(&m.model)
            .bind(&m.profile)
            .fetch_one(&self.pool)
            .await?)
        }

        /// Every registry entry, oldest first.
        async fn list_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
            Ok(sqlx::query_as(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY version"))
                .fetch_all(&self.pool)
                .await?)
        }

        async fn model_record(&self, version: i64) -> Result<Option<ModelRecord>, StoreError> {
            Ok(sqlx::query_as(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE version = $1"))
                .bind(version)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn model_document(&self, version: i64) -> Result<Option<ModelDocument>, StoreError> {
            Ok(sqlx::query_as("SELECT version, model, profile FROM models WHERE version = $1")
                .bind(version)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn active_model_version(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT version FROM models WHERE active")
                .fetch_optional(&self.pool)
                .await?)
        }

        /// Makes `version` the only active model.
        async fn activate_model(&self, version: i64, at: i64) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE models SET active = FALSE WHERE active AND version <> $1")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            let updated = sqlx::query(
                "UPDATE models SET active = TRUE, activated_at = $2 WHERE version = $1 AND NOT active",
            )
            .bind(version)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM models WHERE version = $1")
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err(StoreError::ModelNotFound(version));
                }
            }
            tx.commit().await?;
            Ok(())
        }
    }
}
