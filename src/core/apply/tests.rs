//! `apply` on single leads: state, idempotence, order independence, scores.

use super::*;
use crate::events::{Segment, MILLIS_PER_DAY};
use crate::testing::{self, lead_created};

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
        forecast_slots: None,
        recreate_after_erasure: false,
    }
}

fn created(id: &str, at: Millis) -> InputEvent {
    InputEvent::Lead(LeadEvent {
        attributes: BTreeMap::from([("industry".into(), "software".into())]),
        ..lead_created(id, at)
    })
}

fn interaction(id: &str, n: u32, kind: InteractionKind, at: Millis, channel: &str) -> InputEvent {
    InputEvent::Interaction(testing::interaction(id, n, kind, at, channel))
}

fn stage(id: &str, n: u32, from: Stage, to: Stage, at: Millis) -> InputEvent {
    InputEvent::StageChange(StageChangeEvent {
        from_stage: Some(from),
        owner: Some("rep-05".into()),
        deal_value: (to == Stage::ClosedWon).then_some(28_000.0),
        ..testing::stage_change(id, n, to, at)
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
        forecast_slots: None,
        recreate_after_erasure: false,
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

#[test]
fn a_lead_keeps_the_score_it_held_at_each_forecast_slot_it_moves_past() {
    let scoring = Scoring::default();
    // T0 is Thursday 2026-01-01; weekly slots on Mondays: T0 + 4 days, + 11 days.
    let slots = crate::core::slots::ForecastSlots::new(7, 0);
    let ctx = ApplyContext {
        forecast_slots: Some(slots),
        ..ctx(&scoring)
    };
    let day = MILLIS_PER_DAY;
    let monday = T0 + 4 * day;
    let mut state = apply(None, &created("L1", T0), &ctx).state;
    let created_score = state.score.clone();
    assert!(created_score.is_some());
    // Same week: nothing kept.
    state = apply(
        Some(state),
        &interaction("L1", 1, InteractionKind::EmailOpen, T0 + day, "email"),
        &ctx,
    )
    .state;
    assert!(state.slot_snapshots.is_empty());
    let before_monday = state.score.clone();
    // Past Monday and the next one at once: the score held over the gap is kept.
    state = apply(
        Some(state),
        &interaction("L1", 2, InteractionKind::Meeting, monday + 8 * day, "web"),
        &ctx,
    )
    .state;
    assert_eq!(state.slot_snapshots.len(), 1);
    assert_ne!(
        state.score, before_monday,
        "the demo request moved the score"
    );
    assert_eq!(state.score_as_of(monday).unwrap(), before_monday.as_ref());
    assert_eq!(
        state.score_as_of(monday + 7 * day).unwrap(),
        before_monday.as_ref()
    );
    assert_eq!(state.score_as_of(T0 + day).unwrap(), before_monday.as_ref());
    assert_eq!(state.score_as_of(T0), None, "before the kept span");
    assert_eq!(
        state.score_as_of(monday + 9 * day).unwrap(),
        state.score.as_ref()
    );
    // A late event dated before the latest keeps nothing.
    let kept = state.slot_snapshots.clone();
    state = apply(
        Some(state),
        &interaction("L1", 3, InteractionKind::EmailClick, T0 + 2 * day, "email"),
        &ctx,
    )
    .state;
    assert_eq!(state.slot_snapshots, kept);
    // Bounded: only the latest slots are kept.
    for week in 0..(crate::core::state::SLOT_SNAPSHOTS_KEPT as i64 + 3) {
        let at = monday + (14 + 7 * week) * day + 1;
        state = apply(
            Some(state),
            &interaction(
                "L1",
                10 + week as u32,
                InteractionKind::EmailOpen,
                at,
                "email",
            ),
            &ctx,
        )
        .state;
    }
    assert_eq!(
        state.slot_snapshots.len(),
        crate::core::state::SLOT_SNAPSHOTS_KEPT
    );
    assert_eq!(state.score_as_of(monday), None, "too long ago to know");
    // Without a schedule nothing is kept at all.
    let plain = apply_all(
        &[
            created("L2", T0),
            interaction("L2", 1, InteractionKind::EmailOpen, T0 + 30 * day, "email"),
        ],
        &scoring,
    );
    assert!(plain.slot_snapshots.is_empty());
}

fn erasure(id: &str, n: u32, at: Millis) -> InputEvent {
    InputEvent::Lead(LeadEvent::erasure(format!("{id}-erase{n}"), id.into(), at))
}

/// A lead with every kind of personal data: contact fields, names, custom
/// attributes, consent, interactions, a score.
fn personal_lead(id: &str, scoring: &Scoring) -> (LeadState, Vec<InputEvent>) {
    let events = vec![
        InputEvent::Lead(LeadEvent {
            phone: Some("+34600111222".into()),
            last_name: Some("Quintanilla".into()),
            attributes: BTreeMap::from([("linkedin".into(), "in/ana-quintanilla".into())]),
            ..lead_created(id, T0)
        }),
        interaction(id, 1, InteractionKind::EmailReply, T0 + 3_600_000, "email"),
        stage(id, 1, Stage::New, Stage::Contacted, T0 + MILLIS_PER_DAY),
    ];
    (apply_all(&events, scoring), events)
}

#[test]
fn an_erasure_leaves_a_tombstone_without_personal_data() {
    let scoring = Scoring::default();
    let (lead, _) = personal_lead("GDPR-1", &scoring);
    assert!(lead.score.is_some() && !lead.interactions.is_empty());
    let other = apply_all(&[created("GDPR-2", T0)], &scoring);
    let mut states = HashMap::from([
        ("GDPR-1".to_string(), lead.clone()),
        ("GDPR-2".to_string(), other),
    ]);
    // In one batch: an interaction that rescores the lead, another lead's
    // interaction, then the erasure.
    let at = T0 + 5 * MILLIS_PER_DAY;
    let batch = [
        (
            0,
            interaction("GDPR-1", 2, InteractionKind::Call, at - 60_000, "phone"),
        ),
        (
            0,
            interaction("GDPR-2", 1, InteractionKind::Call, at - 60_000, "phone"),
        ),
        (0, erasure("GDPR-1", 1, at)),
    ];
    let outcome = apply_batch(&mut states, &batch, &ctx(&scoring), BatchClock::EventTime);
    assert_eq!((outcome.erased, outcome.applied), (1, 3));
    // The lead's score from earlier in the batch is not published: only its
    // tombstone, beside the other lead's score.
    let about = |lead: &str| -> Vec<&Output> {
        outcome
            .outputs
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o.lead_ext_id() == Some(lead))
            .collect()
    };
    assert!(matches!(
        about("GDPR-1")[..],
        [Output::Tombstone { ref lead_ext_id, .. }] if lead_ext_id == "GDPR-1"
    ));
    assert!(matches!(about("GDPR-2")[..], [Output::Score(_)]));

    let tomb = &states["GDPR-1"];
    assert_eq!(tomb.erased_at, Some(at));
    let stored = serde_json::to_string(tomb).unwrap();
    for personal in [
        "ana@example.com",
        "+34600111222",
        "Ana",
        "Quintanilla",
        "Faro Labs",
        "Europe/Madrid",
        "in/ana-quintanilla",
        "form",
    ] {
        assert!(!stored.contains(personal), "{personal} in {stored}");
    }
    assert!(tomb.interactions.is_empty() && tomb.score.is_none() && tomb.pre_close.is_none());
    assert_eq!(tomb.nurture.timer, None);
    // What the funnel and the analytics count stays.
    assert_eq!(
        (tomb.stage, tomb.stage_history.len(), tomb.created_at),
        (Stage::Contacted, lead.stage_history.len(), lead.created_at)
    );
    assert_eq!(tomb.source.as_deref(), Some("referral"));
}

#[test]
fn events_for_an_erased_lead_are_dropped_and_a_replay_does_not_bring_it_back() {
    let scoring = Scoring::default();
    let (lead, history) = personal_lead("GDPR-3", &scoring);
    let at = T0 + 5 * MILLIS_PER_DAY;
    let erased = apply(Some(lead), &erasure("GDPR-3", 1, at), &ctx(&scoring));
    assert!(erased.erased);
    let tomb = erased.state;

    // The old log under new event ids (a re-import, a replay from another
    // source), and traffic after the erasure: all dropped, nothing kept.
    let mut later = history.clone();
    for e in later.iter_mut() {
        match e {
            InputEvent::Lead(l) => l.event_id.push_str("-again"),
            InputEvent::Interaction(i) => i.event_id.push_str("-again"),
            InputEvent::StageChange(s) => s.event_id.push_str("-again"),
            InputEvent::Delivery(d) => d.event_id.push_str("-again"),
        }
    }
    later.push(interaction(
        "GDPR-3",
        9,
        InteractionKind::WebVisit,
        at + 1,
        "web",
    ));
    later.push(InputEvent::Lead(LeadEvent {
        event_id: "back".into(),
        consent: Some(testing::consent(true, true, at + 2)),
        ..lead_created("GDPR-3", at + 2)
    }));
    let mut states = HashMap::from([("GDPR-3".to_string(), tomb.clone())]);
    let batch: Vec<(i32, InputEvent)> = later.into_iter().map(|e| (0, e)).collect();
    let outcome = apply_batch(&mut states, &batch, &ctx(&scoring), BatchClock::EventTime);
    assert_eq!(outcome.dropped_after_erasure, batch.len() as u64);
    assert_eq!((outcome.applied, outcome.outputs.len()), (0, 0));
    assert!(outcome.touched.is_empty(), "a dropped event writes nothing");
    assert_eq!(states["GDPR-3"], tomb);

    // The same erasure redelivered is a duplicate; a second one changes nothing.
    let again = apply(
        Some(tomb.clone()),
        &erasure("GDPR-3", 1, at),
        &ctx(&scoring),
    );
    assert!(again.duplicate && again.outputs.is_empty());
    let second = apply(
        Some(tomb.clone()),
        &erasure("GDPR-3", 2, at + 9),
        &ctx(&scoring),
    );
    assert!(second.dropped_after_erasure && !second.erased);
    assert_eq!(second.state, tomb);
}

#[test]
fn an_erased_lead_comes_back_only_when_allowed_and_with_consent_given_after() {
    let scoring = Scoring::default();
    let at = T0 + 5 * MILLIS_PER_DAY;
    let tomb = apply(
        Some(personal_lead("GDPR-4", &scoring).0),
        &erasure("GDPR-4", 1, at),
        &ctx(&scoring),
    )
    .state;
    let allowed = ApplyContext {
        recreate_after_erasure: true,
        ..ctx(&scoring)
    };
    let comeback = |event_id: &str, occurred: Millis, consent_at: Option<Millis>| {
        InputEvent::Lead(LeadEvent {
            event_id: event_id.into(),
            consent: consent_at.map(|c| testing::consent(true, false, c)),
            ..lead_created("GDPR-4", occurred)
        })
    };
    let fresh = comeback("back-1", at + 10, Some(at + 10));
    // Off by default.
    assert!(apply(Some(tomb.clone()), &fresh, &ctx(&scoring)).dropped_after_erasure);
    // Allowed, but without consent, with consent from before the erasure, or
    // from before the erasure altogether: still dropped.
    for stale in [
        comeback("back-2", at + 10, None),
        comeback("back-3", at + 10, Some(at - 1)),
        comeback("back-4", at - 5, Some(at - 5)),
    ] {
        assert!(apply(Some(tomb.clone()), &stale, &allowed).dropped_after_erasure);
    }
    let back = apply(Some(tomb), &fresh, &allowed);
    assert!(!back.dropped_after_erasure && !back.duplicate);
    let state = back.state;
    assert_eq!(state.erased_at, None);
    assert_eq!(state.email.as_deref(), Some("ana@example.com"));
    // A new lead: nothing of the erased one's history.
    assert!(state.stage_history.is_empty() && state.interactions.is_empty());
    assert_eq!(state.events_applied, 1);
}

#[test]
fn the_consent_ledger_keeps_every_change_and_adds_up_to_the_current_consent() {
    let scoring = Scoring::default();
    let id = "CONSENT-1";
    let statement = |n: u32, email: Option<bool>, sms: Option<bool>, recorded: Millis| {
        InputEvent::Lead(LeadEvent {
            consent: Some(crate::events::Consent {
                email,
                sms,
                recorded_at: recorded,
                source: format!("form-{n}"),
            }),
            ..LeadEvent::update(format!("{id}-u{n}"), id.into(), T0 + n as Millis * 1000)
        })
    };
    let events = [
        created(id, T0),
        // The same consent stated again later changes nothing.
        statement(1, Some(true), Some(true), T0 + 1000),
        interaction(id, 1, InteractionKind::Unsubscribe, T0 + 2000, "sms"),
        // Recorded before the unsubscribe, arriving after it: not a change.
        statement(3, None, Some(true), T0 + 1500),
        statement(4, None, Some(true), T0 + 4000),
        interaction(id, 2, InteractionKind::Bounce, T0 + 5000, "email"),
        interaction(id, 3, InteractionKind::Bounce, T0 + 6000, "email"),
    ];
    let state = apply_all(&events, &scoring);
    let ledger: Vec<(Millis, Channel, bool, ConsentChangeKind, &str)> = state
        .consent_ledger
        .iter()
        .map(|c| {
            (
                c.recorded_at - T0,
                c.channel,
                c.granted,
                c.kind,
                c.event_id.as_str(),
            )
        })
        .collect();
    use ConsentChangeKind::*;
    assert_eq!(
        ledger,
        [
            (0, Channel::Email, true, Statement, "CONSENT-1-created"),
            (0, Channel::Sms, true, Statement, "CONSENT-1-created"),
            (1000, Channel::Email, true, Statement, "CONSENT-1-u1"),
            (1000, Channel::Sms, true, Statement, "CONSENT-1-u1"),
            (1500, Channel::Sms, true, Statement, "CONSENT-1-u3"),
            (2000, Channel::Sms, false, Unsubscribe, "CONSENT-1-i1"),
            (4000, Channel::Sms, true, Statement, "CONSENT-1-u4"),
            (5000, Channel::Email, false, Bounce, "CONSENT-1-i2"),
        ]
    );
    assert_eq!(state.consent_ledger[6].source, "form-4");
    let granted = |c: &Option<ChannelConsent>| c.as_ref().map(|c| c.granted);
    assert_eq!(
        crate::core::state::ConsentState::from_ledger(&state.consent_ledger),
        (granted(&state.consent.email), granted(&state.consent.sms))
    );
    // Whatever order the statements arrive in (the three topics interleave
    // as they will), the ledger is the same.
    let mut reversed = events.to_vec();
    reversed.reverse();
    assert_eq!(
        apply_all(&reversed, &scoring).consent_ledger,
        state.consent_ledger
    );
    // The same statement again (another event, the same consent) adds nothing.
    let restated = InputEvent::Lead(LeadEvent {
        consent: Some(crate::events::Consent {
            email: None,
            sms: Some(true),
            recorded_at: T0 + 4000,
            source: "form-4".into(),
        }),
        ..LeadEvent::update(format!("{id}-u10"), id.into(), T0 + 10_000)
    });
    let again = apply(Some(state.clone()), &restated, &ctx(&scoring)).state;
    assert_eq!(again.consent_ledger, state.consent_ledger);
    // A delivery bounce after the first bounce adds nothing; an earlier one
    // replaces it.
    let delivery = InputEvent::Delivery(testing::delivery(
        "m-1",
        id,
        DeliveryStatus::Bounced,
        T0 + 7000,
    ));
    let after = apply(Some(state.clone()), &delivery, &ctx(&scoring)).state;
    assert_eq!(after.consent_ledger, state.consent_ledger);
    let early = InputEvent::Delivery(testing::delivery(
        "m-0",
        id,
        DeliveryStatus::Bounced,
        T0 + 4500,
    ));
    let after = apply(Some(state.clone()), &early, &ctx(&scoring)).state;
    let bounces: Vec<Millis> = after
        .consent_ledger
        .iter()
        .filter(|c| c.kind == Bounce)
        .map(|c| c.recorded_at - T0)
        .collect();
    assert_eq!(bounces, [4500]);
}

#[test]
fn a_conditional_erasure_keeps_a_lead_active_since_its_condition() {
    let scoring = Scoring::default();
    let (lead, _) = personal_lead("GDPR-5", &scoring);
    let conditional = |n: u32, since: Millis| {
        let mut e = LeadEvent::erasure(
            format!("GDPR-5-retention{n}"),
            "GDPR-5".into(),
            T0 + 90 * MILLIS_PER_DAY,
        );
        e.attributes
            .insert(ERASE_IF_INACTIVE_SINCE.into(), since.to_string());
        InputEvent::Lead(e)
    };
    // The lead's latest event is after the condition's time: kept, as it was.
    let kept = apply(
        Some(lead.clone()),
        &conditional(1, lead.updated_at - 1),
        &ctx(&scoring),
    );
    assert!(!kept.erased && kept.outputs.is_empty());
    assert_eq!(kept.state.email, lead.email);
    assert!(kept.state.erased_at.is_none());
    // Nothing since: erased.
    let erased = apply(
        Some(lead.clone()),
        &conditional(2, lead.updated_at),
        &ctx(&scoring),
    );
    assert!(erased.erased);
    assert_eq!(erased.state.erased_at, Some(T0 + 90 * MILLIS_PER_DAY));
}
