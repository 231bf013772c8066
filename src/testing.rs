//! Builders of events for tests and benchmarks (the `test-util`
//! feature, on in this crate's own tests): each gives a complete, valid
//! event with ordinary values, and a test states only what matters to it
//! with struct update syntax, e.g.
//! `LeadEvent { source: Some("ads".into()), ..lead_created("L-1", t0) }`.

use std::collections::BTreeMap;

use crate::events::{
    Channel, Consent, DeliveryEvent, DeliveryStatus, InteractionEvent, InteractionKind, LeadEvent,
    LeadEventKind, Millis, OutboundMessage, Stage, StageChangeEvent, MILLIS_PER_DAY,
};

/// A lead created at `at`: a referral from Faro Labs with both channels
/// consented, in Madrid, event id `<id>-created`.
pub fn lead_created(id: &str, at: Millis) -> LeadEvent {
    LeadEvent {
        event_id: format!("{id}-created"),
        lead_ext_id: id.into(),
        kind: LeadEventKind::Created,
        occurred_at: at,
        email: Some("ana@example.com".into()),
        phone: None,
        first_name: Some("Ana".into()),
        last_name: None,
        company: Some("Faro Labs".into()),
        source: Some("referral".into()),
        owner: Some("rep-02".into()),
        estimated_value: Some(30_000.0),
        probability: Some(0.4),
        initial_score: None,
        consent: Some(consent(true, true, at)),
        timezone: Some("Europe/Madrid".into()),
        attributes: BTreeMap::new(),
    }
}

/// Consent for email and SMS recorded at `at` from a form.
pub fn consent(email: bool, sms: bool, at: Millis) -> Consent {
    Consent {
        email: Some(email),
        sms: Some(sms),
        recorded_at: at,
        source: "form".into(),
    }
}

/// An interaction of `kind` on `channel`, event id `<id>-i<n>`.
pub fn interaction(
    id: &str,
    n: u32,
    kind: InteractionKind,
    at: Millis,
    channel: &str,
) -> InteractionEvent {
    InteractionEvent {
        event_id: format!("{id}-i{n}"),
        lead_ext_id: id.into(),
        occurred_at: at,
        kind,
        channel: Some(channel.into()),
        actor: None,
        attributes: BTreeMap::new(),
    }
}

/// A move to `to` with no owner or deal value, event id `<id>-s<n>`.
pub fn stage_change(id: &str, n: u32, to: Stage, at: Millis) -> StageChangeEvent {
    StageChangeEvent {
        event_id: format!("{id}-s{n}"),
        lead_ext_id: id.into(),
        occurred_at: at,
        from_stage: None,
        to_stage: to,
        owner: None,
        deal_value: None,
    }
}

/// Step 0 of sequence `seq` for lead `lead`, due and created at 0, with no
/// data; message id `<lead>-<template>`.
pub fn outbound_message(lead: &str, channel: Channel, to: &str, template: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: format!("{lead}-{template}"),
        lead_ext_id: lead.into(),
        channel,
        to: to.into(),
        template: template.into(),
        data: BTreeMap::new(),
        sequence: "seq".into(),
        step: 0,
        cycle: 0,
        variant: None,
        scheduled_for: 0,
        created_at: 0,
    }
}

/// SendGrid's report of `status` for email `message_id` to `lead`, event id
/// `<message_id>-<status>`.
pub fn delivery(message_id: &str, lead: &str, status: DeliveryStatus, at: Millis) -> DeliveryEvent {
    DeliveryEvent {
        event_id: format!("{message_id}-{status:?}"),
        message_id: message_id.into(),
        lead_ext_id: lead.into(),
        channel: Channel::Email,
        status,
        occurred_at: at,
        provider: Some("sendgrid".into()),
        provider_message_id: None,
        reason: None,
    }
}

/// What the default premium sequence sends to a lead created at `t0`: its
/// templates in order, each at `t0` plus its day from `days`.
pub fn premium_sends(t0: Millis, days: &[Millis]) -> Vec<(String, Millis)> {
    const TEMPLATES: [&str; 4] = [
        "premium_welcome",
        "premium_value_prop",
        "premium_case_study",
        "premium_demo_request",
    ];
    days.iter()
        .zip(TEMPLATES)
        .map(|(day, template)| (template.to_string(), t0 + day * MILLIS_PER_DAY))
        .collect()
}
