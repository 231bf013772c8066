//! One generic suite for the lead state store, run against PostgreSQL and SQLite.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use leadflow::core::state::{
    ChannelConsent, InteractionStats, LeadState, ScoreSnapshot, StageTransition,
};
use leadflow::events::{InteractionKind, Segment, Stage};
use leadflow::store::prelude::*;
use leadflow::store::{
    AuditRecord, BatchWrite, DeliveryClaim, DeliveryOutcome, ErasureWrite, ForecastRecord,
    LeadStore, LeadWrite, NewOutboxRow, OffsetAdvance, PartitionOffset, StoreError,
};

fn full_state(id: &str) -> LeadState {
    let mut s = LeadState::new(id);
    s.created_at = Some(1_700_000_000_000);
    s.updated_at = 1_700_000_500_000;
    s.email = Some(format!("{}@example.com", id.to_lowercase()));
    s.phone = Some("+34600000000".into());
    s.first_name = Some("María".into());
    s.last_name = Some("Núñez".into());
    s.company = Some("Cumbre S.L.".into());
    s.source = Some("referral".into());
    s.owner = Some("rep-03".into());
    s.timezone = Some("Europe/Madrid".into());
    s.estimated_value = Some(42_000.5);
    s.probability = Some(0.35);
    s.provided_initial_score = Some(61.0);
    s.consent.email = Some(ChannelConsent {
        granted: true,
        recorded_at: 1_700_000_000_000,
        source: "web_form:pricing".into(),
    });
    s.consent.sms = Some(ChannelConsent {
        granted: false,
        recorded_at: 1_700_000_100_000,
        source: "unsubscribe:e-9".into(),
    });
    s.stage = Stage::Qualified;
    s.stage_entered_at = Some(1_700_000_400_000);
    s.stage_history = vec![
        StageTransition {
            from: Some(Stage::New),
            to: Stage::Contacted,
            at: 1_700_000_200_000,
            owner: Some("rep-03".into()),
            deal_value: None,
            event_id: "e-2".into(),
        },
        StageTransition {
            from: Some(Stage::Contacted),
            to: Stage::Qualified,
            at: 1_700_000_400_000,
            owner: Some("rep-03".into()),
            deal_value: None,
            event_id: "e-3".into(),
        },
    ];
    s.first_contact_at = Some(1_700_000_200_000);
    s.last_contact_at = Some(1_700_000_300_000);
    s.interactions.insert(
        InteractionKind::Call,
        InteractionStats {
            count: 2,
            first_at: 1_700_000_200_000,
            last_at: 1_700_000_300_000,
        },
    );
    s.engagement.add(12.0, 1_700_000_300_000, 14.0);
    s.attributes = BTreeMap::from([("industry".into(), "software".into())]);
    s.score = Some(ScoreSnapshot {
        initial_score: 61.0,
        final_score: 61.0,
        segment: Segment::HighPriority,
        computed_at: 1_700_000_400_000,
        ml_score: Some(48.25),
        model_version: Some("3".into()),
    });
    let mut before_close = s.clone();
    before_close.stage = Stage::Negotiation;
    s.pre_close = Some(Box::new(before_close));
    s.recent_event_ids = ["e-1", "e-2", "e-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    s.events_applied = 3;
    s
}

async fn state_round_trips_field_by_field<S: LeadStore>(store: Arc<S>, _url: &str) {
    let lead = full_state("REF-000001");
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&lead, 0)],
            ..Default::default()
        })
        .await
        .unwrap();
    let loaded = store.get_lead("REF-000001").await.unwrap().expect("stored");
    assert_eq!(loaded, lead);
    assert_eq!(store.get_lead("REF-404").await.unwrap(), None);
}

/// A batch of group `g` that writes `leads` (partition 0) and moves `offsets`.
fn lead_batch<'a>(
    leads: impl IntoIterator<Item = &'a LeadState>,
    offsets: Vec<OffsetAdvance>,
) -> BatchWrite<'a> {
    BatchWrite {
        consumer_group: "g",
        leads: leads.into_iter().map(|l| LeadWrite::new(l, 0)).collect(),
        offsets,
        ..Default::default()
    }
}

