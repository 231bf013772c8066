//! Nurturing (SPEC §3): per-segment sequences of timed emails and SMS, run
//! inside the pure core.
//!
//! A lead's nurturing state lives in its [`LeadState`] and changes only in two
//! ways, both pure functions of (state, input, clock):
//! - [`on_event`]: an applied event may enrol the lead (it got a segment),
//!   move it to another segment's sequence, pause it (a reply, a stage
//!   change, a manual contact), take it out (a close), or stop a channel
//!   (an unsubscribe, a bounce). Delivery reports update the last contact.
//! - [`fire_due`]: the processor's clock passed the lead's timer: the due
//!   step becomes an [`OutboundMessage`] (or waits for quiet hours or the
//!   frequency cap to allow it, or is skipped with its reason), or a silent
//!   lead enters the reactivation sequence.
//!
//! The lead's next timer is a plain field ([`NurtureState::timer`]) that the
//! store copies into an indexed column: the processor asks the database for
//! the timers due in its partitions, so a million enrolled leads cost neither
//! a million sleeping tasks nor a table scan per tick. Firing writes the
//! message to the outbox in the same transaction as the new state, and the
//! message id is a function of (lead, sequence, step, cycle): a crash or a
//! rebalance can neither lose a message nor produce a second one.

pub mod calendar;
pub mod experiments;
pub mod sequences;

mod fire;

pub use fire::{fire_due, FireClock};

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::core::ids::message_id;
use crate::core::state::{ChannelStop, LeadState, Membership, Note, Status};
use crate::events::{
    Channel, DeliveryEvent, DeliveryStatus, InputEvent, InteractionEvent, InteractionKind, Millis,
    OutboundMessage, Stage, MILLIS_PER_DAY,
};
use calendar::QuietHours;
use sequences::{Sequence, SequenceSet, Step, Trigger};

const HOUR: Millis = 3_600_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NurtureConfig {
    /// Off: no lead is enrolled and no message is produced.
    pub enabled: bool,
    /// The sequences file (relative paths: from the config file's directory).
    /// Empty: the built-in `config/sequences.toml`.
    pub sequences_file: String,
    /// A lead that is not closed and had no contact for this long enters the
    /// reactivation sequence.
    pub reactivation_after_days: u32,
    pub frequency_cap: FrequencyCap,
    /// In the lead's timezone; a step due in them waits for their end.
    pub quiet_hours: QuietHours,
    /// For leads without a timezone, or with one that does not exist.
    pub default_timezone: String,
    /// How often a live processor looks for due timers.
    pub tick_interval_ms: u64,
    /// Most timers fired in one transaction.
    pub timers_per_tick: usize,
    /// Nurturing notes (enrolments, moves, pauses, skips) kept per lead.
    pub history_limit: usize,
    #[serde(skip)]
    pub sequences: Sequences,
}

/// At most `max_messages` per lead in any `window_hours`; a step over the cap
/// waits until the oldest message leaves the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrequencyCap {
    pub max_messages: u32,
    pub window_hours: u32,
}

impl Default for FrequencyCap {
    fn default() -> Self {
        // The premium sequence sends four emails in six days; more than that
        // in a week is pressure, not nurturing.
        FrequencyCap {
            max_messages: 4,
            window_hours: 168,
        }
    }
}

/// The checked sequences, shared by every clone of the config.
#[derive(Debug, Clone)]
pub struct Sequences(pub Arc<SequenceSet>);

impl Default for Sequences {
    fn default() -> Self {
        static BUILT_IN: OnceLock<Arc<SequenceSet>> = OnceLock::new();
        Sequences(
            BUILT_IN
                .get_or_init(|| Arc::new(SequenceSet::built_in()))
                .clone(),
        )
    }
}

impl Default for NurtureConfig {
    fn default() -> Self {
        NurtureConfig {
            enabled: true,
            sequences_file: String::new(),
            reactivation_after_days: 30,
            frequency_cap: FrequencyCap::default(),
            quiet_hours: QuietHours::default(),
            default_timezone: "UTC".into(),
            tick_interval_ms: 1_000,
            timers_per_tick: 500,
            history_limit: 20,
            sequences: Sequences::default(),
        }
    }
}

