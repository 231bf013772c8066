//! GDPR requests at the edge. An erasure asked for by `leadflow erase` or
//! `DELETE /api/v1/leads/{id}` becomes an erasure event in the lead's
//! partition of the `leads` topic, so that the partition's owner applies it
//! in order with the lead's other events, exactly once (`core::apply`), and
//! the request is audited. An export (`leadflow export`,
//! `GET /api/v1/leads/{id}/export`) gathers what the store holds about a
//! lead into one document, audited too. Retention (`pipeline::retention`)
//! asks for its erasures the same way; [`shredding`] is the encryption of
//! outbound messages under per-lead keys. docs/GDPR.md says what each covers.

pub mod shredding;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::codec::{Codec, CodecError};
use crate::config::Config;
use crate::core::state::LeadState;
use crate::events::text_limits::MAX_FIELD_BYTES;
use crate::events::{
    check_text, InputEvent, InputStream, LeadEvent, Millis, ERASE_IF_INACTIVE_SINCE,
};
use crate::store::{
    AuditRecord, Deliveries, DeliveryRecord, GdprAudit, Leads, StoreError, ERASE_REQUESTED,
    EXPORTED,
};

#[derive(Debug, thiserror::Error)]
pub enum GdprError {
    #[error("the lead id cannot be erased: {0}")]
    InvalidLead(String),
    #[error("invalid reason: {0}")]
    InvalidReason(String),
    #[error("the erasure event does not encode: {0}")]
    Encode(#[from] CodecError),
    #[error("the broker did not take the erasure event: {0}")]
    Broker(String),
    #[error("the erasure was published but its audit line was not written: {0}")]
    Audit(StoreError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("no lead `{0}`")]
    UnknownLead(String),
}

/// An erasure written to the lead's input partition.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureRequested {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An erasure to ask for: of which lead, by whom (the audit line's actor:
/// `cli:<user>`, an API key's id, `retention`), why, and as of when.
#[derive(Debug, Clone, Copy)]
pub struct ErasureRequest<'a> {
    pub lead_ext_id: &'a str,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    /// The erasure's time (the event's `occurred_at`).
    pub at: Millis,
    /// Retention's condition: erase only if the lead has had no event since
    /// this time (a lead that came back to life meanwhile is kept).
    pub inactive_since: Option<Millis>,
}

/// Publishes the erasure to the lead's partition of the `leads` topic
/// (idempotent producer, acknowledgements from all replicas), then appends
/// the request to the audit. Erasing a lead the store does not hold yet is
/// allowed: its events may still be on their way, and they will be dropped
/// when they arrive. The same request (lead, actor, time) gives the same
/// event id, so asking twice erases once.
pub async fn request_erasure<S: GdprAudit>(
    config: &Config,
    codec: &Codec,
    producer: &FutureProducer,
    store: &S,
    request: ErasureRequest<'_>,
) -> Result<ErasureRequested, GdprError> {
    let lead_ext_id = request.lead_ext_id.trim();
    if let Some(reason) = request.reason {
        check_text("reason", reason, MAX_FIELD_BYTES).map_err(GdprError::InvalidReason)?;
    }
    let event_id = erasure_event_id(lead_ext_id, request.actor, request.at);
    let mut erasure = LeadEvent::erasure(event_id.clone(), lead_ext_id.to_string(), request.at);
    if let Some(since) = request.inactive_since {
        erasure
            .attributes
            .insert(ERASE_IF_INACTIVE_SINCE.into(), since.to_string());
    }
    let event = InputEvent::Lead(erasure);
    // What the processor would dead-letter is refused here, before anything
    // is published or audited.
    event.validate().map_err(GdprError::InvalidLead)?;
    let topic = config.topics.input(InputStream::Leads).to_string();
    let payload = codec.encode_input(&topic, &event).await?;
    let record = FutureRecord::to(&topic).key(lead_ext_id).payload(&payload);
    let delivered = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| GdprError::Broker(e.to_string()))?;
    store
        .append_audit(&AuditRecord {
            action: ERASE_REQUESTED.into(),
            lead_ext_id: lead_ext_id.to_string(),
            at: request.at,
            actor: request.actor.to_string(),
            reason: request.reason.map(str::to_string),
            event_id: Some(event_id.clone()),
        })
        .await
        .map_err(GdprError::Audit)?;
    Ok(ErasureRequested {
        event_id,
        topic,
        partition: delivered.partition,
        offset: delivered.offset,
    })
}

/// One id per request: the same requester asking twice in one millisecond
/// is one request.
fn erasure_event_id(lead_ext_id: &str, actor: &str, now: Millis) -> String {
    let name = format!("{lead_ext_id}\u{1f}{actor}\u{1f}{now}");
    format!(
        "erasure-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
    )
}

/// Everything leadflow holds about one lead, as `leadflow export` and
/// `GET /api/v1/leads/{id}/export` give it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeadExport {
    pub lead_ext_id: String,
    pub exported_at: Millis,
    /// The lead's state: contact fields, attributes, the current consent and
    /// its ledger, the stage history, the latest score with its model
    /// version, nurturing (with its notes and experiment memberships). An
    /// erased lead's is its tombstone.
    pub state: LeadState,
    /// The messages the delivery worker handled, with their outcomes.
    pub messages: Vec<ExportedMessage>,
    /// Erasure and export requests about the lead.
    pub audit: Vec<ExportedAuditLine>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedMessage {
    pub message_id: String,
    pub channel: String,
    pub template: String,
    pub status: String,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub reason: Option<String>,
    pub updated_at: i64,
}

impl From<DeliveryRecord> for ExportedMessage {
    fn from(d: DeliveryRecord) -> Self {
        ExportedMessage {
            message_id: d.message_id,
            channel: d.channel,
            template: d.template,
            status: d.status,
            attempts: d.attempts,
            provider_message_id: d.provider_message_id,
            reason: d.reason,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedAuditLine {
    pub action: String,
    pub at: i64,
    pub actor: String,
    pub reason: Option<String>,
}

/// The lead's export, with the request audited (the audit line is in the
/// document it makes).
pub async fn export_lead<S: Leads + Deliveries + GdprAudit>(
    store: &S,
    lead_ext_id: &str,
    actor: &str,
    now: Millis,
) -> Result<LeadExport, GdprError> {
    let state = store
        .get_lead(lead_ext_id)
        .await?
        .ok_or_else(|| GdprError::UnknownLead(lead_ext_id.to_string()))?;
    store
        .append_audit(&AuditRecord {
            action: EXPORTED.into(),
            lead_ext_id: lead_ext_id.to_string(),
            at: now,
            actor: actor.to_string(),
            reason: None,
            event_id: None,
        })
        .await?;
    let messages = store
        .lead_deliveries(lead_ext_id)
        .await?
        .into_iter()
        .map(ExportedMessage::from)
        .collect();
    let audit = store
        .audit_of(lead_ext_id)
        .await?
        .into_iter()
        .map(|a| ExportedAuditLine {
            action: a.action,
            at: a.at,
            actor: a.actor,
            reason: a.reason,
        })
        .collect();
    Ok(LeadExport {
        lead_ext_id: lead_ext_id.to_string(),
        exported_at: now,
        state,
        messages,
        audit,
    })
}