fn advance(partition: i32, from: Option<i64>, to: i64) -> OffsetAdvance {
    OffsetAdvance {
        topic: "leads".into(),
        partition,
        from,
        to,
    }
}

async fn commit_overwrites_and_fences_offsets<S: LeadStore>(store: Arc<S>, _url: &str) {
    let mut lead = full_state("WEB-1");
    store
        .commit_batch(&lead_batch(
            [&lead],
            vec![advance(0, None, 10), advance(1, None, 7)],
        ))
        .await
        .unwrap();
    lead.stage = Stage::ClosedWon;
    lead.events_applied = 9;
    store
        .commit_batch(&lead_batch([&lead], vec![advance(0, Some(10), 25)]))
        .await
        .unwrap();
    let loaded = store.get_lead("WEB-1").await.unwrap().unwrap();
    assert_eq!(loaded.stage, Stage::ClosedWon);
    assert_eq!(loaded.events_applied, 9);
    assert_eq!(store.lead_count().await.unwrap(), 1);
    let expected = vec![
        PartitionOffset {
            topic: "leads".into(),
            partition: 0,
            next_offset: 25,
        },
        PartitionOffset {
            topic: "leads".into(),
            partition: 1,
            next_offset: 7,
        },
    ];
    assert_eq!(store.partition_offsets("g").await.unwrap(), expected);
    assert!(store
        .partition_offsets("other-group")
        .await
        .unwrap()
        .is_empty());

    // A stale instance (it believes partition 0 is still at 10) is fenced,
    // and nothing of its batch is written: not the lead, not partition 1.
    let mut stale = lead.clone();
    stale.stage = Stage::ClosedLost;
    let err = store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&stale, 0)],
            offsets: vec![advance(1, Some(7), 9), advance(0, Some(10), 30)],
            outbox: vec![outbox_row("o-stale", 0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced {
                partition: 0,
                expected: Some(10),
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        store.get_lead("WEB-1").await.unwrap().unwrap().stage,
        Stage::ClosedWon
    );
    assert_eq!(store.partition_offsets("g").await.unwrap(), expected);
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    // Creating a row another instance already created is fenced too.
    let err = store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            offsets: vec![advance(1, None, 3)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced {
                partition: 1,
                expected: None,
                ..
            }
        ),
        "{err}"
    );
}

fn outbox_row(id: &str, partition: i32) -> NewOutboxRow {
    NewOutboxRow {
        output_id: id.into(),
        topic: "lead-scores".into(),
        key: format!("lead-{id}"),
        payload: format!("{{\"id\":\"{id}\"}}"),
        source_partition: partition,
        created_at: 1_700_000_000_000,
    }
}

async fn outbox_keeps_order_per_partition_and_ignores_repeats<S: LeadStore>(
    store: Arc<S>,
    _url: &str,
) {
    let rows = vec![
        outbox_row("a", 0),
        outbox_row("b", 1),
        outbox_row("c", 0),
        outbox_row("d", 2),
    ];
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            outbox: rows.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The same output ids again (a re-applied batch) add nothing.
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            outbox: vec![outbox_row("c", 0)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 4);
    let pending = store.outbox_pending(&[0, 2], 10).await.unwrap();
    let ids: Vec<&str> = pending.iter().map(|e| e.output_id.as_str()).collect();
    assert_eq!(ids, ["a", "c", "d"]);
    assert_eq!(pending[0].key, "lead-a");
    assert_eq!(pending[0].payload, "{\"id\":\"a\"}");
    assert_eq!(pending[0].topic, "lead-scores");
    assert_eq!(
        store.outbox_pending(&[0], 1).await.unwrap()[0].output_id,
        "a"
    );
    assert!(store.outbox_pending(&[], 10).await.unwrap().is_empty());
    store
        .outbox_delete(&[pending[0].seq, pending[2].seq])
        .await
        .unwrap();
    let left: Vec<String> = store
        .outbox_pending(&[0, 1, 2], 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.output_id)
        .collect();
    assert_eq!(left, ["b", "c"]);
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
}

