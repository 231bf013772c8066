//! `/analytics/...`, `/forecasts` and `/experiments`: the reports
//! `leadflow analytics`, `leadflow forecast` and `leadflow experiments`
//! print, as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::analytics::breakdown::{self, Day, Dimension, Group, StageValue};
use crate::analytics::funnel::{self, Funnel};
use crate::analytics::history::AnalyticsRow;
use crate::analytics::time_in_stage::{self, StageTime};
use crate::analytics::{period, period_days};
use crate::config::ClockMode;
use crate::core::clock::wall_clock_millis;
use crate::core::nurture::experiments::{report, ExperimentReport};
use crate::events::timestamp::format as rfc3339;
use crate::forecast::scheduled::{forecasts_as_of, ForecastPlan};
use crate::pipeline::forecasts::record_on_demand;
use crate::store::{Experiments, ForecastRecord, Forecasts, History, Leads, Transitions};

use super::problem::{ApiQuery, Problem};
use super::{page_size, ApiState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// First day counted (UTC, YYYY-MM-DD); default: the first.
    #[param(value_type = Option<String>, format = Date)]
    from: Option<NaiveDate>,
    /// Last day counted (UTC, YYYY-MM-DD, inclusive); default: the last.
    #[param(value_type = Option<String>, format = Date)]
    to: Option<NaiveDate>,
}

impl PeriodQuery {
    fn range(&self) -> Result<(i64, i64), Problem> {
        period(self.from, self.to).map_err(|e| Problem::bad_request("invalid_query", e))
    }
}

