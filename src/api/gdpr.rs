//! GDPR routes, admin keys only: `DELETE /leads/{id}` (a lead's erasure)
//! and `GET /leads/{id}/export` (everything held about it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::core::clock::wall_clock_millis;
use crate::events::check_text;
use crate::events::text_limits::MAX_LEAD_ID_BYTES;
use crate::gdpr::{export_lead, request_erasure, ErasureRequest, GdprError};
use crate::store::Leads;

use super::keys::Caller;
use super::problem::{ApiPath, ApiQuery, Problem};
use super::ApiState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    /// Why, for the audit (e.g. the data subject request's reference).
    reason: Option<String>,
}

/// Where the erasure was written; the processor that owns the partition
/// applies it once its stored offset passes `offset`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureAccepted {
    pub lead_ext_id: String,
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Whether the store held the lead when asked. An unknown lead is erased
    /// all the same: its events may still be on their way.
    pub known: bool,
    /// Set when the lead had been erased before (the new erasure changes nothing).
    pub already_erased_at: Option<i64>,
}

#[utoipa::path(
    delete, path = "/api/v1/leads/{id}", tag = "gdpr",
    params(("id" = String, Path, description = "The lead's lead_ext_id"), EraseQuery),
    responses(
        (status = 202, description = "The erasure was written to the lead's input partition and audited", body = ErasureAccepted),
        super::openapi::Problems
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn erase(
    State(api): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EraseQuery>,
) -> Result<(StatusCode, Json<ErasureAccepted>), Problem> {
    // Checked before the store reads it: PostgreSQL refuses a NUL in text.
    check_text("lead_ext_id", &id, MAX_LEAD_ID_BYTES)
        .map_err(|e| Problem::bad_request("invalid_path", e))?;
    let stored = api.store.get_lead(&id).await?;
    let request = ErasureRequest {
        lead_ext_id: &id,
        actor: &caller.key_id,
        reason: query.reason.as_deref(),
        at: wall_clock_millis(),
        inactive_since: None,
    };
    let requested = request_erasure(
        &api.config,
        &api.codec,
        &api.producer,
        api.store.as_ref(),
        request,
    )
    .await
    .map_err(|e| match e {
        GdprError::InvalidLead(_) => Problem::bad_request("invalid_path", e.to_string()),
        GdprError::InvalidReason(_) => Problem::bad_request("invalid_query", e.to_string()),
        GdprError::Broker(_) | GdprError::Encode(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
        .with_header("retry-after", "1".into()),
        GdprError::Audit(store) | GdprError::Store(store) => Problem::from(store),
        GdprError::UnknownLead(_) => Problem::not_found(e.to_string()),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ErasureAccepted {
            lead_ext_id: id,
            event_id: requested.event_id,
            topic: requested.topic,
            partition: requested.partition,
            offset: requested.offset,
            known: stored.is_some(),
            already_erased_at: stored.and_then(|s| s.erased_at),
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/leads/{id}/export", tag = "gdpr",
    params(("id" = String, Path, description = "The lead's lead_ext_id")),
    responses(
        (status = 200, description = "Everything held about the lead (docs/GDPR.md, \"Export\"); the request is audited", body = serde_json::Value),
        super::openapi::Problems
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn export(
    State(api): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    check_text("lead_ext_id", &id, MAX_LEAD_ID_BYTES)
        .map_err(|e| Problem::bad_request("invalid_path", e))?;
    let export = export_lead(api.store.as_ref(), &id, &caller.key_id, wall_clock_millis())
        .await
        .map_err(|e| match e {
            GdprError::UnknownLead(_) => Problem::not_found(e.to_string()),
            GdprError::Store(store) | GdprError::Audit(store) => Problem::from(store),
            other => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        })?;
    Ok(Json(
        serde_json::to_value(export).expect("an export is plain data"),
    ))
}
