//! End to end through the real broker: simulated traffic is published to the
//! input topics, the processor consumes it into PostgreSQL or SQLite, and the
//! stored state of every lead is checked field by field against what the raw
//! events say (computed here independently of the core).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::{InputEvent, InteractionKind, Millis, Stage};
use leadflow::kafka::{self, InputFormat};
use leadflow::pipeline::{dlq_headers, header_value, Pipeline, RunOptions};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::LeadStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use common::test_config;

/// What the events of one lead say, derived straight from the stream.
#[derive(Default)]
struct Expected {
    created_at: Option<Millis>,
    email: Option<String>,
    source: Option<String>,
    timezone: Option<String>,
    probability: Option<f64>,
    stages: Vec<(Option<Stage>, Stage, Millis)>,
    counts: BTreeMap<InteractionKind, u64>,
    first_contact: Option<Millis>,
    last_contact: Option<Millis>,
    email_consent: Option<(bool, Millis)>,
    sms_consent: Option<(bool, Millis)>,
    events: u64,
}

fn expectations(events: &[InputEvent]) -> HashMap<String, Expected> {
    let mut out: HashMap<String, Expected> = HashMap::new();
    let contact = |x: &mut Expected, at: Millis| {
        x.first_contact = Some(x.first_contact.map_or(at, |t: Millis| t.min(at)));
        x.last_contact = Some(x.last_contact.map_or(at, |t: Millis| t.max(at)));
    };
    for e in events {
        let x = out.entry(e.lead_ext_id().to_string()).or_default();
        x.events += 1;
        match e {
            InputEvent::Lead(l) => {
                if l.kind == leadflow::events::LeadEventKind::Created {
                    x.created_at = Some(l.occurred_at);
                    x.email = l.email.clone();
                    x.source = l.source.clone();
                    x.timezone = l.timezone.clone();
                    let c = l.consent.as_ref().expect("simulated leads carry consent");
                    x.email_consent = c.email.map(|g| (g, c.recorded_at));
                    x.sms_consent = c.sms.map(|g| (g, c.recorded_at));
                }
                if l.probability.is_some() {
                    x.probability = l.probability;
                }
            }
            InputEvent::Interaction(i) => {
                *x.counts.entry(i.kind).or_default() += 1;
                if matches!(
                    i.kind,
                    InteractionKind::Call
                        | InteractionKind::Meeting
                        | InteractionKind::ManualContact
                        | InteractionKind::EmailReply
                        | InteractionKind::SmsReply
                ) {
                    contact(x, i.occurred_at);
                }
                if i.kind == InteractionKind::Unsubscribe {
                    match i.channel.as_deref() {
                        Some("sms") => x.sms_consent = Some((false, i.occurred_at)),
                        _ => x.email_consent = Some((false, i.occurred_at)),
                    }
                }
            }
            InputEvent::StageChange(s) => {
                x.stages.push((s.from_stage, s.to_stage, s.occurred_at));
                if s.to_stage == Stage::Contacted {
                    contact(x, s.occurred_at);
                }
            }
        }
    }
    out
}

