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
    ChannelConsent, ConsentChange, ConsentChangeKind, InteractionStats, LeadState, NurtureState,
    ScoreSnapshot, StageTransition,
};
use crate::events::{
    Channel, DeliveryEvent, DeliveryStatus, ForecastEvent, InputEvent, InteractionEvent,
    InteractionKind, LeadEvent, LeadEventKind, LeadScore, Millis, OutboundMessage, ScoreFactor,
    Stage, StageChangeEvent, ERASE_IF_INACTIVE_SINCE,
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
    /// Whether a LeadEvent after a lead's erasure, with consent recorded
    /// after it, starts the lead anew (`gdpr.recreate_after_erasure`); else
    /// every event for an erased lead is dropped.
    pub recreate_after_erasure: bool,
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
    /// Leads erased by the batch.
    pub erased: u64,
    /// Events for erased leads, dropped.
    pub dropped_after_erasure: u64,
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
        } else if applied.dropped_after_erasure {
            outcome.dropped_after_erasure += 1;
        } else {
            outcome.applied += 1;
        }
        if applied.erased {
            // What this batch made for the lead before its erasure is not
            // published: the tombstone replaces its score, and its messages
            // must not go out.
            outcome.erased += 1;
            outcome.outputs.retain(|(_, o)| o.lead_ext_id() != Some(id));
        }
        if fired || !(applied.duplicate || applied.dropped_after_erasure) {
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
    /// An erased lead's key on the compacted scores topic, published with
    /// no value so that compaction removes the lead's scores.
    Tombstone {
        output_id: String,
        lead_ext_id: String,
    },
}

impl Output {
    /// The deterministic id the output is published with.
    pub fn id(&self) -> &str {
        match self {
            Output::Score(s) => &s.score_id,
            Output::Message(m) => &m.message_id,
            Output::Forecast(f) => &f.forecast_id,
            Output::Tombstone { output_id, .. } => output_id,
        }
    }

    /// The lead the output is about; `None` for a forecast.
    pub fn lead_ext_id(&self) -> Option<&str> {
        match self {
            Output::Score(s) => Some(&s.lead_ext_id),
            Output::Message(m) => Some(&m.lead_ext_id),
            Output::Forecast(_) => None,
            Output::Tombstone { lead_ext_id, .. } => Some(lead_ext_id),
        }
    }
}

#[derive(Debug)]
pub struct Applied {
    pub state: LeadState,
    pub outputs: Vec<Output>,
    /// True when the event had been applied before and changed nothing.
    pub duplicate: bool,
    /// True when the event erased the lead.
    pub erased: bool,
    /// True when the lead had been erased and the event was dropped.
    pub dropped_after_erasure: bool,
}

/// Applies one event to a lead's state (or to nothing, for a new lead).
pub fn apply(state: Option<LeadState>, event: &InputEvent, ctx: &ApplyContext<'_>) -> Applied {
    let mut state = state.unwrap_or_else(|| LeadState::new(event.lead_ext_id()));
    let unchanged = |state: LeadState, duplicate: bool| Applied {
        state,
        outputs: Vec::new(),
        duplicate,
        erased: false,
        dropped_after_erasure: !duplicate,
    };
    if state.has_seen(event.event_id()) {
        return unchanged(state, true);
    }
    if let Some(erased_at) = state.erased_at {
        if !starts_anew(event, erased_at, ctx.recreate_after_erasure) {
            // A replay of the log before the erasure, or later traffic for
            // a lead that no longer exists here: nothing of it is kept.
            return unchanged(state, false);
        }
        let mut fresh = LeadState::new(event.lead_ext_id());
        fresh.recent_event_ids = std::mem::take(&mut state.recent_event_ids);
        state = fresh;
    }
    if let InputEvent::Lead(e) = event {
        if e.kind == LeadEventKind::Erased && kept_by_condition(&state, e) {
            // Retention's erasure of a lead that came back to life: kept.
            state.remember(&e.event_id, ctx.dedup_window);
            return Applied {
                state,
                outputs: Vec::new(),
                duplicate: false,
                erased: false,
                dropped_after_erasure: false,
            };
        }
        if e.kind == LeadEventKind::Erased {
            let mut state = state.tombstone(e.occurred_at);
            state.remember(&e.event_id, ctx.dedup_window);
            state.events_applied += 1;
            return Applied {
                outputs: vec![Output::Tombstone {
                    output_id: output_id(&state.lead_ext_id, "erasure", &e.event_id),
                    lead_ext_id: state.lead_ext_id.clone(),
                }],
                state,
                duplicate: false,
                erased: true,
                dropped_after_erasure: false,
            };
        }
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
        erased: false,
        dropped_after_erasure: false,
    }
}

