//! The event contracts of SPEC §2. Each struct mirrors one schema in
//! `schemas/*.avsc` field for field; `tests/codec.rs` proves they round-trip
//! through those schemas, so the `.avsc` files stay the source of truth.
//!
//! One file past 600 lines on purpose: it is the contract, every type of
//! SPEC §2 side by side with its text bounds, read as one document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type Millis = i64;

pub const MILLIS_PER_DAY: Millis = 86_400_000;

/// Everything leadflow knows how to read from or write to a topic.
pub trait Record: Serialize + serde::de::DeserializeOwned {
    /// The Avro record name, without namespace; also the `.avsc` file stem.
    const NAME: &'static str;
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        // By hand: the derive does not see the variants' serde names
        // through this macro, and the document must list the names on the wire.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{}`, expected one of: {}",
                        stringify!($name),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// Whether a LeadEvent introduces a lead, changes one, or erases it
    /// (GDPR: its other fields are ignored; see docs/GDPR.md).
    LeadEventKind { Created => "created", Updated => "updated", Erased => "erased" }
);

string_enum!(
    /// Pipeline stages, in the order a deal normally moves through them.
    Stage {
        New => "new",
        Contacted => "contacted",
        Qualified => "qualified",
        Proposal => "proposal",
        Negotiation => "negotiation",
        ClosedWon => "closed_won",
        ClosedLost => "closed_lost",
    }
);

impl Stage {
    pub fn is_closed(self) -> bool {
        matches!(self, Stage::ClosedWon | Stage::ClosedLost)
    }
}

string_enum!(
    InteractionKind {
        EmailOpen => "email_open",
        EmailClick => "email_click",
        EmailReply => "email_reply",
        SmsReply => "sms_reply",
        Call => "call",
        Meeting => "meeting",
        WebVisit => "web_visit",
        FormSubmit => "form_submit",
        ManualContact => "manual_contact",
        Unsubscribe => "unsubscribe",
        Bounce => "bounce",
    }
);

impl InteractionKind {
    /// Kinds that mean the lead and the sales team were in touch: they set
    /// first and last contact time (time to first contact is a model feature).
    pub fn is_contact(self) -> bool {
        matches!(
            self,
            InteractionKind::EmailReply
                | InteractionKind::SmsReply
                | InteractionKind::Call
                | InteractionKind::Meeting
                | InteractionKind::ManualContact
        )
    }
}

string_enum!(
    Segment {
        Premium => "premium",
        HighPriority => "high_priority",
        Standard => "standard",
        Low => "low",
    }
);

string_enum!(Channel { Email => "email", Sms => "sms" });

string_enum!(DeliveryStatus { Sent => "sent", Failed => "failed", Bounced => "bounced" });

string_enum!(
    ForecastKind {
        PipelineValue => "pipeline_value",
        TimeToClose => "time_to_close",
        LeadGeneration => "lead_generation",
    }
);

