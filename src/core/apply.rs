//! The pure core's one entry point: events and due timers applied to lead
//! states. No I/O, no wall clock: [`apply_batch`] is a function of (states,
//! events, clock), which is what makes replay, tests and benchmarks cheap
//! and a live run equal to a replay. The edges load the states, call it,
//! and commit what it returns.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::core::ids::output_id;
use crate::core::nurture::{self, FireClock, NurtureConfig};
use crate::core::rules::{RuleConfig, SegmentThresholds};
use crate::core::slots::ForecastSlots;
use crate::core::state::{
    ChannelConsent, InteractionStats, LeadState, NurtureState, ScoreSnapshot, StageTransition,
};
use crate::events::{
    Channel, DeliveryEvent, DeliveryStatus, ForecastEvent, InputEvent, InteractionEvent,
    InteractionKind, LeadEvent, LeadEventKind, LeadScore, Millis, OutboundMessage, ScoreFactor,
    Stage, StageChangeEvent,
};

/// What scoring reads of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ScorePolicy<'a> {
    pub rules: &'a RuleConfig,
    pub segments: &'a SegmentThresholds,
    /// final = ml_weight × ml_score + (1 − ml_weight) × initial_score.
    pub ml_weight: f64,
    /// Factors listed in each LeadScore.
    pub top_factors: usize,
}

/// A probability and what moved it away from the model's base rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub probability: f64,
    /// Largest absolute contribution first: log-odds for gradient boosting
    /// and logistic regression, the trees' mean probability (before Platt
    /// scaling) for the random forest.
    pub factors: Vec<ScoreFactor>,
}

/// A trained conversion model as the core sees it: the core blends its
/// probability with the rules and never looks inside.
pub trait ConversionModel: Send + Sync {
    /// What LeadScore.model_version says.
    fn version_label(&self) -> String;
    /// The lead's conversion probability as of `at`, with its top factors.
    fn explain(&self, state: &LeadState, at: Millis, policy: &ScorePolicy<'_>) -> Explanation;
}

/// Everything `apply` needs besides the state and the event.
#[derive(Clone, Copy)]
pub struct ApplyContext<'a> {
    pub score: ScorePolicy<'a>,
    pub dedup_window: usize,
    /// The model that scores leads; rules only without one.
    pub model: Option<&'a dyn ConversionModel>,
    /// Nurturing rules; `None` applies events without nurturing (an import
    /// of history must not enrol leads in the past).
    pub nurture: Option<&'a NurtureConfig>,
    /// When scheduled forecasts fall, so that each lead keeps what it held
    /// at each slot it moves past; `None` when the processor makes no
    /// scheduled forecasts (and in an import: its leads' past scores were
    /// never computed).
    pub forecast_slots: Option<ForecastSlots>,
}

/// The clock a batch is applied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchClock {
    /// A live processor at `now` (wall time): a lead's timers due by the
    /// event's time fire before its event; the others fire in ticks.
    Live(Millis),
    /// Event time (a replay, or `processor.clock = "event_time"`): a lead's
    /// timers due by its event's time fire, each at its due time, before the event.
    EventTime,
    /// An import of history: event time, and no nurturing.
    Import,
}

/// What a batch did besides changing the states.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Each output with the partition of the event that caused it.
    pub outputs: Vec<(i32, Output)>,
    /// The leads the batch changed: the partition of their first event, and
    /// whether one of their timers fired.
    pub touched: BTreeMap<String, (i32, bool)>,
    pub applied: u64,
    pub duplicates: u64,
}

/// Applies a batch of events, in order, to the states of their leads (a
/// lead missing from `states` is new). Before each event, the lead's timers
/// due by the event's time fire: a step due before a reply is sent before
/// the reply pauses the sequence, live and in a replay alike.
pub fn apply_batch(
    states: &mut HashMap<String, LeadState>,
    events: &[(i32, InputEvent)],
    ctx: &ApplyContext<'_>,
    clock: BatchClock,
) -> BatchOutcome {
    let ctx = ApplyContext {
        nurture: ctx.nurture.filter(|_| clock != BatchClock::Import),
        forecast_slots: ctx.forecast_slots.filter(|_| clock != BatchClock::Import),
        ..*ctx
    };
    let mut outcome = BatchOutcome::default();
    for (partition, event) in events {
        let id = event.lead_ext_id();
        let at = event.occurred_at();
        let fire = match clock {
            BatchClock::Live(now) => FireClock::Live { now, until: at },
            _ => FireClock::Sweep(at),
        };
        let mut state = states.remove(id);
        let mut fired = false;
        if let (Some(config), Some(state)) = (ctx.nurture, state.as_mut()) {
            if state.nurture.timer.is_some_and(|t| t <= fire.bound()) {
                let messages = fire_timers(state, config, fire);
                outcome
                    .outputs
                    .extend(messages.into_iter().map(|o| (*partition, o)));
                fired = true;
            }
        }
        let applied = apply(state, event, &ctx);
        if applied.duplicate {
            outcome.duplicates += 1;
        } else {
            outcome.applied += 1;
        }
        if fired || !applied.duplicate {
            let entry = outcome
                .touched
                .entry(id.to_string())
                .or_insert((*partition, false));
            entry.1 |= fired;
        }
        outcome
            .outputs
            .extend(applied.outputs.into_iter().map(|o| (*partition, o)));
        states.insert(id.to_string(), applied.state);
    }
    outcome
}

