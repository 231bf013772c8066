//! Forecasts made: stored once per forecast_id (in the commit path's
//! transaction, see `batch.rs`), listed newest first.

use super::*;

use crate::forecast::scheduled::MadeForecast;

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
    /// Made by the processor's schedule (else asked for on demand).
    pub scheduled: bool,
}

impl ForecastRecord {
    pub fn new(made: &MadeForecast, scheduled: bool) -> Self {
        ForecastRecord {
            forecast_id: made.event.forecast_id.clone(),
            kind: made.event.kind.to_string(),
            generated_at: made.event.generated_at,
            horizon_days: made.event.horizon_days,
            confidence: made.event.confidence,
            model_version: made.model_version.clone(),
            leads_counted: made.leads_counted as i64,
            event: serde_json::to_string(&made.event).expect("events are plain data"),
            detail: made.detail.clone(),
            scheduled,
        }
    }
}

store_concern! {
    /// Forecasts made: stored once per forecast_id, listed newest first.
    pub trait Forecasts {
        /// Whether a forecast with this id is stored.
        async fn forecast_stored(&self, forecast_id: &str) -> Result<bool, StoreError> {
            let found: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM lead_forecasts WHERE forecast_id = $1",
            )
            .bind(forecast_id)
            .fetch_one(&self.pool)
            .await?;
            Ok(found > 0)
        }

        /// When the schedule's latest forecast was made; `None` before its first.
        async fn last_scheduled_forecast(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT MAX(generated_at) FROM lead_forecasts WHERE scheduled",
            )
            .fetch_one(&self.pool)
            .await?)
        }

        /// The earliest creation time of any lead: the schedule's first slot
        /// is the one after it.
        async fn earliest_creation(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT MIN(created_at) FROM leads")
                .fetch_one(&self.pool)
                .await?)
        }

        /// Up to `limit` forecasts of `kind` (any kind when `None`), newest first.
        // `$1 = ''` rather than `$1 IS NULL`: PostgreSQL cannot type a
        // parameter that is only tested for NULL.
        async fn forecasts(&self, kind: Option<&str>, limit: i64) -> Result<Vec<ForecastRecord>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT forecast_id, kind, generated_at, horizon_days, confidence, model_version,
                    leads_counted, event, detail, scheduled
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
