//! `/leads` (the list, one lead, its timeline) and `POST /events`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::core::state::LeadState;
use crate::events::timestamp::{format as rfc3339, parse_rfc3339};
use crate::events::{InputEvent, InputStream, LeadEventKind, ScoreFactor};
use crate::pipeline::check_event_time;
use crate::store::{Deliveries, LeadFilter, LeadOrder, LeadSummary, Leads, Transitions};

use super::problem::{ApiJson, ApiPath, ApiQuery, Problem};
use super::{page_size, ApiState, Page};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeadQuery {
    /// Only leads in this stage.
    stage: Option<String>,
    /// Only leads in this segment (premium, high_priority, standard, low).
    segment: Option<String>,
    owner: Option<String>,
    source: Option<String>,
    /// Only leads with a final score at least this.
    min_score: Option<f64>,
    /// Only leads updated at or after this time (RFC 3339).
    updated_since: Option<String>,
    /// `updated` (newest first, the default) or `score` (highest first).
    sort: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page (default `api.default_page_size`, at most `api.max_page_size`).
    limit: Option<u32>,
}

/// A row of the lead list.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeadRow {
    pub lead_ext_id: String,
    pub stage: String,
    pub owner: Option<String>,
    pub source: Option<String>,
    pub segment: Option<String>,
    pub final_score: Option<f64>,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&LeadSummary> for LeadRow {
    fn from(l: &LeadSummary) -> LeadRow {
        LeadRow {
            lead_ext_id: l.lead_ext_id.clone(),
            stage: l.stage.clone(),
            owner: l.owner.clone(),
            source: l.source.clone(),
            segment: l.segment.clone(),
            final_score: l.final_score,
            updated_at: rfc3339(l.updated_at),
        }
    }
}