/// What the core asks the edges to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    Score(LeadScore),
    Message(OutboundMessage),
    /// Made by the processor's forecast schedule, not by an event; in the
    /// core's type so that it takes the one commit path and the outbox.
    Forecast(ForecastEvent),
}

impl Output {
    /// The deterministic id the output is published with.
    pub fn id(&self) -> &str {
        match self {
            Output::Score(s) => &s.score_id,
            Output::Message(m) => &m.message_id,
            Output::Forecast(f) => &f.forecast_id,
        }
    }
}

#[derive(Debug)]
pub struct Applied {
    pub state: LeadState,
    pub outputs: Vec<Output>,
    /// True when the event had been applied before and changed nothing.
    pub duplicate: bool,
}

/// Applies one event to a lead's state (or to nothing, for a new lead).
pub fn apply(state: Option<LeadState>, event: &InputEvent, ctx: &ApplyContext<'_>) -> Applied {
    let mut state = state.unwrap_or_else(|| LeadState::new(event.lead_ext_id()));
    if state.has_seen(event.event_id()) {
        return Applied {
            state,
            outputs: Vec::new(),
            duplicate: true,
        };
    }
    if let Some(slots) = &ctx.forecast_slots {
        state.keep_slot_snapshot(event.occurred_at(), slots);
    }
    match event {
        InputEvent::Lead(e) => apply_lead(&mut state, e),
        InputEvent::Interaction(e) => apply_interaction(&mut state, e, ctx.score.rules),
        InputEvent::StageChange(e) => apply_stage_change(&mut state, e),
        InputEvent::Delivery(e) => apply_delivery(&mut state, e),
    }
    state.updated_at = state.updated_at.max(event.occurred_at());
    state.remember(event.event_id(), ctx.dedup_window);
    state.events_applied += 1;

    // A delivery report says what leadflow did, not what the lead did: it
    // changes no feature, so it does not rescore.
    let outputs = match event {
        InputEvent::Delivery(_) => Vec::new(),
        _ => rescore(&mut state, event, &ctx.score, ctx.model)
            .into_iter()
            .collect(),
    };
    if let Some(config) = ctx.nurture {
        nurture::on_event(&mut state, event, config);
    }
    Applied {
        state,
        outputs,
        duplicate: false,
    }
}

fn apply_lead(state: &mut LeadState, e: &LeadEvent) {
    if e.kind == LeadEventKind::Created {
        state.created_at = Some(
            state
                .created_at
                .map_or(e.occurred_at, |t| t.min(e.occurred_at)),
        );
    }
    let set = |field: &mut Option<String>, value: &Option<String>| {
        if let Some(v) = value {
            *field = Some(v.clone());
        }
    };
    set(&mut state.email, &e.email);
    set(&mut state.phone, &e.phone);
    set(&mut state.first_name, &e.first_name);
    set(&mut state.last_name, &e.last_name);
    set(&mut state.company, &e.company);
    set(&mut state.source, &e.source);
    state.assign_owner(&e.owner, e.occurred_at);
    set(&mut state.timezone, &e.timezone);
    if e.estimated_value.is_some() {
        state.estimated_value = e.estimated_value;
    }
    if e.probability.is_some() {
        state.probability = e.probability;
    }
    if e.initial_score.is_some() {
        state.provided_initial_score = e.initial_score;
    }
    if let Some(consent) = &e.consent {
        let record = |granted: bool| ChannelConsent {
            granted,
            recorded_at: consent.recorded_at,
            source: consent.source.clone(),
        };
        if let Some(granted) = consent.email {
            record_consent(&mut state.consent.email, record(granted));
        }
        if let Some(granted) = consent.sms {
            record_consent(&mut state.consent.sms, record(granted));
        }
    }
    for (k, v) in &e.attributes {
        state.attributes.insert(k.clone(), v.clone());
    }
}

/// The most recently recorded statement wins, whichever arrives first; a tie
/// goes to a withdrawal, so an unsubscribe is never undone by a same-instant grant.
fn record_consent(slot: &mut Option<ChannelConsent>, new: ChannelConsent) {
    let replace = match slot {
        None => true,
        Some(old) => {
            new.recorded_at > old.recorded_at
                || (new.recorded_at == old.recorded_at && !new.granted)
        }
    };
    if replace {
        *slot = Some(new);
    }
}

/// The channel an unsubscribe or bounce refers to; email when unnamed,
/// since that is where unsubscribe links and bounces come from.
fn affected_channel(e: &InteractionEvent) -> &str {
    match e.channel.as_deref() {
        Some("sms") => "sms",
        _ => "email",
    }
}