async fn loads_only_existing_leads_in_large_batches<S: LeadStore>(store: Arc<S>, _url: &str) {
    let leads: Vec<LeadState> = (0..1_203)
        .map(|i| full_state(&format!("L-{i:05}")))
        .collect();
    store
        .commit_batch(&lead_batch(&leads, vec![]))
        .await
        .unwrap();
    let mut ids: Vec<String> = (0..1_203).step_by(2).map(|i| format!("L-{i:05}")).collect();
    ids.push("L-missing".into());
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let loaded = store.load_leads(&refs).await.unwrap();
    assert_eq!(loaded.len(), 602);
    assert_eq!(loaded["L-01202"], leads[1202]);
    assert!(!loaded.contains_key("L-00001"));
    assert!(!loaded.contains_key("L-missing"));

    let page = store.list_leads("", 3).await.unwrap();
    let page_ids: Vec<&str> = page.iter().map(|l| l.lead_ext_id.as_str()).collect();
    assert_eq!(page_ids, ["L-00000", "L-00001", "L-00002"]);
    assert_eq!(page[0].stage, "qualified");
    assert_eq!(page[0].segment.as_deref(), Some("high_priority"));
    assert_eq!(page[0].final_score, Some(61.0));
    let next = store.list_leads("L-00002", 1).await.unwrap();
    assert_eq!(next[0].lead_ext_id, "L-00003");
}

async fn migrations_are_idempotent<S: LeadStore>(store: Arc<S>, _url: &str) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.lead_count().await.unwrap(), 0);
}