/// Consent as given upstream; `None` for a channel means "not stated here".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    #[serde(default)]
    pub email: Option<bool>,
    #[serde(default)]
    pub sms: Option<bool>,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub recorded_at: Millis,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadEvent {
    pub event_id: String,
    pub lead_ext_id: String,
    #[serde(default = "default_lead_event_kind")]
    pub kind: LeadEventKind,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub occurred_at: Millis,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub estimated_value: Option<f64>,
    #[serde(default)]
    pub probability: Option<f64>,
    #[serde(default)]
    pub initial_score: Option<f64>,
    #[serde(default)]
    pub consent: Option<Consent>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn default_lead_event_kind() -> LeadEventKind {
    LeadEventKind::Created
}

impl Record for LeadEvent {
    const NAME: &'static str = "LeadEvent";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionEvent {
    pub event_id: String,
    pub lead_ext_id: String,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub occurred_at: Millis,
    pub kind: InteractionKind,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Record for InteractionEvent {
    const NAME: &'static str = "InteractionEvent";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChangeEvent {
    pub event_id: String,
    pub lead_ext_id: String,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub occurred_at: Millis,
    #[serde(default)]
    pub from_stage: Option<Stage>,
    pub to_stage: Stage,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub deal_value: Option<f64>,
}

impl Record for StageChangeEvent {
    const NAME: &'static str = "StageChangeEvent";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFactor {
    pub feature: String,
    pub contribution: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadScore {
    pub score_id: String,
    pub lead_ext_id: String,
    pub computed_at: Millis,
    pub initial_score: f64,
    pub ml_score: Option<f64>,
    pub ml_conversion_probability: Option<f64>,
    pub final_score: f64,
    pub segment: Segment,
    pub model_version: Option<String>,
    #[serde(default)]
    pub top_factors: Vec<ScoreFactor>,
}

impl Record for LeadScore {
    const NAME: &'static str = "LeadScore";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub message_id: String,
    pub lead_ext_id: String,
    pub channel: Channel,
    pub to: String,
    pub template: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    pub sequence: String,
    pub step: i32,
    #[serde(default)]
    pub cycle: i32,
    #[serde(default)]
    pub variant: Option<String>,
    pub scheduled_for: Millis,
    pub created_at: Millis,
}

impl Record for OutboundMessage {
    const NAME: &'static str = "OutboundMessage";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub event_id: String,
    pub message_id: String,
    pub lead_ext_id: String,
    pub channel: Channel,
    pub status: DeliveryStatus,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub occurred_at: Millis,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Record for DeliveryEvent {
    const NAME: &'static str = "DeliveryEvent";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineValueForecast {
    pub current_pipeline_value: f64,
    /// Σ p·v of the wins expected within the horizon.
    pub forecasted_value: f64,
    pub conversion_rate: f64,
    pub avg_deal_value: f64,
    pub confidence: f64,
    pub lower: f64,
    pub upper: f64,
    #[serde(default)]
    pub open_leads: i64,
    /// Σ p·v, whenever the wins come.
    #[serde(default)]
    pub expected_value: Option<f64>,
    #[serde(default)]
    pub historical_estimate: Option<f64>,
    #[serde(default)]
    pub intervals: Vec<ValueInterval>,
    #[serde(default)]
    pub breakdown: Vec<PipelineBreakdown>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueInterval {
    pub level: f64,
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineBreakdown {
    /// `source`, `owner` or `stage`.
    pub dimension: String,
    pub name: String,
    pub open_leads: i64,
    pub current_value: f64,
    pub expected_value: f64,
    pub expected_within_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeToCloseForecast {
    pub mean_days: f64,
    pub median_days: f64,
    pub lower_days: f64,
    pub upper_days: f64,
    pub sample_size: i64,
    #[serde(default)]
    pub p90_days: Option<f64>,
    #[serde(default)]
    pub by_source: Vec<SourceTimeToClose>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceTimeToClose {
    pub source: String,
    pub sample_size: i64,
    #[serde(default)]
    pub p25_days: Option<f64>,
    #[serde(default)]
    pub median_days: Option<f64>,
    #[serde(default)]
    pub p75_days: Option<f64>,
    #[serde(default)]
    pub p90_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyLeadForecast {
    pub date: String,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadGenerationForecast {
    pub expected_leads: f64,
    pub lower: f64,
    pub upper: f64,
    #[serde(default)]
    pub daily: Vec<DailyLeadForecast>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastEvent {
    pub forecast_id: String,
    pub kind: ForecastKind,
    pub generated_at: Millis,
    pub horizon_days: i32,
    pub confidence: f64,
    #[serde(default)]
    pub pipeline_value: Option<PipelineValueForecast>,
    #[serde(default)]
    pub time_to_close: Option<TimeToCloseForecast>,
    #[serde(default)]
    pub lead_generation: Option<LeadGenerationForecast>,
}

impl Record for ForecastEvent {
    const NAME: &'static str = "ForecastEvent";
}

/// The three input streams, in one type so that the core and the replay
/// file can carry them in a single ordered sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Events are moved once into a batch and read in place; boxing the large
// variant would add an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
pub enum InputEvent {
    Lead(LeadEvent),
    Interaction(InteractionEvent),
    StageChange(StageChangeEvent),
    /// What `leadflow notify` reported about a message (delivery feedback).
    Delivery(DeliveryEvent),
}

/// Which input topic an event belongs to; the topic names themselves are
/// configurable (`[topics]`), this is the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputStream {
    Leads,
    Interactions,
    StageChanges,
    Deliveries,
}

impl InputStream {
    pub const ALL: [InputStream; 4] = [
        InputStream::Leads,
        InputStream::Interactions,
        InputStream::StageChanges,
        InputStream::Deliveries,
    ];

    pub fn record_name(self) -> &'static str {
        match self {
            InputStream::Leads => LeadEvent::NAME,
            InputStream::Interactions => InteractionEvent::NAME,
            InputStream::StageChanges => StageChangeEvent::NAME,
            InputStream::Deliveries => DeliveryEvent::NAME,
        }
    }
}

/// On an erasure, the attribute that makes it conditional: the lead is
/// erased only if no event of it is later than this time (epoch millis).
/// Retention sets it, so that a lead active again by the time its erasure
/// is applied is kept.
pub const ERASE_IF_INACTIVE_SINCE: &str = "erase_if_inactive_since";

impl LeadEvent {
    /// The erasure of lead `lead_ext_id` as of `occurred_at`.
    pub fn erasure(event_id: String, lead_ext_id: String, occurred_at: Millis) -> Self {
        LeadEvent {
            kind: LeadEventKind::Erased,
            ..LeadEvent::update(event_id, lead_ext_id, occurred_at)
        }
    }

    /// An update of lead `lead_ext_id` that changes nothing yet: the fields
    /// it carries are set on the result (an absent field keeps its value).
    pub fn update(event_id: String, lead_ext_id: String, occurred_at: Millis) -> Self {
        LeadEvent {
            event_id,
            lead_ext_id,
            kind: LeadEventKind::Updated,
            occurred_at,
            email: None,
            phone: None,
            first_name: None,
            last_name: None,
            company: None,
            source: None,
            owner: None,
            estimated_value: None,
            probability: None,
            initial_score: None,
            consent: None,
            timezone: None,
            attributes: BTreeMap::new(),
        }
    }
}

impl InputEvent {
    pub fn stream(&self) -> InputStream {
        match self {
            InputEvent::Lead(_) => InputStream::Leads,
            InputEvent::Interaction(_) => InputStream::Interactions,
            InputEvent::StageChange(_) => InputStream::StageChanges,
            InputEvent::Delivery(_) => InputStream::Deliveries,
        }
    }

    pub fn event_id(&self) -> &str {
        match self {
            InputEvent::Lead(e) => &e.event_id,
            InputEvent::Interaction(e) => &e.event_id,
            InputEvent::StageChange(e) => &e.event_id,
            InputEvent::Delivery(e) => &e.event_id,
        }
    }

    pub fn lead_ext_id(&self) -> &str {
        match self {
            InputEvent::Lead(e) => &e.lead_ext_id,
            InputEvent::Interaction(e) => &e.lead_ext_id,
            InputEvent::StageChange(e) => &e.lead_ext_id,
            InputEvent::Delivery(e) => &e.lead_ext_id,
        }
    }

    /// Whether the event's time moves its partition's event-time clock. An
    /// erasure does not: it is a request made when it was made, not
    /// something the lead did in the stream's time, and on a replayed or
    /// simulated stream its wall-clock time would fire every timer of the
    /// partition at once.
    pub fn moves_stream_time(&self) -> bool {
        !matches!(self, InputEvent::Lead(e) if e.kind == LeadEventKind::Erased)
    }

    pub fn occurred_at(&self) -> Millis {
        match self {
            InputEvent::Lead(e) => e.occurred_at,
            InputEvent::Interaction(e) => e.occurred_at,
            InputEvent::StageChange(e) => e.occurred_at,
            InputEvent::Delivery(e) => e.occurred_at,
        }
    }

    /// Checks what the schema cannot express. A failure here is permanent:
    /// the message belongs in the dead-letter topic, not in a retry.
    pub fn validate(&self) -> Result<(), String> {
        if self.event_id().trim().is_empty() {
            return Err("event_id is empty".into());
        }
        if self.lead_ext_id().trim().is_empty() {
            return Err("lead_ext_id is empty".into());
        }
        if self.occurred_at() < 0 {
            return Err(format!("occurred_at {} is before 1970", self.occurred_at()));
        }
        self.check_texts()?;
        if let InputEvent::Lead(e) = self {
            if let Some(p) = e.probability {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("probability {p} is outside 0..1"));
                }
            }
            if let Some(s) = e.initial_score {
                if !(0.0..=100.0).contains(&s) {
                    return Err(format!("initial_score {s} is outside 0..100"));
                }
            }
            if let Some(v) = e.estimated_value {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("estimated_value {v} is negative or not finite"));
                }
            }
        }
        if let InputEvent::Delivery(e) = self {
            if e.message_id.trim().is_empty() {
                return Err("message_id is empty".into());
            }
        }
        if let InputEvent::StageChange(e) = self {
            if let Some(v) = e.deal_value {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("deal_value {v} is negative or not finite"));
                }
            }
        }
        Ok(())
    }
}

/// Bounds on the text an event may carry (docs/DECISIONS.md, "Hostile
/// input"): what PostgreSQL and SQLite both store the same way, and sizes no
/// lead's state needs to exceed.
pub mod text_limits {
    pub const MAX_EVENT_ID_BYTES: usize = 256;
    pub const MAX_LEAD_ID_BYTES: usize = 128;
    pub const MAX_FIELD_BYTES: usize = 4_096;
    pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
    pub const MAX_ATTRIBUTES: usize = 256;
}

/// Checks one text field: no NUL character (PostgreSQL cannot store one in
/// text, SQLite can; refusing it everywhere keeps the stores equal) and at
/// most `max` bytes.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long, at most {max}",
            value.len()
        ));
    }
    if let Some(at) = value.find('\0') {
        return Err(format!(
            "{field} contains a NUL character (U+0000) at byte {at}"
        ));
    }
    Ok(())
}