fn apply_interaction(state: &mut LeadState, e: &InteractionEvent, rules: &RuleConfig) {
    let stats = state
        .interactions
        .entry(e.kind)
        .or_insert(InteractionStats {
            count: 0,
            first_at: e.occurred_at,
            last_at: e.occurred_at,
        });
    stats.count += 1;
    stats.first_at = stats.first_at.min(e.occurred_at);
    stats.last_at = stats.last_at.max(e.occurred_at);
    state.engagement.add(
        rules.interaction_weight(e.kind),
        e.occurred_at,
        rules.engagement_half_life_days,
    );
    if e.kind.is_contact() {
        state.touch_contact(e.occurred_at);
    }
    match e.kind {
        InteractionKind::Unsubscribe => {
            let withdrawn = ChannelConsent {
                granted: false,
                recorded_at: e.occurred_at,
                source: format!("unsubscribe:{}", e.event_id),
            };
            match affected_channel(e) {
                "sms" => record_consent(&mut state.consent.sms, withdrawn),
                _ => record_consent(&mut state.consent.email, withdrawn),
            }
        }
        InteractionKind::Bounce if affected_channel(e) == "email" => {
            state.email_bounced_at = Some(
                state
                    .email_bounced_at
                    .map_or(e.occurred_at, |t| t.min(e.occurred_at)),
            );
        }
        _ => {}
    }
}

fn apply_delivery(state: &mut LeadState, e: &DeliveryEvent) {
    if e.status == DeliveryStatus::Bounced && e.channel == Channel::Email {
        state.email_bounced_at = Some(
            state
                .email_bounced_at
                .map_or(e.occurred_at, |t| t.min(e.occurred_at)),
        );
    }
}

/// Fires the lead's nurturing timers that are due by `clock`: the messages
/// to send (and any postponement or skip, in the state).
pub fn fire_timers(state: &mut LeadState, config: &NurtureConfig, clock: FireClock) -> Vec<Output> {
    nurture::fire_due(state, config, clock)
        .into_iter()
        .map(Output::Message)
        .collect()
}

fn apply_stage_change(state: &mut LeadState, e: &StageChangeEvent) {
    if matches!(e.to_stage, Stage::ClosedWon | Stage::ClosedLost) {
        let mut before = state.clone();
        before.pre_close = None;
        before.recent_event_ids.clear();
        before.stage_history.clear();
        before.score = None;
        before.nurture = NurtureState::default();
        state.pre_close = Some(Box::new(before));
    }
    state.stage_history.push(StageTransition {
        from: e.from_stage,
        to: e.to_stage,
        at: e.occurred_at,
        owner: e.owner.clone(),
        deal_value: e.deal_value,
        event_id: e.event_id.clone(),
    });
    state.stage = e.to_stage;
    state.stage_entered_at = Some(e.occurred_at);
    state.assign_owner(&e.owner, e.occurred_at);
    if e.deal_value.is_some() {
        state.deal_value = e.deal_value;
    }
    if e.to_stage == Stage::Contacted {
        state.touch_contact(e.occurred_at);
    }
}

/// Recomputes the score as of the event's time and returns a LeadScore when
/// it moved (by a hundredth or more), changed segment, or came from another
/// model version.
fn rescore(
    state: &mut LeadState,
    event: &InputEvent,
    policy: &ScorePolicy<'_>,
    model: Option<&dyn ConversionModel>,
) -> Option<Output> {
    let at = event.occurred_at().max(state.updated_at);
    let initial = state.initial_score(policy.rules, at);
    let ml = model.map(|active| (active, active.explain(state, at, policy)));
    let final_score = match &ml {
        None => initial,
        Some((_, explained)) => {
            let w = policy.ml_weight;
            w * 100.0 * explained.probability + (1.0 - w) * initial
        }
    };
    let segment = policy.segments.segment(final_score);
    let model_version = ml.as_ref().map(|(active, _)| active.version_label());
    let changed = match &state.score {
        None => true,
        Some(s) => {
            (s.final_score - final_score).abs() >= 0.01
                || s.segment != segment
                || s.model_version != model_version
        }
    };
    if !changed {
        return None;
    }
    let ml_probability = ml.as_ref().map(|(_, e)| e.probability);
    state.score = Some(ScoreSnapshot {
        initial_score: initial,
        final_score,
        segment,
        computed_at: at,
        ml_score: ml_probability.map(|p| 100.0 * p),
        model_version: model_version.clone(),
    });
    Some(Output::Score(LeadScore {
        score_id: output_id(&state.lead_ext_id, "score", event.event_id()),
        lead_ext_id: state.lead_ext_id.clone(),
        computed_at: at,
        initial_score: initial,
        ml_score: ml_probability.map(|p| 100.0 * p),
        ml_conversion_probability: ml_probability,
        final_score,
        segment,
        model_version,
        top_factors: ml.map(|(_, e)| e.factors).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests;