/// The timer index: due timers of the asked partitions only, earliest
/// first; a fired timer's write only over the timer that was read; an
/// offset "advance" to the same offset only checks ownership.
async fn timers_are_found_by_partition_and_fired_once<S: LeadStore>(store: Arc<S>, _url: &str) {
    let mut leads = Vec::new();
    for (i, (partition, timer)) in [
        (0, Some(300)),
        (0, Some(100)),
        (1, Some(50)),
        (0, None),
        (0, Some(900)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut lead = full_state(&format!("T-{i}"));
        lead.nurture.timer = timer;
        leads.push((partition, lead));
    }
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: leads.iter().map(|(p, l)| LeadWrite::new(l, *p)).collect(),
            offsets: vec![advance(0, None, 5)],
            ..Default::default()
        })
        .await
        .unwrap();
    let due = |partitions: Vec<i32>, until: i64, limit: i64| {
        let store = store.clone();
        async move {
            store
                .due_timers(&partitions, until, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|(p, l)| (p, l.lead_ext_id))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        due(vec![0], 500, 10).await,
        [(0, "T-1".to_string()), (0, "T-0".to_string())]
    );
    assert_eq!(
        due(vec![0, 1], 500, 2).await,
        [(1, "T-2".to_string()), (0, "T-1".to_string())]
    );
    assert!(due(vec![2], i64::MAX, 10).await.is_empty());
    assert_eq!(
        store.partition_stream_time(0).await.unwrap(),
        Some(1_700_000_500_000)
    );
    assert_eq!(store.partition_stream_time(7).await.unwrap(), None);

    // Fire T-1 (timer 100 → 700), checking that partition 0 is still ours.
    let mut fired = leads[1].1.clone();
    fired.nurture.timer = Some(700);
    let write = LeadWrite {
        expect_timer: Some(100),
        ..LeadWrite::new(&fired, 0)
    };
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![write],
            offsets: vec![advance(0, Some(5), 5)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(due(vec![0], 500, 10).await, [(0, "T-0".to_string())]);
    // A second instance that read the same timer cannot fire it again.
    let err = store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![write],
            outbox: vec![outbox_row("twice", 0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TimerTaken { ref lead } if lead == "T-1"),
        "{err}"
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 0, "rolled back");
    // Nor can an instance whose view of the partition's offset is stale.
    let err = store
        .commit_batch(&lead_batch([&fired], vec![advance(0, Some(4), 4)]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
}

async fn experiment_members_are_counted_per_variant<S: LeadStore>(store: Arc<S>, _url: &str) {
    use leadflow::core::state::Membership;
    let member = |variant: &str, replied: bool, won: bool| Membership {
        variant: variant.into(),
        enrolled_at: 10,
        replied_at: replied.then_some(20),
        converted_at: won.then_some(30),
    };
    let plan = [
        ("A-1", "control", false, false),
        ("A-2", "control", true, false),
        ("A-3", "control", true, true),
        ("A-4", "story", true, true),
    ];
    let mut leads = Vec::new();
    for (id, variant, replied, won) in plan {
        let mut lead = full_state(id);
        lead.nurture
            .experiments
            .insert("exp".into(), member(variant, replied, won));
        lead.nurture
            .experiments
            .insert("other".into(), member("x", false, false));
        leads.push(lead);
    }
    let commit = |leads: Vec<LeadState>| {
        let store = store.clone();
        async move {
            store
                .commit_batch(&lead_batch(&leads, vec![]))
                .await
                .unwrap()
        }
    };
    commit(leads.clone()).await;
    // Rewriting a lead replaces its rows: A-1 replies later.
    leads[0]
        .nurture
        .experiments
        .insert("exp".into(), member("control", true, false));
    commit(vec![leads[0].clone()]).await;
    let counts: Vec<(String, String, i64, i64, i64)> = store
        .experiment_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.experiment, c.variant, c.enrolled, c.replied, c.converted))
        .collect();
    assert_eq!(
        counts,
        [
            ("exp".into(), "control".into(), 3, 3, 1),
            ("exp".into(), "story".into(), 1, 1, 1),
            ("other".into(), "x".into(), 4, 0, 0),
        ]
    );
}

fn forecast(id: &str, at: i64, scheduled: bool) -> ForecastRecord {
    ForecastRecord {
        forecast_id: id.into(),
        kind: "pipeline_value".into(),
        generated_at: at,
        horizon_days: 30,
        confidence: 0.8,
        model_version: None,
        leads_counted: 12,
        event: format!("{{\"forecast_id\":\"{id}\"}}"),
        detail: "{}".into(),
        scheduled,
    }
}

async fn forecasts_are_stored_and_queued_once<S: LeadStore>(store: Arc<S>, _url: &str) {
    assert_eq!(store.last_scheduled_forecast().await.unwrap(), None);
    assert_eq!(store.earliest_creation().await.unwrap(), None);
    let made = |id: &str, at: i64, scheduled: bool, offsets: Vec<OffsetAdvance>| BatchWrite {
        consumer_group: "g",
        offsets,
        outbox: vec![outbox_row(id, 0)],
        forecasts: vec![forecast(id, at, scheduled)],
        ..Default::default()
    };
    store
        .commit_batch(&lead_batch([], vec![advance(0, None, 5)]))
        .await
        .unwrap();
    store
        .commit_batch(&made("F-1", 1_000, true, vec![advance(0, Some(5), 5)]))
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    let pending = store.outbox_pending(&[0], 10).await.unwrap();
    store.outbox_delete(&[pending[0].seq]).await.unwrap();
    // Made again after it was published (a restart before the schedule
    // moved on): neither stored nor queued a second time.
    store
        .commit_batch(&made("F-1", 1_000, true, vec![advance(0, Some(5), 5)]))
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    // A zombie that believes partition 0 is elsewhere stores nothing.
    let err = store
        .commit_batch(&made("F-2", 2_000, true, vec![advance(0, Some(4), 4)]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(!store.forecast_stored("F-2").await.unwrap());
    // On demand, later: listed, but the schedule goes on from its own.
    store
        .commit_batch(&made("F-3", 9_000, false, Vec::new()))
        .await
        .unwrap();
    assert!(store.forecast_stored("F-1").await.unwrap());
    assert_eq!(store.last_scheduled_forecast().await.unwrap(), Some(1_000));
    let listed = store.forecasts(None, 10).await.unwrap();
    assert_eq!(
        listed,
        vec![forecast("F-3", 9_000, false), forecast("F-1", 1_000, true)]
    );
    let mut lead = full_state("WEB-9");
    lead.created_at = Some(777);
    store
        .commit_batch(&lead_batch([&lead], Vec::new()))
        .await
        .unwrap();
    assert_eq!(store.earliest_creation().await.unwrap(), Some(777));
}

/// A lead's creation and stage changes become rows with the batch that
/// applied them; a later batch adds only the changes the store lacks, and a
/// batch that rolls back adds none.
async fn stage_transitions_are_rows_written_with_their_batch<S: LeadStore>(
    store: Arc<S>,
    _url: &str,
) {
    let mut lead = full_state("WEB-7");
    let changes = std::mem::take(&mut lead.stage_history);
    lead.stage = Stage::New;
    fn write(
        lead: &LeadState,
        creation_stored: bool,
        stored_changes: usize,
        offsets: Vec<OffsetAdvance>,
    ) -> BatchWrite<'_> {
        let mut w = LeadWrite::new(lead, 0);
        w.creation_stored = creation_stored;
        w.stored_changes = stored_changes;
        BatchWrite {
            consumer_group: "g",
            leads: vec![w],
            offsets,
            ..Default::default()
        }
    }
    store
        .commit_batch(&write(&lead, false, 0, vec![advance(0, None, 1)]))
        .await
        .unwrap();
    let rows = store.transitions(Some("WEB-7")).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_funnel_place(store.as_ref(), Some((0, false))).await;
    assert_eq!(
        (
            rows[0].seq,
            rows[0].from_stage.as_deref(),
            rows[0].to_stage.as_str()
        ),
        (0, None, "new")
    );
    assert_eq!(rows[0].at, 1_700_000_000_000);
    assert_eq!(rows[0].source.as_deref(), Some("referral"));
    assert_eq!(rows[0].value, Some(42_000.5));
    // Both changes in one later batch.
    lead.stage_history = changes.clone();
    lead.stage = Stage::Qualified;
    store
        .commit_batch(&write(&lead, true, 0, vec![advance(0, Some(1), 2)]))
        .await
        .unwrap();
    assert_funnel_place(store.as_ref(), Some((2, false))).await;
    // A zombie's batch with a third change rolls back: no row.
    let mut third = lead.clone();
    third.stage_history.push(StageTransition {
        from: Some(Stage::Qualified),
        to: Stage::ClosedWon,
        at: 1_700_000_900_000,
        owner: None,
        deal_value: Some(50_000.0),
        event_id: "e-4".into(),
    });
    let err = store
        .commit_batch(&write(&third, true, 2, vec![advance(0, Some(1), 3)]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_funnel_place(store.as_ref(), Some((2, false))).await;
    let rows = store.transitions(None).await.unwrap();
    type Seen<'a> = (i32, Option<&'a str>, &'a str, i64, Option<&'a str>);
    let seen: Vec<Seen> = rows
        .iter()
        .map(|r| {
            (
                r.seq,
                r.from_stage.as_deref(),
                r.to_stage.as_str(),
                r.at,
                r.event_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, None, "new", 1_700_000_000_000, None),
            (1, Some("new"), "contacted", 1_700_000_200_000, Some("e-2")),
            (
                2,
                Some("contacted"),
                "qualified",
                1_700_000_400_000,
                Some("e-3")
            ),
        ]
    );
    // The owner's batch with it: the close and its deal value.
    store
        .commit_batch(&write(&third, true, 2, vec![advance(0, Some(2), 3)]))
        .await
        .unwrap();
    let rows = store.transitions(Some("WEB-7")).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].to_stage, "closed_won");
    assert_eq!(rows[3].value, Some(50_000.0));
    // The owner falls back to the lead's when the change names none.
    assert_eq!(rows[3].owner.as_deref(), Some("rep-03"));
    assert!(store.transitions(Some("WEB-8")).await.unwrap().is_empty());
    assert_funnel_place(store.as_ref(), Some((5, false))).await;
}

/// The funnel counts of WEB-7 (created at 1_700_000_000_000, the only
/// lead) over periods of whole days, counted from the day buckets, and over
/// periods that cut a day, counted lead by lead: `(furthest step, lost)`,
/// or none for a period it was not created in.
async fn assert_funnel_place<S: LeadStore>(store: &S, place: Option<(i32, bool)>) {
    const CREATED: i64 = 1_700_000_000_000;
    const DAY: i64 = 86_400_000;
    let day_start = CREATED - CREATED % DAY;
    let holding = [
        (i64::MIN, i64::MAX),
        (day_start, day_start + DAY),
        (day_start - 3 * DAY, day_start + 2 * DAY),
        (CREATED, CREATED + 1),
        (CREATED - 5, day_start + 4 * DAY + 7),
        (day_start - 2 * DAY + 9, CREATED + 1),
    ];
    let not_holding = [
        (day_start + DAY, i64::MAX),
        (i64::MIN, day_start),
        (CREATED + 1, day_start + DAY),
        (day_start - 2 * DAY + 9, CREATED),
    ];
    for (from, until) in holding {
        let counts: Vec<(i32, bool, i64)> = store
            .furthest_stages(from, until)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.furthest, c.lost, c.leads))
            .collect();
        let expected: Vec<_> = place.into_iter().map(|(f, l)| (f, l, 1)).collect();
        assert_eq!(counts, expected, "[{from}, {until})");
    }
    for (from, until) in not_holding {
        let counts = store.furthest_stages(from, until).await.unwrap();
        assert!(counts.is_empty(), "[{from}, {until}): {counts:?}");
    }
}