impl NurtureConfig {
    /// Checks every key; the error names the key (under `nurture.`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, r: String| Err((k.to_string(), r));
        if self.reactivation_after_days == 0 {
            return err("reactivation_after_days", "must be at least 1".into());
        }
        if self.frequency_cap.max_messages == 0 {
            return err("frequency_cap.max_messages", "must be at least 1".into());
        }
        if self.frequency_cap.window_hours == 0 {
            return err("frequency_cap.window_hours", "must be at least 1".into());
        }
        if let Err((key, reason)) = self.quiet_hours.window() {
            return err(&format!("quiet_hours.{key}"), reason);
        }
        if self.default_timezone.parse::<Tz>().is_err() {
            return err(
                "default_timezone",
                format!(
                    "`{}` is not an IANA timezone such as Europe/Madrid",
                    self.default_timezone
                ),
            );
        }
        if !(10..=600_000).contains(&self.tick_interval_ms) {
            return err(
                "tick_interval_ms",
                format!("{} is outside 10..=600000", self.tick_interval_ms),
            );
        }
        if self.timers_per_tick == 0 {
            return err("timers_per_tick", "must be at least 1".into());
        }
        if self.history_limit == 0 {
            return err("history_limit", "must be at least 1".into());
        }
        Ok(())
    }

    fn set(&self) -> &SequenceSet {
        &self.sequences.0
    }

    fn timezone(&self, state: &LeadState) -> Tz {
        state
            .timezone
            .as_deref()
            .and_then(|tz| tz.parse().ok())
            .or_else(|| self.default_timezone.parse().ok())
            .unwrap_or(Tz::UTC)
    }

    /// The first instant at or after `at` outside the lead's quiet hours.
    fn allowed_at(&self, state: &LeadState, at: Millis) -> Millis {
        match self.quiet_hours.window() {
            Ok(window) => window.next_allowed(at, self.timezone(state)),
            Err(_) => at,
        }
    }
}

pub(super) fn note(state: &mut LeadState, config: &NurtureConfig, at: Millis, text: String) {
    let history = &mut state.nurture.history;
    history.push_back(Note { at, note: text });
    while history.len() > config.history_limit {
        history.pop_front();
    }
}

/// Updates the lead's nurturing after `event` was applied to it (and the
/// lead rescored). `event` time is the time of everything decided here.
pub fn on_event(state: &mut LeadState, event: &InputEvent, config: &NurtureConfig) {
    if !config.enabled {
        return;
    }
    let at = event.occurred_at();
    match event {
        InputEvent::Lead(e) => {
            if let Some(tz) = &e.timezone {
                if tz.parse::<Tz>().is_err() {
                    note(
                        state,
                        config,
                        at,
                        format!(
                            "timezone `{tz}` does not exist; quiet hours use {}",
                            config.default_timezone
                        ),
                    );
                }
            }
        }
        InputEvent::Interaction(e) => on_interaction(state, e, config),
        InputEvent::StageChange(e) => {
            if e.to_stage.is_closed() {
                if e.to_stage == Stage::ClosedWon {
                    for m in state.nurture.experiments.values_mut() {
                        if m.enrolled_at <= at && m.converted_at.is_none() {
                            m.converted_at = Some(at);
                        }
                    }
                }
                if state.nurture.status != Status::Exited {
                    leave(
                        state,
                        config,
                        at,
                        Status::Exited,
                        format!("lead closed ({})", e.to_stage),
                    );
                }
            } else if state.nurture.status == Status::Active {
                leave(
                    state,
                    config,
                    at,
                    Status::Paused,
                    format!("stage changed to {}", e.to_stage),
                );
            }
        }
        InputEvent::Delivery(d) => on_delivery(state, d, config),
    }
    follow_segment(state, config, at);
    refresh_timer(state, config);
}

fn on_interaction(state: &mut LeadState, e: &InteractionEvent, config: &NurtureConfig) {
    let at = e.occurred_at;
    match e.kind {
        InteractionKind::EmailReply | InteractionKind::SmsReply => {
            for m in state.nurture.experiments.values_mut() {
                if m.enrolled_at <= at && m.replied_at.is_none() {
                    m.replied_at = Some(at);
                }
            }
            if state.nurture.status == Status::Active {
                let how = if e.kind == InteractionKind::EmailReply {
                    "email"
                } else {
                    "sms"
                };
                leave(
                    state,
                    config,
                    at,
                    Status::Paused,
                    format!("lead replied by {how}"),
                );
            }
        }
        InteractionKind::ManualContact | InteractionKind::Call | InteractionKind::Meeting
            if state.nurture.status == Status::Active =>
        {
            leave(
                state,
                config,
                at,
                Status::Paused,
                format!("contacted by the sales team ({})", e.kind),
            );
        }
        InteractionKind::Unsubscribe => {
            let channel = if e.channel.as_deref() == Some("sms") {
                Channel::Sms
            } else {
                Channel::Email
            };
            stop_channel(state, config, channel, at, "unsubscribed".into());
        }
        InteractionKind::Bounce if e.channel.as_deref() != Some("sms") => {
            stop_channel(state, config, Channel::Email, at, "email bounced".into());
        }
        _ => {}
    }
}

