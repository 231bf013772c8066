//! The nurturing core, driven by hand: events and a swept clock, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::core::apply::{apply_batch, fire_timers, ApplyContext, BatchClock, Output, ScorePolicy};
use crate::core::ids::message_id;
use crate::core::nurture::sequences::SequenceSet;
use crate::core::nurture::*;
use crate::core::rules::{RuleConfig, SegmentThresholds};
use crate::core::state::*;
use crate::events::*;
use crate::testing::lead_created;

const DAY: Millis = MILLIS_PER_DAY;
/// Monday 2 March 2026, 09:00 UTC (10:00 in Madrid).
const T0: Millis = 1_772_442_000_000;

struct Lead {
    state: Option<LeadState>,
    rules: RuleConfig,
    segments: SegmentThresholds,
    config: NurtureConfig,
    sent: Vec<OutboundMessage>,
    n: u32,
}

impl Lead {
    fn new(config: NurtureConfig) -> Lead {
        Lead {
            state: None,
            rules: RuleConfig::default(),
            segments: SegmentThresholds::default(),
            config,
            sent: Vec::new(),
            n: 0,
        }
    }

    fn id(&self) -> String {
        "WEB-N1".into()
    }

    /// What a replay does: the core's batch, on event time.
    fn event(&mut self, event: InputEvent) {
        let ctx = ApplyContext {
            score: ScorePolicy {
                rules: &self.rules,
                segments: &self.segments,
                ml_weight: 0.6,
                top_factors: 5,
            },
            dedup_window: 64,
            model: None,
            nurture: Some(&self.config),
            forecast_slots: None,
            recreate_after_erasure: false,
        };
        let mut states: HashMap<String, LeadState> = self
            .state
            .take()
            .map(|s| (s.lead_ext_id.clone(), s))
            .into_iter()
            .collect();
        let outcome = apply_batch(&mut states, &[(0, event)], &ctx, BatchClock::EventTime);
        for (_, output) in outcome.outputs {
            if let Output::Message(m) = output {
                self.sent.push(m);
            }
        }
        self.state = states.into_values().next();
    }

    fn sweep(&mut self, until: Millis) {
        if let Some(state) = self.state.as_mut() {
            for o in fire_timers(state, &self.config, FireClock::Sweep(until)) {
                let Output::Message(m) = o else {
                    panic!("timers only send messages")
                };
                self.sent.push(m);
            }
        }
    }

    fn created(&mut self, at: Millis, score: f64, timezone: &str) {
        self.event(InputEvent::Lead(LeadEvent {
            event_id: "created".into(),
            phone: Some("+34600000001".into()),
            last_name: Some("Ruiz".into()),
            initial_score: Some(score),
            timezone: Some(timezone.into()),
            ..lead_created(&self.id(), at)
        }));
    }

    fn interaction(&mut self, at: Millis, kind: InteractionKind, channel: &str) {
        self.n += 1;
        self.event(InputEvent::Interaction(InteractionEvent {
            event_id: format!("i{}", self.n),
            lead_ext_id: self.id(),
            occurred_at: at,
            kind,
            channel: Some(channel.into()),
            actor: None,
            attributes: BTreeMap::new(),
        }));
    }

    fn stage(&mut self, at: Millis, to: Stage) {
        self.n += 1;
        self.event(InputEvent::StageChange(StageChangeEvent {
            event_id: format!("s{}", self.n),
            lead_ext_id: self.id(),
            occurred_at: at,
            from_stage: None,
            to_stage: to,
            owner: None,
            deal_value: None,
        }));
    }

    fn sent(&self) -> Vec<(String, Millis)> {
        self.sent
            .iter()
            .map(|m| (m.template.clone(), m.scheduled_for))
            .collect()
    }

    fn nurture(&self) -> &NurtureState {
        &self.state.as_ref().unwrap().nurture
    }
}

fn premium_days(days: &[Millis]) -> Vec<(String, Millis)> {
    crate::testing::premium_sends(T0, days)
}

#[test]
fn a_premium_lead_gets_the_four_emails_on_days_1_3_5_and_7() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.sweep(T0 + 20 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1, 3, 5, 7]));
    let first = &lead.sent[0];
    assert_eq!(first.channel, Channel::Email);
    assert_eq!(first.to, "ana@example.com");
    assert_eq!(first.sequence, "premium");
    assert_eq!(
        (first.step, first.cycle, first.variant.as_deref()),
        (0, 0, None)
    );
    for (key, value) in [
        ("first_name", "Ana"),
        ("company", "Faro Labs"),
        ("lead_ext_id", "WEB-N1"),
        ("owner", "rep-02"),
        ("segment", "premium"),
    ] {
        assert_eq!(
            first.data.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(
        first.message_id,
        message_id("WEB-N1", "premium", "premium_welcome", 0)
    );
    assert_eq!(lead.nurture().status, Status::Completed);
}

#[test]
fn a_reply_on_day_4_stops_the_rest() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.interaction(T0 + 4 * DAY, InteractionKind::EmailReply, "email");
    lead.sweep(T0 + 20 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1, 3]));
    assert_eq!(lead.nurture().status, Status::Paused);
    assert_eq!(
        lead.nurture().reason.as_deref(),
        Some("lead replied by email")
    );
}