fn check_optional(field: &str, value: &Option<String>) -> Result<(), String> {
    value.as_deref().map_or(Ok(()), |v| {
        check_text(field, v, text_limits::MAX_FIELD_BYTES)
    })
}

/// Checks a map of custom fields (attributes, message data).
pub fn check_map(field: &str, map: &BTreeMap<String, String>) -> Result<(), String> {
    use text_limits::*;
    if map.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{field} has {} entries, at most {MAX_ATTRIBUTES}",
            map.len()
        ));
    }
    for (key, value) in map {
        check_text(&format!("{field} key"), key, MAX_ATTRIBUTE_KEY_BYTES)?;
        check_text(&format!("{field}.{key}"), value, MAX_FIELD_BYTES)?;
    }
    Ok(())
}

impl InputEvent {
    /// Every text field within [`text_limits`] and free of NUL characters.
    fn check_texts(&self) -> Result<(), String> {
        use text_limits::*;
        check_text("event_id", self.event_id(), MAX_EVENT_ID_BYTES)?;
        check_text("lead_ext_id", self.lead_ext_id(), MAX_LEAD_ID_BYTES)?;
        match self {
            InputEvent::Lead(e) => {
                for (field, value) in [
                    ("email", &e.email),
                    ("phone", &e.phone),
                    ("first_name", &e.first_name),
                    ("last_name", &e.last_name),
                    ("company", &e.company),
                    ("source", &e.source),
                    ("owner", &e.owner),
                    ("timezone", &e.timezone),
                ] {
                    check_optional(field, value)?;
                }
                if let Some(consent) = &e.consent {
                    check_text("consent.source", &consent.source, MAX_FIELD_BYTES)?;
                }
                check_map("attributes", &e.attributes)
            }
            InputEvent::Interaction(e) => {
                check_optional("channel", &e.channel)?;
                check_optional("actor", &e.actor)?;
                check_map("attributes", &e.attributes)
            }
            InputEvent::StageChange(e) => check_optional("owner", &e.owner),
            InputEvent::Delivery(e) => {
                check_text("message_id", &e.message_id, MAX_EVENT_ID_BYTES)?;
                check_optional("provider", &e.provider)?;
                check_optional("provider_message_id", &e.provider_message_id)?;
                check_optional("reason", &e.reason)
            }
        }
    }
}