/// Whether the lead had an event after the erasure's condition
/// ([`ERASE_IF_INACTIVE_SINCE`]) allows; an unreadable condition erases.
fn kept_by_condition(state: &LeadState, e: &LeadEvent) -> bool {
    e.attributes
        .get(ERASE_IF_INACTIVE_SINCE)
        .and_then(|since| since.parse::<Millis>().ok())
        .is_some_and(|since| state.updated_at > since)
}

/// Whether `event`, for a lead erased at `erased_at`, starts the lead anew:
/// only when the configuration allows it, and only a LeadEvent after the
/// erasure that carries consent given after it.
fn starts_anew(event: &InputEvent, erased_at: Millis, allowed: bool) -> bool {
    let InputEvent::Lead(e) = event else {
        return false;
    };
    allowed
        && e.kind != LeadEventKind::Erased
        && e.occurred_at > erased_at
        && e.consent.as_ref().is_some_and(|c| {
            c.recorded_at > erased_at && (c.email == Some(true) || c.sms == Some(true))
        })
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
        for (channel, granted) in [(Channel::Email, consent.email), (Channel::Sms, consent.sms)] {
            if let Some(granted) = granted {
                let statement = record(granted);
                record_consent(
                    state,
                    channel,
                    statement,
                    ConsentChangeKind::Statement,
                    &e.event_id,
                );
            }
        }
    }
    for (k, v) in &e.attributes {
        state.attributes.insert(k.clone(), v.clone());
    }
}

/// The most recently recorded statement wins, whichever arrives first; a tie
/// goes to a withdrawal, so an unsubscribe is never undone by a same-instant
/// grant. Every statement also goes to the ledger.
fn record_consent(
    state: &mut LeadState,
    channel: Channel,
    new: ChannelConsent,
    kind: ConsentChangeKind,
    event_id: &str,
) {
    note_consent(
        &mut state.consent_ledger,
        ConsentChange {
            channel,
            granted: new.granted,
            kind,
            recorded_at: new.recorded_at,
            source: new.source.clone(),
            event_id: event_id.to_string(),
        },
    );
    let slot = match channel {
        Channel::Email => &mut state.consent.email,
        Channel::Sms => &mut state.consent.sms,
    };
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

/// Adds a line to the consent ledger in its place, unless the same
/// statement (channel, what, when, where) is there already: the ledger is
/// the set of statements applied, in time order (a withdrawal after a grant
/// of the same instant), whatever order they arrived in, so a live run and a
/// replay keep the same ledger and its latest line per channel is the
/// current consent.
fn note_consent(ledger: &mut Vec<ConsentChange>, change: ConsentChange) {
    let same = |c: &ConsentChange| {
        (c.channel, c.granted, c.kind, c.recorded_at, &c.source)
            == (
                change.channel,
                change.granted,
                change.kind,
                change.recorded_at,
                &change.source,
            )
    };
    if ledger.iter().any(same) {
        return;
    }
    let order = |c: &ConsentChange| {
        (
            c.recorded_at,
            c.channel,
            !c.granted,
            c.kind,
            c.source.clone(),
            c.event_id.clone(),
        )
    };
    let at = ledger.partition_point(|c| order(c) < order(&change));
    ledger.insert(at, change);
}

/// The email address bounced at `at`: the ledger keeps the earliest bounce.
fn record_bounce(state: &mut LeadState, at: Millis, source: String, event_id: &str) {
    let bounce = ConsentChange {
        channel: Channel::Email,
        granted: false,
        kind: ConsentChangeKind::Bounce,
        recorded_at: at,
        source,
        event_id: event_id.to_string(),
    };
    let earlier = state.email_bounced_at.is_none_or(|first| at < first);
    if earlier {
        state
            .consent_ledger
            .retain(|c| c.kind != ConsentChangeKind::Bounce);
        note_consent(&mut state.consent_ledger, bounce);
    }
    state.email_bounced_at = Some(state.email_bounced_at.map_or(at, |t| t.min(at)));
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
            let channel = match affected_channel(e) {
                "sms" => Channel::Sms,
                _ => Channel::Email,
            };
            let kind = ConsentChangeKind::Unsubscribe;
            record_consent(state, channel, withdrawn, kind, &e.event_id);
        }
        InteractionKind::Bounce if affected_channel(e) == "email" => {
            let source = format!("bounce:{}", e.event_id);
            record_bounce(state, e.occurred_at, source, &e.event_id);
        }
        _ => {}
    }
}

fn apply_delivery(state: &mut LeadState, e: &DeliveryEvent) {
    if e.status == DeliveryStatus::Bounced && e.channel == Channel::Email {
        let source = format!("delivery:{}", e.message_id);
        record_bounce(state, e.occurred_at, source, &e.event_id);
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
