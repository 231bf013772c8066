//! Nurturing through the real broker and both databases, on a clock the test
//! drives: the processor runs on the wall-clock path with a ManualClock, the
//! test publishes each event when the clock reaches its time, and reads what
//! reached the outbound topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadflow::codec::Codec;
use leadflow::config::{ClockMode, Config};
use leadflow::core::clock::ManualClock;
use leadflow::core::nurture::sequences::SequenceSet;
use leadflow::core::nurture::{FrequencyCap, Sequences};
use leadflow::core::state::Status;
use leadflow::events::{
    Channel, DeliveryEvent, DeliveryStatus, InputEvent, InteractionEvent, InteractionKind,
    LeadEvent, Millis, Stage, StageChangeEvent, MILLIS_PER_DAY,
};
use leadflow::kafka::{self, InputFormat};
use leadflow::metrics::Metrics;
use leadflow::store::LeadStore;
use leadflow::testing::{self, lead_created};

use common::{
    committed_messages, produce, published_messages, read_dead_letters, spawn_pipeline,
    spawn_pipeline_on_clock, test_config,
};

const DAY: Millis = MILLIS_PER_DAY;
const HOUR: Millis = 3_600_000;
/// Monday 2 March 2026, 09:00 UTC (10:00 in Madrid).
const T0: Millis = 1_772_442_000_000;

/// The seed's premium sequence, a low one, a three-email burst to test the
/// frequency cap, and the reactivation sequence.
const SEQUENCES: &str = r#"
[[sequence]]
name = "premium"
segment = "premium"
steps = [
  { day = 1, channel = "email", template = "premium_welcome" },
  { day = 3, channel = "email", template = "premium_value_prop" },
  { day = 5, channel = "email", template = "premium_case_study" },
  { day = 7, channel = "email", template = "premium_demo_request" },
]

[[sequence]]
name = "low"
segment = "low"
steps = [
  { day = 2, channel = "email", template = "low_welcome" },
  { day = 14, channel = "email", template = "low_newsletter", when = { without = ["email_reply"] } },
]

[[sequence]]
name = "burst"
segment = "standard"
steps = [
  { hours = 1, channel = "email", template = "burst_a" },
  { hours = 2, channel = "email", template = "burst_b" },
  { hours = 3, channel = "email", template = "burst_c" },
]

[[sequence]]
name = "reactivation"
reactivation = true
steps = [
  { day = 0, channel = "email", template = "reactivation_checkin" },
  { day = 4, channel = "email", template = "reactivation_last_chance" },
]
"#;

fn created(id: &str, at: Millis, score: f64, timezone: &str) -> InputEvent {
    InputEvent::Lead(LeadEvent {
        email: Some(format!("{}@example.com", id.to_lowercase())),
        phone: Some("+34600000001".into()),
        first_name: Some(format!("Name {id}")),
        last_name: Some("Ruiz".into()),
        company: Some(format!("Company {id}")),
        owner: Some("rep-07".into()),
        initial_score: Some(score),
        timezone: Some(timezone.into()),
        ..lead_created(id, at)
    })
}

fn interaction(id: &str, at: Millis, kind: InteractionKind, channel: &str) -> InputEvent {
    InputEvent::Interaction(InteractionEvent {
        event_id: format!("{id}-{kind}-{at}"),
        ..testing::interaction(id, 0, kind, at, channel)
    })
}

fn delivery(id: &str, at: Millis, status: DeliveryStatus, reason: Option<&str>) -> InputEvent {
    InputEvent::Delivery(DeliveryEvent {
        event_id: format!("{id}-delivery-{at}"),
        reason: reason.map(str::to_string),
        ..testing::delivery(&format!("message-of-{id}"), id, status, at)
    })
}

fn qualified(id: &str, at: Millis) -> InputEvent {
    InputEvent::StageChange(StageChangeEvent {
        event_id: format!("{id}-qualified"),
        from_stage: Some(Stage::New),
        ..testing::stage_change(id, 0, Stage::Qualified, at)
    })
}