/// Migrations 0011 and 0012 fill the funnel's tables from the transition
/// rows a store already holds: run again over the same rows, they give the
/// counts the commit path kept, over whole days and cut ones.
async fn the_funnel_tables_are_backfilled_from_the_transitions<S: LeadStore>(
    store: Arc<S>,
    url: &str,
) {
    const DAY: i64 = 86_400_000;
    let start = 1_700_000_000_000 - 1_700_000_000_000 % DAY;
    // Twelve leads over four days, each a little further along the funnel.
    let ladder = [
        Stage::Contacted,
        Stage::Qualified,
        Stage::Proposal,
        Stage::Negotiation,
        Stage::ClosedWon,
    ];
    let mut leads = Vec::new();
    for i in 0..12i64 {
        let mut lead = full_state(&format!("WEB-{i}"));
        let created = start + (i % 4) * DAY + i * 3_600_000;
        lead.created_at = Some(created);
        lead.stage_history.clear();
        lead.stage = Stage::New;
        for (k, to) in ladder.iter().take((i % 6) as usize).enumerate() {
            lead.stage_history.push(StageTransition {
                from: Some(lead.stage),
                to: *to,
                at: created + (k as i64 + 1) * 60_000,
                owner: None,
                deal_value: None,
                event_id: format!("e-{i}-{k}"),
            });
            lead.stage = *to;
        }
        if i % 5 == 4 {
            lead.stage_history.push(StageTransition {
                from: Some(lead.stage),
                to: Stage::ClosedLost,
                at: created + DAY,
                owner: None,
                deal_value: None,
                event_id: format!("e-{i}-lost"),
            });
            lead.stage = Stage::ClosedLost;
        }
        leads.push(lead);
    }
    // Half the leads first, created with none of their changes; then every
    // lead with all of them.
    let created_only: Vec<LeadState> = leads[..6]
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.stage_history.clear();
            l.stage = Stage::New;
            l
        })
        .collect();
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: created_only.iter().map(|l| LeadWrite::new(l, 0)).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let writes = leads
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut w = LeadWrite::new(l, 0);
            w.creation_stored = i < 6;
            w
        })
        .collect();
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: writes,
            ..Default::default()
        })
        .await
        .unwrap();
    let periods = [
        (i64::MIN, i64::MAX),
        (start + DAY, start + 3 * DAY),
        (start + 2 * 3_600_000, start + 2 * DAY + 5),
        (start - DAY, start + DAY / 2),
    ];
    let mut kept = Vec::new();
    for (from, until) in periods {
        kept.push(store.furthest_stages(from, until).await.unwrap());
    }
    let all: i64 = kept[0].iter().map(|c| c.leads).sum();
    assert_eq!(all, 12, "{:?}", kept[0]);
    assert!(kept[0].iter().any(|c| c.lost), "{:?}", kept[0]);
    assert!(kept[0].iter().any(|c| c.furthest == 5), "{:?}", kept[0]);
    for sql in [
        "DROP TABLE lead_funnel_days",
        "DROP TABLE lead_funnel",
        "DELETE FROM _sqlx_migrations WHERE version IN (11, 12)",
    ] {
        common::execute_sql(url, sql).await;
    }
    store.migrate().await.unwrap();
    for ((from, until), kept) in periods.into_iter().zip(kept) {
        let backfilled = store.furthest_stages(from, until).await.unwrap();
        assert_eq!(backfilled, kept, "[{from}, {until})");
    }
}