fn encode_cursor(key: f64, id: &str) -> String {
    format!("{key}:{id}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> Option<(f64, String)> {
    if cursor.len() % 2 != 0 || !cursor.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (key, id) = text.split_once(':')?;
    Some((
        key.parse().ok().filter(|k: &f64| k.is_finite())?,
        id.to_string(),
    ))
}

/// Refuses a value of a closed set that is not in it.
fn one_of<T: std::str::FromStr<Err = String>>(
    name: &str,
    value: &Option<String>,
) -> Result<(), Problem> {
    match value {
        Some(v) => v
            .parse::<T>()
            .map(|_| ())
            .map_err(|e| Problem::bad_request("invalid_query", format!("{name}: {e}"))),
        None => Ok(()),
    }
}

#[utoipa::path(
    get, path = "/api/v1/leads", tag = "leads",
    params(LeadQuery),
    responses((status = 200, description = "A page of leads", body = Page<LeadRow>), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn list(
    State(api): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<LeadQuery>,
) -> Result<Json<Page<LeadRow>>, Problem> {
    let limit = page_size(&api.config, q.limit)?;
    one_of::<crate::events::Stage>("stage", &q.stage)?;
    one_of::<crate::events::Segment>("segment", &q.segment)?;
    let order = match q.sort.as_deref() {
        None | Some("updated") => LeadOrder::Updated,
        Some("score") => LeadOrder::Score,
        Some(other) => {
            return Err(Problem::bad_request(
                "invalid_query",
                format!("sort `{other}`: expected updated or score"),
            ))
        }
    };
    if q.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(Problem::bad_request(
            "invalid_query",
            "min_score must be a number",
        ));
    }
    let updated_since =
        match &q.updated_since {
            Some(t) => Some(parse_rfc3339(t).map_err(|e| {
                Problem::bad_request("invalid_query", format!("updated_since: {e}"))
            })?),
            None => None,
        };
    let after = match &q.cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            Problem::bad_request("invalid_query", "cursor: not a cursor this API gave")
        })?),
        None => None,
    };
    let filter = LeadFilter {
        stage: q.stage.as_deref().unwrap_or(""),
        segment: q.segment.as_deref().unwrap_or(""),
        owner: q.owner.as_deref().unwrap_or(""),
        source: q.source.as_deref().unwrap_or(""),
        min_score: q.min_score,
        updated_since,
        order,
        after: after.as_ref().map(|(k, id)| (*k, id.as_str())),
        limit,
    };
    let rows = api.store.search_leads(&filter).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| {
            let key = match order {
                LeadOrder::Score => last.final_score.unwrap_or(-1.0),
                LeadOrder::Updated => last.updated_at as f64,
            };
            encode_cursor(key, &last.lead_ext_id)
        });
    Ok(Json(Page {
        items: rows.iter().map(LeadRow::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreView {
    pub final_score: f64,
    pub initial_score: f64,
    pub ml_score: Option<f64>,
    pub segment: String,
    /// The registry version that scored it; none when rules alone did.
    pub model_version: Option<String>,
    pub computed_at: String,
    /// What moved the model's probability most, when the model that scored
    /// the lead is the active one.
    pub top_factors: Vec<Factor>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Factor {
    pub feature: String,
    pub contribution: f64,
}

impl From<ScoreFactor> for Factor {
    fn from(f: ScoreFactor) -> Factor {
        Factor {
            feature: f.feature,
            contribution: f.contribution,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NurtureView {
    /// not_enrolled, active, paused, completed or exited.
    pub status: String,
    pub sequence: Option<String>,
    pub variant: Option<String>,
    pub next_step: usize,
    /// When the next step is due (RFC 3339).
    pub due: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InteractionCount {
    pub count: u64,
    pub first_at: String,
    pub last_at: String,
}

/// One lead as the processor holds it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeadView {
    pub lead_ext_id: String,
    pub stage: String,
    pub stage_entered_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    pub source: Option<String>,
    pub owner: Option<String>,
    pub estimated_value: Option<f64>,
    pub deal_value: Option<f64>,
    pub events_applied: u64,
    pub score: Option<ScoreView>,
    pub nurturing: NurtureView,
    /// Interactions per kind.
    pub interactions: BTreeMap<String, InteractionCount>,
}

fn status_name(state: &LeadState) -> String {
    serde_json::to_value(state.nurture.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn load(api: &ApiState, id: &str) -> Result<LeadState, Problem> {
    let state = api
        .store
        .get_lead(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no lead `{id}`")))?;
    match state.erased_at {
        Some(at) => Err(Problem::new(
            StatusCode::GONE,
            "erased",
            format!("lead `{id}` was erased at {} (GDPR)", rfc3339(at)),
        )),
        None => Ok(state),
    }
}

#[utoipa::path(
    get, path = "/api/v1/leads/{id}", tag = "leads",
    params(("id" = String, Path, description = "The lead's lead_ext_id")),
    responses((status = 200, description = "The lead", body = LeadView), super::openapi::Problems),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn one(
    State(api): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LeadView>, Problem> {
    let state = load(&api, &id).await?;
    // Rules alone scored it: no model to explain it with, none to look up.
    let model = match state.score.as_ref().and_then(|s| s.model_version.as_ref()) {
        Some(_) => api.active_model().await?,
        None => None,
    };
    let score = state.score.as_ref().map(|s| {
        let scored_by_active = model
            .as_ref()
            .is_some_and(|m| s.model_version.as_deref() == Some(m.version.to_string().as_str()));
        let top_factors = match (&model, scored_by_active) {
            (Some(m), true) => {
                use crate::core::apply::ConversionModel;
                m.explain(&state, s.computed_at, &api.config.scoring.policy())
                    .factors
                    .into_iter()
                    .map(Factor::from)
                    .collect()
            }
            _ => Vec::new(),
        };
        ScoreView {
            final_score: s.final_score,
            initial_score: s.initial_score,
            ml_score: s.ml_score,
            segment: s.segment.as_str().to_string(),
            model_version: s.model_version.clone(),
            computed_at: rfc3339(s.computed_at),
            top_factors,
        }
    });
    let n = &state.nurture;
    Ok(Json(LeadView {
        lead_ext_id: state.lead_ext_id.clone(),
        stage: state.stage.as_str().to_string(),
        stage_entered_at: state.stage_entered_at.map(rfc3339),
        created_at: state.created_at.map(rfc3339),
        updated_at: rfc3339(state.updated_at),
        email: state.email.clone(),
        phone: state.phone.clone(),
        first_name: state.first_name.clone(),
        last_name: state.last_name.clone(),
        company: state.company.clone(),
        source: state.source.clone(),
        owner: state.owner.clone(),
        estimated_value: state.estimated_value,
        deal_value: state.deal_value,
        events_applied: state.events_applied,
        score,
        nurturing: NurtureView {
            status: status_name(&state),
            sequence: n.sequence.clone(),
            variant: n.variant.clone(),
            next_step: n.next_step,
            due: n.due.map(rfc3339),
            reason: n.reason.clone(),
        },
        interactions: state
            .interactions
            .iter()
            .map(|(kind, s)| {
                let count = InteractionCount {
                    count: s.count,
                    first_at: rfc3339(s.first_at),
                    last_at: rfc3339(s.last_at),
                };
                (kind.as_str().to_string(), count)
            })
            .collect(),
    }))
}

/// One entry of a lead's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// RFC 3339.
    pub at: String,
    /// created, stage_change, nurture or delivery.
    pub kind: String,
    pub summary: String,
    pub from_stage: Option<String>,
    pub to_stage: Option<String>,
    pub owner: Option<String>,
    pub value: Option<f64>,
    /// The input event (stage changes) or the outbound message (deliveries).
    pub id: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/leads/{id}/timeline", tag = "leads",
    params(("id" = String, Path, description = "The lead's lead_ext_id")),
    responses(
        (status = 200, description = "The lead's creation, stage changes, nurturing notes and message deliveries, oldest first", body = Vec<TimelineEntry>),
        super::openapi::Problems
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn timeline(
    State(api): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<TimelineEntry>>, Problem> {
    let state = load(&api, &id).await?;
    let mut entries: Vec<(i64, TimelineEntry)> = Vec::new();
    let entry = |kind: &str, summary: String| TimelineEntry {
        at: String::new(),
        kind: kind.into(),
        summary,
        from_stage: None,
        to_stage: None,
        owner: None,
        value: None,
        id: None,
    };
    for t in api.store.transitions(Some(&id)).await? {
        let (kind, summary) = match &t.from_stage {
            None if t.seq == 0 => ("created", format!("created in {}", t.to_stage)),
            from => (
                "stage_change",
                format!("{} → {}", from.as_deref().unwrap_or("?"), t.to_stage),
            ),
        };
        let e = TimelineEntry {
            from_stage: t.from_stage.clone(),
            to_stage: Some(t.to_stage.clone()),
            owner: t.owner.clone(),
            value: t.value,
            id: t.event_id.clone(),
            ..entry(kind, summary)
        };
        entries.push((t.at, e));
    }
    for note in &state.nurture.history {
        entries.push((note.at, entry("nurture", note.note.clone())));
    }
    for d in api.store.lead_deliveries(&id).await? {
        let mut summary = format!("{} {} {}", d.channel, d.template, d.status);
        if let Some(reason) = &d.reason {
            summary.push_str(&format!(": {reason}"));
        }
        let e = TimelineEntry {
            id: Some(d.message_id.clone()),
            ..entry("delivery", summary)
        };
        entries.push((d.updated_at, e));
    }
    entries.sort_by_key(|(at, _)| *at);
    Ok(Json(
        entries
            .into_iter()
            .map(|(at, e)| TimelineEntry {
                at: rfc3339(at),
                ..e
            })
            .collect(),
    ))
}

/// An input event to publish: its kind and the event as the input topics
/// take it in JSON (schemas/*.avsc).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// lead, interaction or stage_change.
    #[serde(rename = "type")]
    pub kind: String,
    /// The LeadEvent, InteractionEvent or StageChangeEvent.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Where the event was written: the processor has applied it once its
/// stored offset of that partition passes `offset`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventAccepted {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub lead_ext_id: String,
}

#[utoipa::path(
    post, path = "/api/v1/events", tag = "events",
    request_body = EventRequest,
    responses(
        (status = 202, description = "Validated as the processor validates it and written to its input topic", body = EventAccepted),
        super::openapi::Problems
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn post_event(
    State(api): State<Arc<ApiState>>,
    ApiJson(request): ApiJson<EventRequest>,
) -> Result<(StatusCode, Json<EventAccepted>), Problem> {
    let stream = match request.kind.as_str() {
        "lead" => InputStream::Leads,
        "interaction" => InputStream::Interactions,
        "stage_change" => InputStream::StageChanges,
        other => {
            return Err(Problem::bad_request(
                "invalid_event",
                format!("type `{other}`: expected lead, interaction or stage_change"),
            ))
        }
    };
    let json = serde_json::to_vec(&request.event).expect("a JSON value");
    let invalid =
        |detail: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", detail);
    let event: InputEvent = api
        .codec
        .decode_input(stream, &json)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    if matches!(&event, InputEvent::Lead(e) if e.kind == LeadEventKind::Erased) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an erasure needs an admin key: DELETE /api/v1/leads/{id}",
        ));
    }
    let earliest = parse_rfc3339(&api.config.processor.earliest_event_time).unwrap_or(i64::MIN);
    check_event_time(&api.config.processor, earliest, &event, None)
        .map_err(|r| invalid(format!("{}: {}", r.kind, r.message)))?;
    let topic = api.config.topics.input(stream).to_string();
    let payload = api.codec.encode_input(&topic, &event).await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let key = event.lead_ext_id().to_string();
    let record = FutureRecord::to(&topic).key(&key).payload(&payload);
    let delivery = api
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the broker did not take the event: {e}"),
            )
            .with_header("retry-after", "1".into())
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(EventAccepted {
            topic,
            partition: delivery.partition,
            offset: delivery.offset,
            event_id: event.event_id().to_string(),
            lead_ext_id: key,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_a_forged_one_does_not() {
        let c = encode_cursor(72.5, "lead:7");
        assert_eq!(decode_cursor(&c), Some((72.5, "lead:7".to_string())));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abc"), None);
        assert_eq!(decode_cursor(&encode_cursor(f64::NAN, "x")), None);
    }
}