#[test]
fn a_stage_change_or_a_manual_contact_pauses_and_a_close_ends_nurturing() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.stage(T0 + 2 * DAY, Stage::Qualified);
    lead.sweep(T0 + 20 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1]));
    assert_eq!(
        lead.nurture().reason.as_deref(),
        Some("stage changed to qualified")
    );

    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.interaction(T0 + 2 * DAY, InteractionKind::ManualContact, "phone");
    lead.sweep(T0 + 20 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1]));
    assert_eq!(lead.nurture().status, Status::Paused);

    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.stage(T0 + 2 * DAY, Stage::ClosedLost);
    lead.sweep(T0 + 200 * DAY);
    assert_eq!(
        lead.sent(),
        premium_days(&[1]),
        "closed: no reactivation either"
    );
    assert_eq!(lead.nurture().status, Status::Exited);
    assert_eq!(lead.nurture().timer, None);
}

#[test]
fn a_silent_lead_is_reactivated_once_and_a_new_contact_arms_it_again() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.sweep(T0 + 120 * DAY);
    let reactivation = vec![
        ("reactivation_checkin".to_string(), T0 + 30 * DAY),
        ("reactivation_last_chance".to_string(), T0 + 34 * DAY),
    ];
    let mut want = premium_days(&[1, 3, 5, 7]);
    want.extend(reactivation.clone());
    assert_eq!(lead.sent(), want, "once, however long the silence");
    assert_eq!(lead.nurture().timer, None);
    // A call re-arms it: 30 days after the call, a second cycle.
    lead.interaction(T0 + 121 * DAY, InteractionKind::Call, "phone");
    lead.sweep(T0 + 200 * DAY);
    let second: Vec<&OutboundMessage> = lead.sent[6..].iter().collect();
    assert_eq!(second.len(), 2);
    assert_eq!(second[0].scheduled_for, T0 + 151 * DAY);
    assert_eq!(second[0].cycle, 1);
    assert_ne!(second[0].message_id, lead.sent[4].message_id);
}

#[test]
fn an_unsubscribed_lead_gets_nothing_more_on_that_channel() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.interaction(T0 + 2 * DAY, InteractionKind::Unsubscribe, "email");
    lead.sweep(T0 + 120 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1]));
    assert!(lead.nurture().stopped.contains_key(&Channel::Email));
    assert!(lead
        .nurture()
        .history
        .iter()
        .any(|n| n.note.contains("skipped `premium_value_prop`")));

    // A bounce stops email but not SMS: the SMS step of high_priority still goes.
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 60.0, "Europe/Madrid");
    lead.interaction(T0 + 2 * DAY, InteractionKind::Bounce, "email");
    lead.sweep(T0 + 6 * DAY);
    let templates: Vec<String> = lead.sent().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        templates,
        ["high_priority_welcome", "high_priority_followup"]
    );
}

#[test]
fn quiet_hours_shift_a_step_to_the_next_morning_in_the_leads_timezone() {
    let mut lead = Lead::new(NurtureConfig::default());
    // 22:00 UTC = 07:00 in Tokyo the next day: still quiet until 08:00.
    let created = T0 + 13 * 3_600_000;
    lead.created(created, 90.0, "Asia/Tokyo");
    lead.sweep(created + 2 * DAY);
    assert_eq!(
        lead.sent(),
        [("premium_welcome".to_string(), created + DAY + 3_600_000)]
    );
    // The same instant is 23:00 in Madrid: quiet until 08:00 Madrid (07:00 UTC).
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(created, 90.0, "Europe/Madrid");
    lead.sweep(created + 2 * DAY);
    assert_eq!(
        lead.sent(),
        [("premium_welcome".to_string(), T0 + 2 * DAY - 2 * 3_600_000)]
    );
}

#[test]
fn a_timezone_that_does_not_exist_falls_back_to_the_default_and_is_noted() {
    let mut lead = Lead::new(NurtureConfig::default());
    let created = T0 + 13 * 3_600_000; // 22:00 UTC: quiet in UTC
    lead.created(created, 90.0, "Mars/Olympus_Mons");
    lead.sweep(created + 2 * DAY);
    // Quiet hours in UTC (the default): 22:00 → 08:00 UTC.
    assert_eq!(
        lead.sent(),
        [("premium_welcome".to_string(), T0 + 2 * DAY - 3_600_000)]
    );
    assert!(lead.nurture().history.iter().any(|n| n
        .note
        .contains("timezone `Mars/Olympus_Mons` does not exist")));
}