/// A message of `lead` to hash-of-ana in the delivery ledger, sent.
async fn record_sent<S: LeadStore>(store: &S, message_id: &str, lead: &str) {
    let claim = DeliveryClaim {
        message_id,
        lead_ext_id: lead,
        channel: "email",
        template: "premium_welcome",
        recipient_hash: "hash-of-ana",
        owner: "w1",
        now: 1_000,
        lease_ms: 60_000,
    };
    store.claim_delivery(&claim).await.unwrap();
    let outcome = DeliveryOutcome {
        message_id,
        owner: "w1",
        status: "sent",
        provider_message_id: Some("sg-1"),
        reason: Some("250 ok to ana@example.com"),
        attempts: 1,
        now: 2_000,
    };
    assert!(store.finish_delivery(&outcome).await.unwrap());
}

/// An erasure's batch drops the lead's unpublished scores and messages
/// (not another lead's, not a forecast that happens to share the key),
/// forgets the recipient in the delivery ledger but keeps its row, and
/// audits itself; its own tombstone row, written after, stays.
async fn an_erasure_drops_the_leads_unpublished_outputs_and_ledger_traces<S: LeadStore>(
    store: Arc<S>,
    _url: &str,
) {
    let lead = full_state("ERASE-1");
    let row = |id: &str, topic: &str, key: &str| NewOutboxRow {
        topic: topic.into(),
        key: key.into(),
        ..outbox_row(id, 0)
    };
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&lead, 0)],
            outbox: vec![
                row("score-1", "lead-scores", "ERASE-1"),
                row("message-1", "outbound-messages", "ERASE-1"),
                row("score-other", "lead-scores", "ERASE-2"),
                row("forecast-1", "lead-forecasts", "ERASE-1"),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    record_sent(store.as_ref(), "m-erased", "ERASE-1").await;
    record_sent(store.as_ref(), "m-kept", "ERASE-2").await;

    let tombstone = lead.tombstone(5_000);
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&tombstone, 0)],
            outbox: vec![row("tombstone-1", "lead-scores", "ERASE-1")],
            erasures: vec![ErasureWrite {
                lead_ext_id: "ERASE-1",
                at: 5_000,
                event_id: "erase-1",
                outbox_topics: ["lead-scores", "outbound-messages"],
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let pending: Vec<String> = store
        .outbox_pending(&[0], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.output_id)
        .collect();
    assert_eq!(pending, ["score-other", "forecast-1", "tombstone-1"]);
    let stored = store.get_lead("ERASE-1").await.unwrap().unwrap();
    assert_eq!(stored, tombstone);
    assert_eq!(stored.email, None);
    // Erased leads are neither counted nor listed.
    assert_eq!(store.lead_count().await.unwrap(), 0);
    assert!(store.list_leads("", 10).await.unwrap().is_empty());
    let ledger = store.lead_deliveries("ERASE-1").await.unwrap();
    assert_eq!(ledger.len(), 1, "the row stays: a message id is sent once");
    assert_eq!(
        (ledger[0].status.as_str(), ledger[0].reason.as_deref()),
        ("sent", None)
    );
    // The other lead shares the hash here, so one send is left under it.
    assert_eq!(store.recipient_sends("hash-of-ana", 0).await.unwrap(), 1);
    let kept = store.lead_deliveries("ERASE-2").await.unwrap();
    assert_eq!(kept[0].reason.as_deref(), Some("250 ok to ana@example.com"));
    assert_eq!(
        store.audit_of("ERASE-1").await.unwrap(),
        [AuditRecord {
            action: "erased".into(),
            lead_ext_id: "ERASE-1".into(),
            at: 5_000,
            actor: "processor".into(),
            reason: None,
            event_id: Some("erase-1".into()),
        }]
    );
}

/// A lead's data key is made once (a second offer keeps the first), read
/// back by lead, shredded by the erasure's batch (a later offer does not
/// bring one back), and forgotten when the erased lead starts anew.
async fn lead_keys_are_made_once_and_shredded_by_the_erasure<S: LeadStore>(
    store: Arc<S>,
    _url: &str,
) {
    let offer = |lead: &str, key: &str| vec![(lead.to_string(), key.to_string())];
    let first = store
        .ensure_lead_keys(&offer("K-1", "v1:a:one"), 10)
        .await
        .unwrap();
    assert_eq!(first["K-1"].as_deref(), Some("v1:a:one"));
    let again = store
        .ensure_lead_keys(&offer("K-1", "v1:a:two"), 20)
        .await
        .unwrap();
    assert_eq!(again["K-1"].as_deref(), Some("v1:a:one"));
    let read = store.lead_keys(&["K-1", "K-404"]).await.unwrap();
    assert_eq!(read.len(), 1);

    let lead = full_state("K-1");
    let tombstone = lead.tombstone(30);
    let erase = |state| BatchWrite {
        consumer_group: "g",
        leads: vec![LeadWrite::new(state, 0)],
        erasures: vec![ErasureWrite {
            lead_ext_id: "K-1",
            at: 30,
            event_id: "erase",
            outbox_topics: ["lead-scores", "outbound-messages"],
        }],
        ..Default::default()
    };
    store.commit_batch(&erase(&tombstone)).await.unwrap();
    assert_eq!(store.lead_keys(&["K-1"]).await.unwrap()["K-1"], None);
    let offered = store
        .ensure_lead_keys(&offer("K-1", "v1:a:three"), 40)
        .await
        .unwrap();
    assert_eq!(offered["K-1"], None, "a shredded key does not come back");
    // An erased lead with no key yet gets a shredded row all the same.
    let other = LeadState::new("K-2").tombstone(30);
    store
        .commit_batch(&BatchWrite {
            erasures: vec![ErasureWrite {
                lead_ext_id: "K-2",
                ..erase(&other).erasures[0]
            }],
            ..erase(&other)
        })
        .await
        .unwrap();
    assert_eq!(store.lead_keys(&["K-2"]).await.unwrap()["K-2"], None);
    // Started anew: the shredded row goes, a new key can be made.
    let mut back = LeadState::new("K-1");
    back.email = Some("back@example.com".into());
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&back, 0)],
            revived: vec!["K-1"],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.lead_keys(&["K-1"]).await.unwrap().is_empty());
    let fresh = store
        .ensure_lead_keys(&offer("K-1", "v1:a:four"), 50)
        .await
        .unwrap();
    assert_eq!(fresh["K-1"].as_deref(), Some("v1:a:four"));
}

