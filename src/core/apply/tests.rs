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
