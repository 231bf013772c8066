//! One generic suite for the lead state store, run against PostgreSQL and SQLite.

mod common;

use std::collections::BTreeMap;

use leadflow::events::{InteractionKind, Segment, Stage};
use leadflow::lead::{ChannelConsent, InteractionStats, LeadState, ScoreSnapshot, StageTransition};
use leadflow::store::{BatchWrite, LeadStore, PartitionOffset};

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
    });
    s.recent_event_ids = ["e-1", "e-2", "e-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    s.events_applied = 3;
    s
}

async fn state_round_trips_field_by_field<S: LeadStore>(store: &S, _url: &str) {
    let lead = full_state("REF-000001");
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![&lead],
            offsets: vec![],
        })
        .await
        .unwrap();
    let loaded = store.get_lead("REF-000001").await.unwrap().expect("stored");
    assert_eq!(loaded, lead);
    assert_eq!(store.get_lead("REF-404").await.unwrap(), None);
}

async fn commit_overwrites_and_keeps_offsets<S: LeadStore>(store: &S, _url: &str) {
    let mut lead = full_state("WEB-1");
    let offsets = vec![
        PartitionOffset {
            topic: "leads".into(),
            partition: 0,
            next_offset: 10,
        },
        PartitionOffset {
            topic: "leads".into(),
            partition: 1,
            next_offset: 7,
        },
    ];
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![&lead],
            offsets,
        })
        .await
        .unwrap();
    lead.stage = Stage::ClosedWon;
    lead.events_applied = 9;
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: vec![&lead],
            offsets: vec![PartitionOffset {
                topic: "leads".into(),
                partition: 0,
                next_offset: 25,
            }],
        })
        .await
        .unwrap();
    let loaded = store.get_lead("WEB-1").await.unwrap().unwrap();
    assert_eq!(loaded.stage, Stage::ClosedWon);
    assert_eq!(loaded.events_applied, 9);
    assert_eq!(store.lead_count().await.unwrap(), 1);
    assert_eq!(
        store.partition_offsets("g").await.unwrap(),
        vec![
            PartitionOffset {
                topic: "leads".into(),
                partition: 0,
                next_offset: 25
            },
            PartitionOffset {
                topic: "leads".into(),
                partition: 1,
                next_offset: 7
            },
        ]
    );
    assert!(store
        .partition_offsets("other-group")
        .await
        .unwrap()
        .is_empty());
}

async fn loads_only_existing_leads_in_large_batches<S: LeadStore>(store: &S, _url: &str) {
    let leads: Vec<LeadState> = (0..1_203)
        .map(|i| full_state(&format!("L-{i:05}")))
        .collect();
    store
        .commit_batch(&BatchWrite {
            consumer_group: "g",
            leads: leads.iter().collect(),
            offsets: vec![],
        })
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

async fn migrations_are_idempotent<S: LeadStore>(store: &S, _url: &str) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.lead_count().await.unwrap(), 0);
}

backend_tests!(
    state_round_trips_field_by_field,
    commit_overwrites_and_keeps_offsets,
    loads_only_existing_leads_in_large_batches,
    migrations_are_idempotent,
);