#[utoipa::path(
    get, path = "/api/v1/analytics/funnel", tag = "analytics",
    params(PeriodQuery),
    responses((status = 200, description = "Of the leads created in the period: reached each stage, conversion to the next and to closed_won", body = Funnel), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn funnel(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<Funnel>, Problem> {
    let (from, until) = q.range()?;
    Ok(Json(funnel::funnel(
        &api.store.furthest_stages(from, until).await?,
    )))
}

#[utoipa::path(
    get, path = "/api/v1/analytics/time-in-stage", tag = "analytics",
    params(PeriodQuery),
    responses((status = 200, description = "Per open stage, of the entries in the period: days in it (Kaplan–Meier; leads still in it censored)", body = Vec<StageTime>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn time_in_stage(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<Vec<StageTime>>, Problem> {
    let (from, until) = q.range()?;
    let rows = api.store.transitions(None).await?;
    Ok(Json(time_in_stage::time_in_stage(&rows, from, until)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BreakdownQuery {
    /// owner or source.
    #[param(value_type = String)]
    by: Dimension,
    #[param(value_type = Option<String>, format = Date)]
    from: Option<NaiveDate>,
    #[param(value_type = Option<String>, format = Date)]
    to: Option<NaiveDate>,
}

#[utoipa::path(
    get, path = "/api/v1/analytics/breakdown", tag = "analytics",
    params(BreakdownQuery),
    responses((status = 200, description = "Per owner or source, of the leads created in the period", body = Vec<Group>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn breakdown(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<BreakdownQuery>,
) -> Result<Json<Vec<Group>>, Problem> {
    let (from, until) =
        period(q.from, q.to).map_err(|e| Problem::bad_request("invalid_query", e))?;
    let rows = api.store.transitions(None).await?;
    Ok(Json(breakdown::breakdown(&rows, q.by, from, until)))
}

#[utoipa::path(
    get, path = "/api/v1/analytics/daily", tag = "analytics",
    params(PeriodQuery),
    responses((status = 200, description = "Per UTC day: created, contacted, won, lost, won value", body = Vec<Day>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn daily(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<Vec<Day>>, Problem> {
    let (from, until) = q.range()?;
    let rows = api.store.transitions_between(from, until).await?;
    Ok(Json(breakdown::daily(&rows, from, until)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NoQuery {}

#[utoipa::path(
    get, path = "/api/v1/analytics/pipeline", tag = "analytics",
    params(NoQuery),
    responses((status = 200, description = "Open leads and their value per current stage", body = Vec<StageValue>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn pipeline(
    State(api): State<Arc<ApiState>>,
    _query: ApiQuery<NoQuery>,
) -> Result<Json<Vec<StageValue>>, Problem> {
    let rows = api.store.transitions(None).await?;
    Ok(Json(breakdown::pipeline_by_stage(&rows)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this metric (created, contacted, won, lost, won_value, entered,
    /// open_leads, open_value).
    metric: Option<String>,
    /// Only this dimension: all, owner, source or stage.
    dimension: Option<String>,
    #[param(value_type = Option<String>, format = Date)]
    from: Option<NaiveDate>,
    #[param(value_type = Option<String>, format = Date)]
    to: Option<NaiveDate>,
}

#[utoipa::path(
    get, path = "/api/v1/analytics/history", tag = "analytics",
    params(HistoryQuery),
    responses((status = 200, description = "The daily rows the processor stored in lead_analytics", body = Vec<AnalyticsRow>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn history(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<AnalyticsRow>>, Problem> {
    let dimension = q.dimension.as_deref().unwrap_or("");
    if !["", "all", "owner", "source", "stage"].contains(&dimension) {
        return Err(Problem::bad_request(
            "invalid_query",
            format!("dimension `{dimension}`: expected all, owner, source or stage"),
        ));
    }
    let range = period(q.from, q.to).map_err(|e| Problem::bad_request("invalid_query", e))?;
    let (from, until) = period_days(range);
    let metric = q.metric.as_deref().unwrap_or("");
    Ok(Json(
        api.store
            .analytics_history(from, until, metric, dimension)
            .await?,
    ))
}

/// A stored forecast.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastView {
    pub forecast_id: String,
    /// pipeline_value, time_to_close or lead_generation.
    pub kind: String,
    pub generated_at: String,
    pub horizon_days: i32,
    pub confidence: f64,
    pub model_version: Option<String>,
    pub leads_counted: i64,
    /// Made by the processor's schedule (else asked for on demand).
    pub scheduled: bool,
    /// The ForecastEvent published on lead-forecasts.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// The whole result: every level, the breakdowns.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<ForecastRecord> for ForecastView {
    fn from(r: ForecastRecord) -> ForecastView {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        ForecastView {
            event: json(&r.event),
            detail: json(&r.detail),
            forecast_id: r.forecast_id,
            kind: r.kind,
            generated_at: rfc3339(r.generated_at),
            horizon_days: r.horizon_days,
            confidence: r.confidence,
            model_version: r.model_version,
            leads_counted: r.leads_counted,
            scheduled: r.scheduled,
        }
    }
}

const KINDS: [&str; 3] = ["pipeline_value", "time_to_close", "lead_generation"];

fn check_kind(kind: Option<&str>) -> Result<(), Problem> {
    match kind {
        Some(k) if !KINDS.contains(&k) => Err(Problem::bad_request(
            "invalid_query",
            format!("kind `{k}`: expected one of {}", KINDS.join(", ")),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// pipeline_value, time_to_close or lead_generation; default: every kind.
    kind: Option<String>,
    /// At most this many, newest first.
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/v1/forecasts", tag = "forecasts",
    params(ForecastQuery),
    responses((status = 200, description = "Stored forecasts, newest first", body = Vec<ForecastView>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn forecasts(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> Result<Json<Vec<ForecastView>>, Problem> {
    check_kind(q.kind.as_deref())?;
    let limit = page_size(&api.config, q.limit)?;
    let records = api.store.forecasts(q.kind.as_deref(), limit).await?;
    Ok(Json(records.into_iter().map(ForecastView::from).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LatestQuery {
    /// pipeline_value, time_to_close or lead_generation.
    kind: String,
}

#[utoipa::path(
    get, path = "/api/v1/forecasts/latest", tag = "forecasts",
    params(LatestQuery),
    responses((status = 200, description = "The newest forecast of the kind", body = ForecastView), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn latest_forecast(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<LatestQuery>,
) -> Result<Json<ForecastView>, Problem> {
    check_kind(Some(&q.kind))?;
    let latest = api.store.forecasts(Some(&q.kind), 1).await?.pop();
    latest
        .map(|r| Json(ForecastView::from(r)))
        .ok_or_else(|| Problem::not_found(format!("no {} forecast yet", q.kind)))
}

/// What a forecast run made.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastRun {
    /// RFC 3339: the time the forecasts are as of.
    pub at: String,
    /// The forecasts made (stored, and queued for lead-forecasts when new).
    pub made: Vec<ForecastView>,
    /// Kinds the data did not allow yet, with the reason.
    pub not_made: Vec<NotMadeView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotMadeView {
    pub kind: String,
    pub reason: String,
}

#[utoipa::path(
    post, path = "/api/v1/forecasts", tag = "forecasts",
    responses((status = 201, description = "Every forecast kind, made now over all leads, stored and queued", body = ForecastRun), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn run_forecasts(
    State(api): State<Arc<ApiState>>,
) -> Result<(StatusCode, Json<ForecastRun>), Problem> {
    let leads = api.store.all_lead_states().await?;
    // On event time "now" is the data's: the newest event applied.
    let at = match api.config.processor.clock {
        ClockMode::Wall => wall_clock_millis(),
        ClockMode::EventTime => api
            .store
            .newest_update()
            .await?
            .unwrap_or_else(wall_clock_millis),
    };
    let f = &api.config.forecast;
    let plan = ForecastPlan {
        horizon_days: f.horizon_days,
        lead_generation_days: f.lead_generation_days,
        levels: &f.levels,
    };
    let (made, not_made) = forecasts_as_of(&leads, at, &plan);
    record_on_demand(api.store.as_ref(), &api.config, &made, wall_clock_millis()).await?;
    let made = made
        .iter()
        .map(|m| ForecastView::from(ForecastRecord::new(m, false)))
        .collect();
    let not_made = not_made
        .into_iter()
        .map(|n| NotMadeView {
            kind: n.kind.to_string(),
            reason: n.reason,
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(ForecastRun {
            at: rfc3339(at),
            made,
            not_made,
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/experiments", tag = "experiments",
    params(NoQuery),
    responses((status = 200, description = "Per A/B test and variant: enrolled, replies, closed_won, lift and p-value against the control", body = Vec<ExperimentReport>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn experiments(
    State(api): State<Arc<ApiState>>,
    _query: ApiQuery<NoQuery>,
) -> Result<Json<Vec<ExperimentReport>>, Problem> {
    let counts = api.store.experiment_counts().await?;
    let order = api.config.nurture.sequences.0.experiments();
    Ok(Json(report(&counts, &order)))
}