fn config(url: &str) -> Config {
    let mut config = test_config(url);
    config.processor.clock = ClockMode::Wall;
    config.nurture.tick_interval_ms = 50;
    config.nurture.sequences = Sequences(Arc::new(SequenceSet::parse(SEQUENCES, "test").unwrap()));
    config.nurture.frequency_cap = FrequencyCap {
        max_messages: 2,
        window_hours: 24,
    };
    config
}

/// Sets the clock, publishes what happens at that time, and waits until the
/// processor applied it, fired every timer due and published every message.
async fn step<S: LeadStore>(
    config: &Config,
    store: &S,
    clock: &ManualClock,
    at: Millis,
    events: &[InputEvent],
    published: &mut i64,
) {
    clock.set(at);
    if !events.is_empty() {
        kafka::publish_inputs(config, &Codec::new(None), events, InputFormat::Avro, 0)
            .await
            .unwrap();
        *published += events.len() as i64;
    }
    let partitions: Vec<i32> = (0..config.kafka.partitions).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = committed_messages(store, config).await == *published;
        let fired = store
            .due_timers(&partitions, at, 1)
            .await
            .unwrap()
            .is_empty();
        let sent = store.outbox_depth().await.unwrap() == 0;
        if applied && fired && sent {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "clock at +{} h: applied {applied}, timers fired {fired}, outbox empty {sent}",
            (at - T0) / HOUR
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn nurtures_on_a_controllable_clock<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let config = config(url);
    kafka::create_topics(&config).await.unwrap();
    let tokyo_created = T0 + 13 * HOUR; // 22:00 UTC = 07:00 in Tokyo, quiet
    let mut timeline: BTreeMap<Millis, Vec<InputEvent>> = BTreeMap::new();
    let mut at = |t: Millis, e: InputEvent| timeline.entry(t).or_default().push(e);
    for id in ["PRM-1", "PRM-2", "PRM-3", "PRM-4", "BNC-1"] {
        at(T0, created(id, T0, 90.0, "Europe/Madrid"));
    }
    at(T0, created("LOW-1", T0, 20.0, "Europe/Madrid"));
    at(T0, created("CAP-1", T0, 40.0, "Europe/Madrid"));
    at(
        tokyo_created,
        created("TKY-1", tokyo_created, 90.0, "Asia/Tokyo"),
    );
    at(
        T0 + DAY + HOUR,
        delivery(
            "BNC-1",
            T0 + DAY + HOUR,
            DeliveryStatus::Bounced,
            Some("550 mailbox unavailable"),
        ),
    );
    at(T0 + 2 * DAY, qualified("PRM-3", T0 + 2 * DAY));
    at(
        T0 + 2 * DAY,
        interaction("PRM-4", T0 + 2 * DAY, InteractionKind::Unsubscribe, "email"),
    );
    at(
        T0 + 4 * DAY,
        interaction("PRM-2", T0 + 4 * DAY, InteractionKind::EmailReply, "email"),
    );
    at(
        T0 + 7 * DAY + HOUR,
        delivery("PRM-1", T0 + 7 * DAY + HOUR, DeliveryStatus::Sent, None),
    );

    let premium = |days: &[Millis]| testing::premium_sends(T0, days);
    let reactivation = |from: Millis| {
        vec![
            ("reactivation_checkin".to_string(), from),
            ("reactivation_last_chance".to_string(), from + 4 * DAY),
        ]
    };
    let then = |mut a: Vec<(String, Millis)>, b: Vec<(String, Millis)>| {
        a.extend(b);
        a
    };
    let tokyo = |d: Millis| tokyo_created + d * DAY + HOUR; // shifted to 08:00 Tokyo
    let expected: BTreeMap<&str, Vec<(String, Millis)>> = BTreeMap::from([
        // All four on days 1, 3, 5 and 7; the delivery report of day 7 is
        // its last contact, so reactivation comes 30 days after it.
        (
            "PRM-1",
            then(premium(&[1, 3, 5, 7]), reactivation(T0 + 37 * DAY + HOUR)),
        ),
        // Replied on day 4: the rest stops; reactivated 30 days after the reply.
        ("PRM-2", then(premium(&[1, 3]), reactivation(T0 + 34 * DAY))),
        // Qualified on day 2: paused; silent since creation.
        ("PRM-3", then(premium(&[1]), reactivation(T0 + 30 * DAY))),
        // Unsubscribed on day 2: nothing more, reactivation included.
        ("PRM-4", premium(&[1])),
        // Hard bounce after the welcome: email is over for this lead.
        ("BNC-1", premium(&[1])),
        // Quiet hours in Tokyo push every step to 08:00 local.
        (
            "TKY-1",
            vec![
                ("premium_welcome".to_string(), tokyo(1)),
                ("premium_value_prop".to_string(), tokyo(3)),
                ("premium_case_study".to_string(), tokyo(5)),
                ("premium_demo_request".to_string(), tokyo(7)),
                ("reactivation_checkin".to_string(), tokyo(30)),
                ("reactivation_last_chance".to_string(), tokyo(34)),
            ],
        ),
        (
            "LOW-1",
            then(
                vec![
                    ("low_welcome".to_string(), T0 + 2 * DAY),
                    ("low_newsletter".to_string(), T0 + 14 * DAY),
                ],
                reactivation(T0 + 30 * DAY),
            ),
        ),
        // Two per 24 hours: the third waits until the first leaves the window.
        (
            "CAP-1",
            then(
                vec![
                    ("burst_a".to_string(), T0 + HOUR),
                    ("burst_b".to_string(), T0 + 2 * HOUR),
                    ("burst_c".to_string(), T0 + DAY + HOUR),
                ],
                reactivation(T0 + 30 * DAY),
            ),
        ),
    ]);
    // The clock stops at every event and every instant something is due,
    // including the Tokyo lead's reactivation check (30 days after creation).
    let mut checkpoints: BTreeSet<Millis> = timeline.keys().copied().collect();
    checkpoints.extend(expected.values().flatten().map(|(_, t)| *t));
    checkpoints.extend([
        T0 + 3 * HOUR,
        tokyo_created + 30 * DAY,
        tokyo_created + 34 * DAY,
        T0 + 90 * DAY,
    ]);

    let clock = Arc::new(ManualClock::new(T0));
    let (stop, task) = spawn_pipeline_on_clock(
        &config,
        store.clone(),
        Arc::new(Metrics::new()),
        clock.clone(),
    );
    let mut published = 0;
    for t in checkpoints {
        let events = timeline.remove(&t).unwrap_or_default();
        step(&config, store.as_ref(), &clock, t, &events, &mut published).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let messages = published_messages(&config).await;
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "no message published twice");
    let mut got: BTreeMap<&str, Vec<(String, Millis)>> = BTreeMap::new();
    for m in &messages {
        got.entry(m.lead_ext_id.as_str())
            .or_default()
            .push((m.template.clone(), m.scheduled_for));
        // Live, a message is created when the clock reaches it.
        assert_eq!(m.created_at, m.scheduled_for, "{m:?}");
        assert_eq!(m.channel, Channel::Email);
        assert_eq!(
            m.to,
            format!("{}@example.com", m.lead_ext_id.to_lowercase())
        );
    }
    for list in got.values_mut() {
        list.sort_by_key(|(_, t)| *t);
    }
    for (lead, want) in &expected {
        assert_eq!(got.get(lead), Some(want), "messages of {lead}");
    }
    assert_eq!(got.len(), expected.len(), "no other lead got messages");

    let welcome = messages
        .iter()
        .find(|m| m.lead_ext_id == "PRM-1" && m.template == "premium_welcome")
        .unwrap();
    for (key, value) in [
        ("first_name", "Name PRM-1"),
        ("company", "Company PRM-1"),
        ("lead_ext_id", "PRM-1"),
        ("owner", "rep-07"),
    ] {
        assert_eq!(
            welcome.data.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(
        welcome.message_id,
        leadflow::core::ids::message_id("PRM-1", "premium", "premium_welcome", 0)
    );

    let state = |id: &'static str| {
        let store = store.clone();
        async move { store.get_lead(id).await.unwrap().unwrap().nurture }
    };
    let replier = state("PRM-2").await;
    assert!(replier
        .history
        .iter()
        .any(|n| n.note == "paused `premium`: lead replied by email"));
    let qualified = state("PRM-3").await;
    assert!(qualified
        .history
        .iter()
        .any(|n| n.note == "paused `premium`: stage changed to qualified"));
    let bounced = state("BNC-1").await;
    assert_eq!(
        bounced.stopped[&Channel::Email].reason,
        "hard bounce: 550 mailbox unavailable"
    );
    let silent = state("LOW-1").await;
    assert_eq!(silent.status, Status::Completed);
    assert_eq!(silent.timer, None, "reactivated once, nothing pending");
}

/// A reply for a lead never seen, a stage nobody knows, a timezone that does
/// not exist, a delivery report without a message id: each is handled as
/// docs/NURTURING.md says, and the processor goes on.
async fn bad_input_is_handled_and_the_processor_goes_on<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let config = test_config(url); // event time
    kafka::create_topics(&config).await.unwrap();
    let events = vec![
        interaction("GHOST-1", T0, InteractionKind::EmailReply, "email"),
        created("MARS-1", T0, 90.0, "Mars/Olympus_Mons"),
        created("OK-1", T0, 90.0, "Europe/Madrid"),
    ];
    kafka::publish_inputs(&config, &Codec::new(None), &events, InputFormat::Json, 0)
        .await
        .unwrap();
    let unknown_stage = format!(
        r#"{{"event_id":"s1","lead_ext_id":"OK-1","occurred_at":{},"to_stage":"won_big"}}"#,
        T0 + HOUR
    );
    produce(
        &config,
        &config.topics.stage_changes,
        Some("OK-1"),
        unknown_stage.as_bytes(),
    )
    .await;
    let no_message_id = format!(
        r#"{{"event_id":"d1","message_id":" ","lead_ext_id":"OK-1","channel":"email","status":"sent","occurred_at":{}}}"#,
        T0 + HOUR
    );
    produce(
        &config,
        &config.topics.deliveries,
        Some("OK-1"),
        no_message_id.as_bytes(),
    )
    .await;
    // Later traffic moves every partition's clock past the first two steps.
    let later: Vec<InputEvent> = (0..config.kafka.partitions * 8)
        .map(|i| created(&format!("LATE-{i}"), T0 + 4 * DAY, 10.0, "UTC"))
        .collect();
    kafka::publish_inputs(&config, &Codec::new(None), &later, InputFormat::Json, 0)
        .await
        .unwrap();
    let (task, _) = spawn_pipeline(&config, store.clone(), Duration::from_secs(6));
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(summary.applied as usize, events.len() + later.len());

    let dead = read_dead_letters(&config);
    assert_eq!(dead.len(), 2, "{dead:?}");
    let stage = dead
        .iter()
        .find(|d| d.0 == config.topics.stage_changes)
        .unwrap();
    assert_eq!(stage.1, "invalid_json");
    assert!(stage.2.contains("won_big"), "{stage:?}");
    let delivery = dead
        .iter()
        .find(|d| d.0 == config.topics.deliveries)
        .unwrap();
    assert_eq!(
        (delivery.1.as_str(), delivery.2.as_str()),
        ("validation", "invalid event: message_id is empty")
    );

    // The reply made a stub, which is never nurtured.
    let ghost = store.get_lead("GHOST-1").await.unwrap().unwrap();
    assert_eq!(ghost.created_at, None);
    assert_eq!(ghost.nurture.status, Status::NotEnrolled);
    // The timezone is kept as given, noted, and quiet hours use UTC.
    let mars = store.get_lead("MARS-1").await.unwrap().unwrap();
    assert_eq!(mars.timezone.as_deref(), Some("Mars/Olympus_Mons"));
    assert!(mars
        .nurture
        .history
        .iter()
        .any(|n| n.note == "timezone `Mars/Olympus_Mons` does not exist; quiet hours use UTC"));
    let messages = published_messages(&config).await;
    let templates = |id: &str| -> Vec<String> {
        messages
            .iter()
            .filter(|m| m.lead_ext_id == id)
            .map(|m| m.template.clone())
            .collect()
    };
    assert_eq!(
        templates("MARS-1"),
        ["premium_welcome", "premium_value_prop"]
    );
    assert_eq!(templates("OK-1"), ["premium_welcome", "premium_value_prop"]);
    assert!(templates("GHOST-1").is_empty());
}

backend_tests!(
    nurtures_on_a_controllable_clock,
    bad_input_is_handled_and_the_processor_goes_on
);