async fn produce_poison(config: &Config) {
    let producer = kafka::producer(&config.kafka).unwrap();
    let send = |topic: String, key: Option<&'static str>, payload: &'static [u8]| {
        let producer = producer.clone();
        async move {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    send(
        config.topics.leads.clone(),
        Some("WEB-BAD1"),
        b"\x13\x37 not avro",
    )
    .await;
    send(
        config.topics.interactions.clone(),
        None,
        br#"{"event_id":"x","lead_ext_id":"WEB-BAD2","occurred_at":1,"kind":"call"}"#,
    )
    .await;
}

/// Reads every message of the dead-letter topic (assigned, not in a group).
fn read_dead_letters(config: &Config, expected: usize) -> Vec<(String, String, String)> {
    let consumer: BaseConsumer = kafka::client_config(
        &config.kafka,
        &[("group.id", "dlq-reader"), ("enable.auto.commit", "false")],
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.partitions {
        tpl.add_partition_offset(&config.topics.dlq, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let headers = m.headers().expect("dead letters carry headers");
            out.push((
                header_value(headers, dlq_headers::SOURCE_TOPIC).unwrap(),
                header_value(headers, dlq_headers::ERROR_KIND).unwrap(),
                header_value(headers, dlq_headers::ERROR_MESSAGE).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

async fn simulated_stream_lands_in_the_store<S: LeadStore>(store: &S, url: &str) {
    let config = test_config(url);
    kafka::create_topics(&config)
        .await
        .expect("create topics (is the broker up? `make broker`)");
    let params = SimulationParams {
        seed: 11,
        leads: 120,
        days: 45,
        start: 1_767_225_600_000,
    };
    let events = simulate::generate(&params);
    let codec = Codec::new(None);
    // Upstream systems differ: the first half arrives as Avro, the rest as JSON.
    let half = events.len() / 2;
    kafka::publish_inputs(&config, &codec, &events[..half], InputFormat::Avro, 0)
        .await
        .unwrap();
    produce_poison(&config).await;
    kafka::publish_inputs(&config, &codec, &events[half..], InputFormat::Json, 0)
        .await
        .unwrap();

    let pipeline = Pipeline::new(&config, store, &codec).unwrap();
    let summary = pipeline
        .run(
            RunOptions {
                exit_when_idle: Some(Duration::from_secs(8)),
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(summary.consumed, events.len() as u64 + 2);
    assert_eq!(summary.applied, events.len() as u64);
    assert_eq!(summary.dead_lettered, 2);

    let expected = expectations(&events);
    assert_eq!(store.lead_count().await.unwrap(), expected.len() as i64);
    let mut checked_closed = 0;
    for (id, x) in &expected {
        let s = store
            .get_lead(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("lead {id} missing"));
        assert_eq!(s.created_at, x.created_at, "{id} created_at");
        assert_eq!(s.email, x.email, "{id} email");
        assert_eq!(s.source, x.source, "{id} source");
        assert_eq!(s.timezone, x.timezone, "{id} timezone");
        assert_eq!(s.probability, x.probability, "{id} probability");
        let history: Vec<_> = s
            .stage_history
            .iter()
            .map(|t| (t.from, t.to, t.at))
            .collect();
        assert_eq!(history, x.stages, "{id} stage history");
        let last = x.stages.last();
        assert_eq!(s.stage, last.map_or(Stage::New, |l| l.1), "{id} stage");
        assert_eq!(s.stage_entered_at, last.map(|l| l.2), "{id} stage entered");
        let counts: BTreeMap<_, _> = s.interactions.iter().map(|(k, v)| (*k, v.count)).collect();
        assert_eq!(counts, x.counts, "{id} interaction counts");
        assert_eq!(s.first_contact_at, x.first_contact, "{id} first contact");
        assert_eq!(s.last_contact_at, x.last_contact, "{id} last contact");
        assert_eq!(
            s.consent.email.as_ref().map(|c| (c.granted, c.recorded_at)),
            x.email_consent,
            "{id} email consent"
        );
        assert_eq!(
            s.consent.sms.as_ref().map(|c| (c.granted, c.recorded_at)),
            x.sms_consent,
            "{id} sms consent"
        );
        assert_eq!(s.events_applied, x.events, "{id} events applied");
        assert!(s.score.is_some(), "{id} scored");
        if s.stage.is_closed() {
            checked_closed += 1;
        }
    }
    assert!(
        checked_closed > 10,
        "the stream closes deals ({checked_closed})"
    );

    let dead = read_dead_letters(&config, 2);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, config.topics.interactions);
    assert_eq!(dead[0].1, "missing_key");
    assert_eq!(dead[1].0, config.topics.leads);
    assert_eq!(dead[1].1, "unknown_format");
    assert!(dead[1].2.contains("first byte 0x13"), "{:?}", dead[1]);

    // Stored offsets cover every consumed message of every input partition.
    let offsets = store
        .partition_offsets(&config.kafka.group_id)
        .await
        .unwrap();
    let stored: i64 = offsets.iter().map(|o| o.next_offset).sum();
    assert_eq!(stored, events.len() as i64 + 2);
}

async fn redelivered_messages_change_nothing<S: LeadStore>(store: &S, url: &str) {
    let config = test_config(url);
    kafka::create_topics(&config).await.unwrap();
    let params = SimulationParams {
        seed: 5,
        leads: 20,
        days: 20,
        start: 1_767_225_600_000,
    };
    let events = simulate::generate(&params);
    let expected = expectations(&events);
    assert!(
        expected
            .values()
            .all(|x| x.events as usize <= config.processor.dedup_window),
        "every repeat falls inside the per-lead dedup window"
    );
    let codec = Codec::new(None);
    // An upstream retry storm: the whole stream is published twice.
    kafka::publish_inputs(&config, &codec, &events, InputFormat::Avro, 0)
        .await
        .unwrap();
    kafka::publish_inputs(&config, &codec, &events, InputFormat::Avro, 0)
        .await
        .unwrap();
    let pipeline = Pipeline::new(&config, store, &codec).unwrap();
    let summary = pipeline
        .run(
            RunOptions {
                exit_when_idle: Some(Duration::from_secs(8)),
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(summary.applied, events.len() as u64);
    assert_eq!(summary.duplicates, events.len() as u64);
    for (id, x) in &expected {
        let s = store.get_lead(id).await.unwrap().unwrap();
        assert_eq!(s.events_applied, x.events, "{id}");
        let counts: BTreeMap<_, _> = s.interactions.iter().map(|(k, v)| (*k, v.count)).collect();
        assert_eq!(counts, x.counts, "{id}");
    }
}

backend_tests!(
    simulated_stream_lands_in_the_store,
    redelivered_messages_change_nothing
);
