//! A lead's nurturing timer came due: the step is sent (or waits for quiet
//! hours or the frequency cap, or is skipped with its reason), or a silent
//! lead enters the reactivation sequence.

use super::*;

/// How the clock reads a due timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireClock {
    /// Live: timers due by `until` (at most `now`) fire, and every check
    /// (quiet hours, the cap) reads `now`.
    Live { now: Millis, until: Millis },
    /// Replay: the clock sweeps up to the bound through each timer, which
    /// fires at exactly its due time.
    Sweep(Millis),
}

impl FireClock {
    /// Live at `now`, for everything due by then.
    pub fn live(now: Millis) -> FireClock {
        FireClock::Live { now, until: now }
    }

    /// The latest due time that fires.
    pub fn bound(self) -> Millis {
        match self {
            FireClock::Live { now, until } => until.min(now),
            FireClock::Sweep(t) => t,
        }
    }

    fn reading(self, due: Millis) -> Millis {
        match self {
            FireClock::Live { now, .. } => now,
            FireClock::Sweep(_) => due,
        }
    }
}

/// Fires everything due on the lead up to the clock: messages to send, a
/// step to skip or postpone, or a reactivation. Returns the messages.
pub fn fire_due(
    state: &mut LeadState,
    config: &NurtureConfig,
    clock: FireClock,
) -> Vec<OutboundMessage> {
    let mut messages = Vec::new();
    if !config.enabled {
        return messages;
    }
    // Every round fires, skips, postpones to a later time or enrols, so this
    // bound is never reached by a correct state; it guards against a loop.
    for _ in 0..64 {
        refresh_timer(state, config);
        let Some(due) = state.nurture.timer else {
            break;
        };
        if due > clock.bound() {
            break;
        }
        let now = clock.reading(due);
        if state.nurture.status != Status::Active {
            reactivate(state, config, now);
            continue;
        }
        let Some((sequence, step)) = current_step(state, config.set()) else {
            schedule(state, config, now);
            continue;
        };
        let skip = conditions_fail(state, step)
            .map(|why| format!("conditions not met: {why}"))
            .or_else(|| channel_blocked(state, step.channel));
        if let Some(why) = skip {
            note(
                state,
                config,
                now,
                format!("skipped `{}` of `{}`: {why}", step.id, sequence.name),
            );
            advance(state, config, now);
            continue;
        }
        let allowed = config.allowed_at(state, now);
        if allowed > now {
            state.nurture.due = Some(allowed);
            continue;
        }
        let window = config.frequency_cap.window_hours as Millis * HOUR;
        state.nurture.recent_sends.retain(|t| *t > now - window);
        if state.nurture.recent_sends.len() >= config.frequency_cap.max_messages as usize {
            let oldest = state
                .nurture
                .recent_sends
                .iter()
                .min()
                .copied()
                .unwrap_or(now);
            let later = config.allowed_at(state, oldest + window);
            note(
                state,
                config,
                now,
                format!(
                    "`{}` of `{}` waits for the frequency cap ({} per {} h)",
                    step.id,
                    sequence.name,
                    config.frequency_cap.max_messages,
                    config.frequency_cap.window_hours
                ),
            );
            state.nurture.due = Some(later.max(now + 1));
            continue;
        }
        messages.push(message(state, sequence, step, due, now));
        state.nurture.recent_sends.push(now);
        advance(state, config, now);
    }
    refresh_timer(state, config);
    messages
}

fn advance(state: &mut LeadState, config: &NurtureConfig, now: Millis) {
    state.nurture.next_step += 1;
    schedule(state, config, now);
}

fn reactivate(state: &mut LeadState, config: &NurtureConfig, now: Millis) {
    let Some(sequence) = config.set().reactivation() else {
        return;
    };
    state.nurture.reactivated_after = contact_anchor(state);
    let days = config.reactivation_after_days;
    enrol(
        state,
        config,
        sequence,
        now,
        now,
        0,
        format!("entered `{}`: no contact for {days} days", sequence.name),
    );
}

fn message(
    state: &LeadState,
    sequence: &Sequence,
    step: &Step,
    scheduled_for: Millis,
    now: Millis,
) -> OutboundMessage {
    let n = &state.nurture;
    let to = match step.channel {
        Channel::Email => state.email.clone(),
        Channel::Sms => state.phone.clone(),
    }
    .unwrap_or_default();
    let mut data = BTreeMap::new();
    data.insert("lead_ext_id".to_string(), state.lead_ext_id.clone());
    for (key, value) in [
        ("first_name", &state.first_name),
        ("last_name", &state.last_name),
        ("company", &state.company),
        ("owner", &state.owner),
        ("source", &state.source),
    ] {
        if let Some(v) = value {
            data.insert(key.to_string(), v.clone());
        }
    }
    if let Some(score) = &state.score {
        data.insert("segment".into(), score.segment.to_string());
    }
    data.insert("stage".into(), state.stage.to_string());
    OutboundMessage {
        message_id: message_id(&state.lead_ext_id, &sequence.name, &step.id, n.cycle),
        lead_ext_id: state.lead_ext_id.clone(),
        channel: step.channel,
        to,
        template: step.template.clone(),
        data,
        sequence: sequence.name.clone(),
        step: n.next_step as i32,
        cycle: n.cycle as i32,
        variant: n.variant.clone(),
        scheduled_for,
        created_at: now,
    }
}