fn hourly_config(max_messages: u32, window_hours: u32) -> NurtureConfig {
    let set = SequenceSet::parse(
        "[[sequence]]\nname = \"burst\"\nsegment = \"premium\"\nsteps = [\n\
         { hours = 1, channel = \"email\", template = \"a\" },\n\
         { hours = 2, channel = \"email\", template = \"b\" },\n\
         { hours = 3, channel = \"email\", template = \"c\" },\n]\n",
        "test",
    )
    .unwrap();
    NurtureConfig {
        sequences: Sequences(Arc::new(set)),
        frequency_cap: FrequencyCap {
            max_messages,
            window_hours,
        },
        ..NurtureConfig::default()
    }
}

#[test]
fn the_frequency_cap_delays_a_step_until_the_window_allows_it() {
    let mut lead = Lead::new(hourly_config(2, 24));
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.sweep(T0 + 3 * DAY);
    let h = 3_600_000;
    assert_eq!(
        lead.sent(),
        [
            ("a".to_string(), T0 + h),
            ("b".to_string(), T0 + 2 * h),
            ("c".to_string(), T0 + h + DAY),
        ]
    );
    // In any 24 hours, at most two.
    for m in &lead.sent {
        let within = lead
            .sent
            .iter()
            .filter(|o| {
                o.scheduled_for > m.scheduled_for - DAY && o.scheduled_for <= m.scheduled_for
            })
            .count();
        assert!(within <= 2);
    }
}

#[test]
fn a_segment_change_moves_the_lead_on_its_timeline_and_says_why() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.sweep(T0 + 2 * DAY);
    // Day 2: the lead drops to high_priority (an upstream rescore).
    let mut update = LeadEvent {
        initial_score: Some(60.0),
        ..LeadEvent::update("rescored".into(), lead.id(), T0 + 2 * DAY)
    };
    lead.event(InputEvent::Lead(update.clone()));
    lead.sweep(T0 + 10 * DAY);
    let templates: Vec<String> = lead.sent().into_iter().map(|(t, _)| t).collect();
    // No second welcome: high_priority goes on at its day-3 step.
    assert_eq!(
        templates,
        [
            "premium_welcome",
            "high_priority_benefits",
            "high_priority_followup"
        ]
    );
    assert!(lead.nurture().history.iter().any(|n| n.note
        == "moved from `premium` to `high_priority`: segment changed to high_priority; continuing at step 2 of 3"));
    // Back up again later: premium's remaining steps after day 10 — none — so it completes.
    update.event_id = "rescored-2".into();
    update.occurred_at = T0 + 10 * DAY;
    update.initial_score = Some(95.0);
    lead.event(InputEvent::Lead(update));
    assert_eq!(lead.sent.len(), 3);
}

#[test]
fn variants_are_carried_and_replies_and_wins_counted_per_experiment() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 40.0, "Europe/Madrid"); // standard: an experiment
    lead.sweep(T0 + 6 * DAY);
    let variant = lead.nurture().variant.clone().expect("a variant");
    assert!(lead
        .sent
        .iter()
        .all(|m| m.variant.as_deref() == Some(variant.as_str())));
    let set = SequenceSet::built_in();
    let expected = set
        .get("standard")
        .unwrap()
        .variant_for("WEB-N1")
        .name
        .clone();
    assert_eq!(Some(variant.clone()), expected);
    lead.interaction(T0 + 7 * DAY, InteractionKind::EmailReply, "email");
    lead.stage(T0 + 9 * DAY, Stage::ClosedWon);
    let m = &lead.nurture().experiments["standard_second_email"];
    assert_eq!(m.variant, variant);
    assert_eq!(m.enrolled_at, T0);
    assert_eq!(m.replied_at, Some(T0 + 7 * DAY));
    assert_eq!(m.converted_at, Some(T0 + 9 * DAY));
}

#[test]
fn live_firing_reads_the_wall_clock_and_catches_up_within_the_cap() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    // The processor was down for a week: at 12:00 UTC on day 8 every step is due.
    let now = T0 + 8 * DAY + 3 * 3_600_000;
    let state = lead.state.as_mut().unwrap();
    let sent = fire_timers(state, &lead.config, FireClock::live(now));
    let Output::Message(first) = &sent[0] else {
        panic!()
    };
    assert_eq!(sent.len(), 4, "four per week is within the cap");
    assert_eq!(first.scheduled_for, T0 + DAY);
    assert_eq!(first.created_at, now);
}

#[test]
fn an_erasure_cancels_the_sequence_and_no_message_follows() {
    let mut lead = Lead::new(NurtureConfig::default());
    lead.created(T0, 90.0, "Europe/Madrid");
    lead.sweep(T0 + 2 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1]));
    assert!(lead.nurture().timer.is_some());
    lead.event(InputEvent::Lead(LeadEvent::erasure(
        "erase".into(),
        lead.id(),
        T0 + 2 * DAY,
    )));
    assert_eq!(lead.nurture().timer, None);
    assert_eq!(lead.nurture().status, Status::NotEnrolled);
    lead.sweep(T0 + 30 * DAY);
    // A later interaction is dropped: it neither re-enrols nor sends.
    lead.interaction(T0 + 31 * DAY, InteractionKind::WebVisit, "web");
    lead.sweep(T0 + 60 * DAY);
    assert_eq!(lead.sent(), premium_days(&[1]));
}