fn on_delivery(state: &mut LeadState, d: &DeliveryEvent, config: &NurtureConfig) {
    match d.status {
        DeliveryStatus::Sent => {
            let last = &mut state.nurture.last_delivered_at;
            *last = Some(last.map_or(d.occurred_at, |t| t.max(d.occurred_at)));
        }
        DeliveryStatus::Bounced => {
            let reason = match &d.reason {
                Some(r) => format!("hard bounce: {r}"),
                None => "hard bounce".into(),
            };
            stop_channel(state, config, d.channel, d.occurred_at, reason);
        }
        DeliveryStatus::Failed => note(
            state,
            config,
            d.occurred_at,
            format!(
                "message {} failed on {}: {}",
                d.message_id,
                d.channel,
                d.reason.as_deref().unwrap_or("no reason given")
            ),
        ),
    }
}

pub(super) fn stop_channel(
    state: &mut LeadState,
    config: &NurtureConfig,
    channel: Channel,
    at: Millis,
    reason: String,
) {
    if state.nurture.stopped.contains_key(&channel) {
        return;
    }
    note(state, config, at, format!("{channel} stopped: {reason}"));
    state
        .nurture
        .stopped
        .insert(channel, ChannelStop { reason, at });
}

pub(super) fn leave(
    state: &mut LeadState,
    config: &NurtureConfig,
    at: Millis,
    status: Status,
    why: String,
) {
    let n = &mut state.nurture;
    let from = n.sequence.clone().unwrap_or_default();
    n.status = status;
    n.due = None;
    n.reason = Some(why.clone());
    let verb = match status {
        Status::Paused => "paused",
        Status::Exited => "left nurturing",
        _ => "stopped",
    };
    let text = if from.is_empty() {
        format!("{verb}: {why}")
    } else {
        format!("{verb} `{from}`: {why}")
    };
    note(state, config, at, text);
}

/// Enrols a lead that got its first segment, and moves an active lead whose
/// segment changed to the new segment's sequence.
pub(super) fn follow_segment(state: &mut LeadState, config: &NurtureConfig, at: Millis) {
    if state.created_at.is_none() || state.stage.is_closed() {
        // A stub (no LeadEvent yet) has no name or address to write to.
        return;
    }
    let Some(segment) = state.score.as_ref().map(|s| s.segment) else {
        return;
    };
    let set = config.set();
    let target = set.for_segment(segment);
    match state.nurture.status {
        Status::NotEnrolled => {
            if let Some(sequence) = target {
                enrol(
                    state,
                    config,
                    sequence,
                    at,
                    at,
                    0,
                    format!("entered `{}`: segment {segment}", sequence.name),
                );
            }
        }
        Status::Active => {
            let current = state.nurture.sequence.clone().unwrap_or_default();
            let current_is_segment = set
                .get(&current)
                .is_some_and(|s| matches!(s.trigger, Trigger::Segment(_)));
            if !current_is_segment {
                // Reactivation runs to its end whatever the score does.
                return;
            }
            match target {
                Some(sequence) if sequence.name == current => {}
                Some(sequence) => {
                    // Keep the lead's timeline: the new sequence goes on from
                    // the time already spent, so nothing it would have sent
                    // earlier (a second welcome) is sent now.
                    let anchor = state.nurture.anchor;
                    let variant = sequence.variant_for(&state.lead_ext_id);
                    let next = variant
                        .steps
                        .iter()
                        .position(|s| anchor + s.offset > at)
                        .unwrap_or(variant.steps.len());
                    let why = format!(
                        "moved from `{current}` to `{}`: segment changed to {segment}; continuing at step {} of {}",
                        sequence.name,
                        next + 1,
                        variant.steps.len()
                    );
                    enrol(state, config, sequence, anchor, at, next, why);
                }
                None => leave(
                    state,
                    config,
                    at,
                    Status::Completed,
                    format!("segment changed to {segment}, which has no sequence"),
                ),
            }
        }
        // A paused lead is in the sales team's hands; a completed one waits
        // for reactivation.
        Status::Paused | Status::Completed | Status::Exited => {}
    }
}

