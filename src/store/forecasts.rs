//! Forecasts made: stored once per forecast_id, listed newest first.

use super::*;

/// A forecast with its inputs summarised.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ForecastRecord {
    pub forecast_id: String,
    pub kind: String,
    pub generated_at: i64,
    pub horizon_days: i32,
    pub confidence: f64,
    /// The model whose probabilities it used, if any.
    pub model_version: Option<String>,
    /// Leads it counted (open leads, leads observed, or days of series).
    pub leads_counted: i64,
    /// The ForecastEvent as JSON.
    pub event: String,
    /// The whole result as JSON.
    pub detail: String,
}

store_concern! {
    /// Forecasts made: stored once per forecast_id, listed newest first.
    pub trait Forecasts {
        /// Stores `record` unless its forecast_id is already there; true
        /// when it was new.
        async fn record_forecast(&self, record: &ForecastRecord) -> Result<bool, StoreError> {
            let inserted = sqlx::query(
                "INSERT INTO lead_forecasts (forecast_id, kind, generated_at, horizon_days,
                    confidence, model_version, leads_counted, event, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (forecast_id) DO NOTHING",
            )
            .bind(&record.forecast_id)
            .bind(&record.kind)
            .bind(record.generated_at)
            .bind(record.horizon_days)
            .bind(record.confidence)
            .bind(&record.model_version)
            .bind(record.leads_counted)
            .bind(&record.event)
            .bind(&record.detail)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(inserted == 1)
        }

        /// Up to `limit` forecasts of `kind` (any kind when `None`), newest first.
        // `$1 = ''` rather than `$1 IS NULL`: PostgreSQL cannot type a
        // parameter that is only tested for NULL.
        async fn forecasts(&self, kind: Option<&str>, limit: i64) -> Result<Vec<ForecastRecord>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT forecast_id, kind, generated_at, horizon_days, confidence, model_version,
                    leads_counted, event, detail
                 FROM lead_forecasts WHERE $1 = '' OR kind = $1
                 ORDER BY generated_at DESC, forecast_id LIMIT $2",
            )
            .bind(kind.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
