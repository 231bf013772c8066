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
use crate::core::state::{
    ChannelConsent, InteractionStats, LeadState, NurtureState, ScoreSnapshot, StageTransition,
};
use crate::events::{
    Channel, DeliveryEvent, DeliveryStatus, InputEvent, InteractionEvent, InteractionKind,
    LeadEvent, LeadEventKind, LeadScore, Millis, OutboundMessage, ScoreFactor, Stage,
    StageChangeEvent,
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
}

impl Output {
    /// The deterministic id the output is published with.
    pub fn id(&self) -> &str {
        match self {
            Output::Score(s) => &s.score_id,
            Output::Message(m) => &m.message_id,
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
mod tests {
    use super::*;
    use crate::events::{Consent, Segment, MILLIS_PER_DAY};

    const T0: Millis = 1_767_225_600_000;

    /// The scoring settings the core reads, at their defaults.
    #[derive(Default)]
    struct Scoring {
        rules: RuleConfig,
        segments: SegmentThresholds,
    }

    impl Scoring {
        fn policy(&self) -> ScorePolicy<'_> {
            ScorePolicy {
                rules: &self.rules,
                segments: &self.segments,
                ml_weight: 0.6,
                top_factors: 5,
            }
        }
    }

    fn ctx(scoring: &Scoring) -> ApplyContext<'_> {
        ApplyContext {
            score: scoring.policy(),
            dedup_window: 64,
            model: None,
            nurture: None,
        }
    }

    fn created(id: &str, at: Millis) -> InputEvent {
        InputEvent::Lead(LeadEvent {
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
            consent: Some(Consent {
                email: Some(true),
                sms: Some(true),
                recorded_at: at,
                source: "form".into(),
            }),
            timezone: Some("Europe/Madrid".into()),
            attributes: BTreeMap::from([("industry".into(), "software".into())]),
        })
    }

    fn interaction(
        id: &str,
        n: u32,
        kind: InteractionKind,
        at: Millis,
        channel: &str,
    ) -> InputEvent {
        InputEvent::Interaction(InteractionEvent {
            event_id: format!("{id}-i{n}"),
            lead_ext_id: id.into(),
            occurred_at: at,
            kind,
            channel: Some(channel.into()),
            actor: None,
            attributes: BTreeMap::new(),
        })
    }

    fn stage(id: &str, n: u32, from: Stage, to: Stage, at: Millis) -> InputEvent {
        InputEvent::StageChange(StageChangeEvent {
            event_id: format!("{id}-s{n}"),
            lead_ext_id: id.into(),
            occurred_at: at,
            from_stage: Some(from),
            to_stage: to,
            owner: Some("rep-05".into()),
            deal_value: (to == Stage::ClosedWon).then_some(28_000.0),
        })
    }

    fn apply_all(events: &[InputEvent], scoring: &Scoring) -> LeadState {
        let mut state = None;
        for e in events {
            state = Some(apply(state, e, &ctx(scoring)).state);
        }
        state.unwrap()
    }

    /// The fields that must not depend on how the three topics interleave.
    fn topic_order_independent(s: &LeadState) -> impl PartialEq + std::fmt::Debug {
        (
            (
                s.created_at,
                s.updated_at,
                s.email.clone(),
                s.source.clone(),
                s.stage,
                s.stage_entered_at,
            ),
            (
                s.stage_history.clone(),
                s.first_contact_at,
                s.last_contact_at,
                s.interactions.clone(),
            ),
            (
                s.consent.clone(),
                s.email_bounced_at,
                s.attributes.clone(),
                s.events_applied,
            ),
            ((s.engagement.value_at(T0 + 30 * MILLIS_PER_DAY, 14.0) * 1e9).round()),
            s.owner.clone(),
        )
    }

    #[test]
    fn state_does_not_depend_on_how_topics_interleave() {
        let scoring = Scoring::default();
        let id = "REF-1";
        let leads = vec![created(id, T0)];
        let interactions = vec![
            interaction(id, 1, InteractionKind::EmailOpen, T0 + 3_600_000, "email"),
            interaction(id, 2, InteractionKind::Call, T0 + MILLIS_PER_DAY, "phone"),
            interaction(
                id,
                3,
                InteractionKind::EmailReply,
                T0 + 2 * MILLIS_PER_DAY,
                "email",
            ),
            interaction(
                id,
                4,
                InteractionKind::Unsubscribe,
                T0 + 3 * MILLIS_PER_DAY,
                "sms",
            ),
        ];
        let stages = vec![
            stage(
                id,
                1,
                Stage::New,
                Stage::Contacted,
                T0 + MILLIS_PER_DAY + 60_000,
            ),
            stage(
                id,
                2,
                Stage::Contacted,
                Stage::Qualified,
                T0 + 5 * MILLIS_PER_DAY,
            ),
        ];
        // Per-topic order is kept; the topics are concatenated in every order.
        let orders: [[&Vec<InputEvent>; 3]; 3] = [
            [&leads, &interactions, &stages],
            [&stages, &interactions, &leads],
            [&interactions, &stages, &leads],
        ];
        let results: Vec<LeadState> = orders
            .iter()
            .map(|o| {
                apply_all(
                    &o.iter().flat_map(|v| v.iter().cloned()).collect::<Vec<_>>(),
                    &scoring,
                )
            })
            .collect();
        for r in &results[1..] {
            assert_eq!(
                topic_order_independent(r),
                topic_order_independent(&results[0])
            );
        }
        let s = &results[0];
        assert_eq!(s.created_at, Some(T0));
        assert_eq!(s.stage, Stage::Qualified);
        assert_eq!(s.first_contact_at, Some(T0 + MILLIS_PER_DAY));
        assert_eq!(s.last_contact_at, Some(T0 + 2 * MILLIS_PER_DAY));
        assert_eq!(s.consent.sms.as_ref().map(|c| c.granted), Some(false));
        assert_eq!(s.consent.email.as_ref().map(|c| c.granted), Some(true));
        assert_eq!(
            s.owner.as_deref(),
            Some("rep-05"),
            "stage changes carry the current owner"
        );
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let scoring = Scoring::default();
        let e = interaction("W-1", 1, InteractionKind::Meeting, T0, "in_person");
        let first = apply(None, &e, &ctx(&scoring));
        assert!(!first.duplicate);
        let again = apply(Some(first.state.clone()), &e, &ctx(&scoring));
        assert!(again.duplicate);
        assert!(again.outputs.is_empty());
        assert_eq!(again.state, first.state);
        assert_eq!(again.state.interaction_count(InteractionKind::Meeting), 1);
    }

    #[test]
    fn the_dedup_window_is_bounded() {
        let scoring = Scoring::default();
        let small = ApplyContext {
            score: scoring.policy(),
            dedup_window: 3,
            model: None,
            nurture: None,
        };
        let mut state = None;
        for n in 0..10 {
            let e = interaction("W-2", n, InteractionKind::WebVisit, T0 + n as Millis, "web");
            state = Some(apply(state, &e, &small).state);
        }
        let state = state.unwrap();
        assert_eq!(
            Vec::from(state.recent_event_ids.clone()),
            ["W-2-i7", "W-2-i8", "W-2-i9"]
        );
    }

    #[test]
    fn consent_keeps_the_latest_statement_and_a_tie_goes_to_withdrawal() {
        let scoring = Scoring::default();
        let id = "W-3";
        let unsubscribe = interaction(id, 1, InteractionKind::Unsubscribe, T0 + 10, "email");
        let mut regrant = created(id, T0 + 10);
        if let InputEvent::Lead(e) = &mut regrant {
            e.event_id = "regrant".into();
            e.kind = LeadEventKind::Updated;
        }
        // Same instant: the withdrawal wins, in either order.
        for events in [
            [unsubscribe.clone(), regrant.clone()],
            [regrant.clone(), unsubscribe.clone()],
        ] {
            let s = apply_all(&events, &scoring);
            let email = s.consent.email.unwrap();
            assert!(!email.granted);
            assert_eq!(email.source, "unsubscribe:W-3-i1");
        }
        // A later grant (the lead re-subscribed) wins over an older withdrawal.
        let mut later = regrant.clone();
        if let InputEvent::Lead(e) = &mut later {
            e.consent.as_mut().unwrap().recorded_at = T0 + 99;
        }
        let s = apply_all(&[unsubscribe, later], &scoring);
        assert!(s.consent.email.unwrap().granted);
    }

    #[test]
    fn rule_score_is_computed_when_upstream_gives_none_and_published_on_change() {
        let scoring = Scoring::default();
        let first = apply(None, &created("R-1", T0), &ctx(&scoring));
        // 10 base + 20 referral + 10 (30k band) + 0.4 × 15 = 46, no engagement yet.
        let Output::Score(score) = &first.outputs[0] else {
            panic!("a score")
        };
        assert_eq!(score.initial_score, 46.0);
        assert_eq!(score.final_score, 46.0);
        assert_eq!(score.segment, Segment::Standard);
        assert_eq!(score.model_version, None);
        let meeting = interaction("R-1", 1, InteractionKind::Meeting, T0, "in_person");
        let second = apply(Some(first.state), &meeting, &ctx(&scoring));
        let Output::Score(score) = &second.outputs[0] else {
            panic!("a score")
        };
        assert_eq!(score.final_score, 58.0);
        assert_eq!(score.segment, Segment::HighPriority);
        assert_eq!(score.score_id, output_id("R-1", "score", "R-1-i1"));
        // An interaction worth nothing changes no score, so nothing is published.
        let mut zero = Scoring::default();
        zero.rules
            .interaction_weights
            .insert("web_visit".into(), 0.0);
        let visit = interaction("R-1", 2, InteractionKind::WebVisit, T0, "web");
        assert!(apply(Some(second.state), &visit, &ctx(&zero))
            .outputs
            .is_empty());
    }

    #[test]
    fn an_upstream_initial_score_is_kept() {
        let scoring = Scoring::default();
        let mut e = created("U-1", T0);
        if let InputEvent::Lead(l) = &mut e {
            l.initial_score = Some(88.0);
        }
        let applied = apply(None, &e, &ctx(&scoring));
        let Output::Score(score) = &applied.outputs[0] else {
            panic!("a score")
        };
        assert_eq!(score.initial_score, 88.0);
        assert_eq!(score.segment, Segment::Premium);
    }

    #[test]
    fn output_ids_are_deterministic_and_distinct() {
        assert_eq!(output_id("A", "score", "e1"), output_id("A", "score", "e1"));
        assert_ne!(output_id("A", "score", "e1"), output_id("A", "score", "e2"));
        assert_ne!(output_id("A", "score", "e1"), output_id("B", "score", "e1"));
    }
}