impl OutboundMessage {
    /// What the delivery worker checks before it claims or sends a message:
    /// ids and text within [`text_limits`], no NUL characters.
    pub fn validate(&self) -> Result<(), String> {
        use text_limits::*;
        if self.message_id.trim().is_empty() {
            return Err("message_id is empty".into());
        }
        if self.lead_ext_id.trim().is_empty() {
            return Err("lead_ext_id is empty".into());
        }
        check_text("message_id", &self.message_id, MAX_EVENT_ID_BYTES)?;
        check_text("lead_ext_id", &self.lead_ext_id, MAX_LEAD_ID_BYTES)?;
        check_text("to", &self.to, MAX_FIELD_BYTES)?;
        check_text("template", &self.template, MAX_FIELD_BYTES)?;
        check_text("sequence", &self.sequence, MAX_FIELD_BYTES)?;
        check_optional("variant", &self.variant)?;
        check_map("data", &self.data)
    }
}

/// Timestamps arrive as Avro `timestamp-millis` (an integer) or, in JSON
/// from upstream systems, either as integer millis or an RFC 3339 string.
pub mod timestamp {
    use super::Millis;
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(MillisVisitor)
    }

    struct MillisVisitor;

    impl<'de> Visitor<'de> for MillisVisitor {
        type Value = Millis;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("milliseconds since the epoch or an RFC 3339 timestamp")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
            Ok(v)
        }

        fn visit_i32<E: de::Error>(self, v: i32) -> Result<Millis, E> {
            Ok(v as i64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("timestamp {v} is out of range")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
            parse_rfc3339(v).map_err(E::custom)
        }
    }

    pub fn parse_rfc3339(v: &str) -> Result<Millis, String> {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("`{v}` is not an RFC 3339 timestamp: {e}"))
    }

    pub fn format(millis: Millis) -> String {
        chrono::DateTime::from_timestamp_millis(millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| millis.to_string())
    }
}