backend_tests!(
    lead_keys_are_made_once_and_shredded_by_the_erasure,
    an_erasure_drops_the_leads_unpublished_outputs_and_ledger_traces,
    the_funnel_tables_are_backfilled_from_the_transitions,
    stage_transitions_are_rows_written_with_their_batch,
    forecasts_are_stored_and_queued_once,
    timers_are_found_by_partition_and_fired_once,
    experiment_members_are_counted_per_variant,
    state_round_trips_field_by_field,
    commit_overwrites_and_fences_offsets,
    outbox_keeps_order_per_partition_and_ignores_repeats,
    loads_only_existing_leads_in_large_batches,
    migrations_are_idempotent,
);

/// PostgreSQL refuses a NUL in text (SQLSTATE 22021). That is a property
/// of the data, not an outage: it must never be retried as one (its code
/// once passed the SQLite BUSY test, 22021 & 0xff = 5, and the processor
/// retried the batch forever). Events with a NUL never get this far: the
/// codec dead-letters them on both stores.
#[tokio::test]
async fn a_nul_in_text_is_a_permanent_error_on_postgres() {
    let db = common::TestPg::new().await;
    let store = db.store().await;
    let mut state = LeadState::new("NUL-1");
    state.owner = Some("rep\0one".into());
    let err = store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![LeadWrite::new(&state, 0)],
            ..Default::default()
        })
        .await
        .expect_err("PostgreSQL refuses a NUL in text");
    assert!(!err.is_transient(), "{err}");
}