/// Puts the lead in `sequence` at `at`, its steps counted from `anchor`.
pub(super) fn enrol(
    state: &mut LeadState,
    config: &NurtureConfig,
    sequence: &Sequence,
    anchor: Millis,
    at: Millis,
    first_step: usize,
    why: String,
) {
    let variant = sequence.variant_for(&state.lead_ext_id);
    let entries = state
        .nurture
        .entries
        .entry(sequence.name.clone())
        .or_insert(0);
    let cycle = *entries;
    *entries += 1;
    if let (Some(experiment), Some(name)) = (&sequence.experiment, &variant.name) {
        state
            .nurture
            .experiments
            .entry(experiment.clone())
            .or_insert_with(|| Membership {
                variant: name.clone(),
                enrolled_at: at,
                replied_at: None,
                converted_at: None,
            });
    }
    let n = &mut state.nurture;
    n.status = Status::Active;
    n.sequence = Some(sequence.name.clone());
    n.variant = variant.name.clone();
    n.cycle = cycle;
    n.anchor = anchor;
    n.next_step = first_step;
    n.reason = None;
    n.due = None;
    note(state, config, at, why);
    schedule(state, config, at);
}

/// The current step of an active lead, if any remains.
pub(super) fn current_step<'a>(
    state: &LeadState,
    set: &'a SequenceSet,
) -> Option<(&'a Sequence, &'a Step)> {
    let n = &state.nurture;
    let sequence = set.get(n.sequence.as_deref()?)?;
    let variant = sequence.variant_named(n.variant.as_deref())?;
    Some((sequence, variant.steps.get(n.next_step)?))
}

/// Sets `due` for the current step (not before `not_before`), or completes
/// the sequence when no step is left.
pub(super) fn schedule(state: &mut LeadState, config: &NurtureConfig, not_before: Millis) {
    match current_step(state, config.set()) {
        Some((_, step)) => {
            let nominal = (state.nurture.anchor + step.offset).max(not_before);
            state.nurture.due = Some(config.allowed_at(state, nominal));
        }
        None => {
            let last = state.nurture.sequence.clone().unwrap_or_default();
            state.nurture.status = Status::Completed;
            state.nurture.due = None;
            state.nurture.reason = Some("all steps done".into());
            note(state, config, not_before, format!("completed `{last}`"));
        }
    }
}

/// The last contact that arms a reactivation: the lead's or the sales
/// team's, or its creation when there was none.
pub(super) fn contact_anchor(state: &LeadState) -> Option<Millis> {
    state.last_contact_at.or(state.created_at)
}

pub(super) fn refresh_timer(state: &mut LeadState, config: &NurtureConfig) {
    state.nurture.timer = if state.stage.is_closed() || !config.enabled {
        None
    } else if state.nurture.status == Status::Active {
        state.nurture.due
    } else {
        reactivation_time(state, config)
    };
}

pub(super) fn reactivation_time(state: &LeadState, config: &NurtureConfig) -> Option<Millis> {
    config.set().reactivation()?;
    let anchor = contact_anchor(state)?;
    if state.nurture.reactivated_after == Some(anchor) {
        return None;
    }
    // Silence counts from the latest touch of any kind, delivered messages included.
    let silent_since = [
        Some(anchor),
        state.last_contact_at,
        state.nurture.last_delivered_at,
    ]
    .into_iter()
    .flatten()
    .max()?;
    Some(silent_since + config.reactivation_after_days as Millis * MILLIS_PER_DAY)
}

/// Why a step cannot be sent on its channel, if it cannot.
pub fn channel_blocked(state: &LeadState, channel: Channel) -> Option<String> {
    if let Some(stop) = state.nurture.stopped.get(&channel) {
        return Some(format!("{channel} stopped ({})", stop.reason));
    }
    let consent = match channel {
        Channel::Email => &state.consent.email,
        Channel::Sms => &state.consent.sms,
    };
    match consent {
        None => return Some(format!("no {channel} consent on record")),
        Some(c) if !c.granted => {
            return Some(format!("{channel} consent withdrawn ({})", c.source))
        }
        Some(_) => {}
    }
    let address = match channel {
        Channel::Email => &state.email,
        Channel::Sms => &state.phone,
    };
    if address.as_deref().is_none_or(|a| a.trim().is_empty()) {
        return Some(format!("no {channel} address"));
    }
    None
}

pub(super) fn conditions_fail(state: &LeadState, step: &Step) -> Option<String> {
    let when = &step.when;
    if !when.stage_in.is_empty() && !when.stage_in.contains(&state.stage) {
        return Some(format!("stage is {}", state.stage));
    }
    let score = state.score.as_ref().map_or(0.0, |s| s.final_score);
    if when.min_score.is_some_and(|min| score < min) {
        return Some(format!("score {score:.1} is below the step's minimum"));
    }
    if when.max_score.is_some_and(|max| score > max) {
        return Some(format!("score {score:.1} is above the step's maximum"));
    }
    let anchor = state.nurture.anchor;
    if let Some(kind) = when.without.iter().find(|k| {
        state
            .interactions
            .get(k)
            .is_some_and(|s| s.last_at >= anchor)
    }) {
        return Some(format!("the lead had a {kind} since entering"));
    }
    None
}
