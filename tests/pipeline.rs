//! End to end through the real broker: simulated traffic is published to the
//! input topics, the processor consumes it into PostgreSQL or SQLite, and the
//! stored state of every lead is checked field by field against what the raw
//! events say (computed here independently of the core).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::{InputEvent, InteractionKind, Millis, Stage};
use leadflow::kafka::deadletter::dlq_headers;
use leadflow::kafka::{self, InputFormat};
use leadflow::metrics::Metrics;
use leadflow::pipeline::{Pipeline, PipelineError, RunOptions, RunSummary};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::LeadStore;

use common::{
    all_states, assert_same_states, clean_run, produce, published_output_ids, read_dead_letters,
    test_config,
};
use rdkafka::producer::FutureRecord;

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
            InputEvent::Delivery(_) => {}
        }
    }
    out
}

async fn produce_poison(config: &Config) {
    produce(
        config,
        &config.topics.leads,
        Some("WEB-BAD1"),
        b"\x13\x37 not avro",
    )
    .await;
    let missing_key = br#"{"event_id":"x","lead_ext_id":"WEB-BAD2","occurred_at":1,"kind":"call"}"#;
    produce(config, &config.topics.interactions, None, missing_key).await;
}

async fn run_pipeline<S: LeadStore + 'static>(
    config: &Config,
    store: &Arc<S>,
    idle_secs: u64,
) -> Result<RunSummary, PipelineError> {
    let (task, _) = common::spawn_pipeline(config, store.clone(), Duration::from_secs(idle_secs));
    task.await.expect("pipeline task")
}

async fn simulated_stream_lands_in_the_store<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let config = test_config(url);
    kafka::create_topics(&config)
        .await
        .expect("create topics (is the broker up? `make broker`)");
    let params = SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
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

    let summary = run_pipeline(&config, &store, 8).await.unwrap();
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

    let dead = read_dead_letters(&config);
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

    // Every output was published once, through the outbox, which is now empty.
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    let published = published_output_ids(&config).await;
    let distinct: BTreeSet<String> = published.iter().cloned().collect();
    assert_eq!(
        published.len() as u64,
        summary.outputs,
        "no output published twice"
    );
    assert_eq!(distinct.len(), published.len());

    // A replay of the same events (clock = event time) ends in the same
    // state and the same output ids as the live run.
    let clean = clean_run(&config, &events).await;
    assert_same_states(&all_states(store.as_ref()).await, &clean.states);
    assert_eq!(distinct, clean.output_ids);
    assert_eq!(clean.outputs, published.len());
}

async fn redelivered_messages_change_nothing<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let config = test_config(url);
    kafka::create_topics(&config).await.unwrap();
    let params = SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
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
    let summary = run_pipeline(&config, &store, 8).await.unwrap();
    assert_eq!(summary.applied, events.len() as u64);
    assert_eq!(summary.duplicates, events.len() as u64);
    for (id, x) in &expected {
        let s = store.get_lead(id).await.unwrap().unwrap();
        assert_eq!(s.events_applied, x.events, "{id}");
        let counts: BTreeMap<_, _> = s.interactions.iter().map(|(k, v)| (*k, v.count)).collect();
        assert_eq!(counts, x.counts, "{id}");
    }
}

/// Every kind of bad message lands in the dead-letter topic with its reason,
/// and every good event around it is applied.
async fn poison_messages_are_dead_lettered<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let mut config = test_config(url);
    config.processor.max_message_bytes = 64 * 1024;
    kafka::create_topics(&config).await.unwrap();
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 3,
        leads: 15,
        days: 10,
        start: 1_767_225_600_000,
    });
    let codec = Codec::new(None);
    let third = events.len() / 3;
    kafka::publish_inputs(&config, &codec, &events[..third], InputFormat::Avro, 0)
        .await
        .unwrap();

    let good = match &events[0] {
        InputEvent::Lead(l) => codec.encode_single_object(l).unwrap(),
        other => panic!("the stream starts with a lead, not {other:?}"),
    };
    let leads = config.topics.leads.clone();
    let interactions = config.topics.interactions.clone();
    produce(&config, &leads, Some("K-1"), b"\xde\xad\xbe\xef garbage").await;
    produce(&config, &leads, Some("K-2"), &good[..good.len() / 2]).await;
    let mut unknown_schema = vec![0, 0, 0, 0x10, 0x92];
    unknown_schema.extend_from_slice(&good[10..]);
    produce(&config, &leads, Some("K-3"), &unknown_schema).await;
    kafka::publish_inputs(
        &config,
        &codec,
        &events[third..2 * third],
        InputFormat::Json,
        0,
    )
    .await
    .unwrap();
    let wrong_types =
        br#"{"event_id": 17, "lead_ext_id": "K-4", "occurred_at": "tuesday", "kind": "call"}"#;
    produce(&config, &interactions, Some("K-4"), wrong_types).await;
    let valid_json = br#"{"event_id":"nokey","lead_ext_id":"K-6","occurred_at":1,"kind":"call"}"#;
    produce(&config, &interactions, None, valid_json).await;
    kafka::publish_inputs(&config, &codec, &events[2 * third..], InputFormat::Avro, 0)
        .await
        .unwrap();
    // Nisshi 0.7.0 stalls producers and consumers of a topic once it holds a
    // 2 MB record (docs/DECISIONS.md), so the size bound is shown with a
    // 64 KiB limit and a 256 KiB value; the code path is the same.
    let mut huge =
        br#"{"event_id":"big","lead_ext_id":"K-5","occurred_at":1,"kind":"call","channel":""#
            .to_vec();
    huge.extend(std::iter::repeat_n(b'x', 256 * 1024));
    huge.extend_from_slice(br#""}"#);
    let big_producer: rdkafka::producer::FutureProducer =
        kafka::client_config(&config.kafka, &[("message.max.bytes", "4000000")])
            .create()
            .unwrap();
    big_producer
        .send(
            FutureRecord::to(&interactions).key("K-5").payload(&huge),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker accepts a 256 KiB message");

    let summary = run_pipeline(&config, &store, 8).await.unwrap();
    assert_eq!(
        summary.applied,
        events.len() as u64,
        "every good event applied"
    );
    assert_eq!(summary.dead_lettered, 6);
    let kinds: BTreeSet<(String, String)> = read_dead_letters(&config)
        .into_iter()
        .map(|(topic, kind, _)| (topic, kind))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        (&leads, "unknown_format"),
        (&leads, "truncated"),
        (&leads, "unknown_schema"),
        (&interactions, "invalid_json"),
        (&interactions, "too_large"),
        (&interactions, "missing_key"),
    ]
    .into_iter()
    .map(|(t, k)| (t.clone(), k.to_string()))
    .collect();
    assert_eq!(kinds, expected);
    assert_same_states(
        &all_states(store.as_ref()).await,
        &clean_run(&config, &events).await.states,
    );
}

/// A topic that is mostly garbage stops the processor with a clear error
/// instead of dead-lettering everything.
async fn mostly_bad_input_stops_the_processor<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let mut config = test_config(url);
    config.processor.dead_letter_window = 20;
    config.processor.dead_letter_max_ratio = 0.5;
    // Small batches: some end before the budget runs out, one trips it.
    config.processor.batch_size = 4;
    kafka::create_topics(&config).await.unwrap();
    for i in 0..40 {
        produce(
            &config,
            &config.topics.leads,
            Some(&format!("K-{i}")),
            b"\x01 not an event",
        )
        .await;
    }
    let err = run_pipeline(&config, &store, 8).await.unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::TooManyInvalid {
                invalid: 11,
                window: 20,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("unknown_format"), "{err}");
    // Batches that ended before the budget ran out were dead-lettered and
    // committed; the batch that tripped it (the 11th bad message and at most
    // three before it) is not, so a fixed deploy starts again at that batch.
    // Every committed offset lies behind a dead letter.
    let committed = store
        .partition_offsets(&config.kafka.group_id)
        .await
        .unwrap();
    let committed_total: i64 = committed.iter().map(|o| o.next_offset).sum();
    assert!(
        (7..=10).contains(&committed_total),
        "committed {committed:?}"
    );
    let dead_lettered: BTreeSet<(i32, i64)> = common::read_topic(&config, &config.topics.dlq)
        .into_iter()
        .map(|m| {
            let header = |name: &str| m.header(name).unwrap().parse::<i64>().unwrap();
            (
                header(dlq_headers::SOURCE_PARTITION) as i32,
                header(dlq_headers::SOURCE_OFFSET),
            )
        })
        .collect();
    for o in &committed {
        assert_eq!(o.topic, config.topics.leads);
        for offset in 0..o.next_offset {
            assert!(
                dead_lettered.contains(&(o.partition, offset)),
                "offset {offset} of partition {} committed without a dead letter",
                o.partition
            );
        }
    }
}

backend_tests!(
    simulated_stream_lands_in_the_store,
    redelivered_messages_change_nothing,
    poison_messages_are_dead_lettered,
    mostly_bad_input_stops_the_processor,
);

/// `/metrics` serves the processor's counters in Prometheus text, with the
/// names SPEC §4 asks for; `/health` and `/ready` answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_the_run() {
    let db = common::TestSqlite::new();
    let store = Arc::new(db.store().await);
    let config = test_config(&db.url);
    kafka::create_topics(&config).await.unwrap();
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 4,
        leads: 10,
        days: 10,
        start: 1_767_225_600_000,
    });
    kafka::publish_inputs(&config, &Codec::new(None), &events, InputFormat::Avro, 0)
        .await
        .unwrap();
    produce(&config, &config.topics.leads, Some("K-1"), b"\x00\x01").await;

    let metrics = Arc::new(Metrics::new());
    let addr = leadflow::api::serve(
        "127.0.0.1:0",
        leadflow::api::HttpState {
            metrics: metrics.clone(),
            api: None,
        },
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("http://{addr}{path}");
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/health").await.0, 200);
    assert_eq!(
        get("/ready").await.0,
        503,
        "not ready before partitions are assigned"
    );

    let pipeline = Pipeline::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        metrics.clone(),
    )
    .unwrap();
    let summary = pipeline
        .run(
            RunOptions {
                exit_when_idle: Some(Duration::from_secs(6)),
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    let value = |line_start: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let leads_consumed: usize = events
        .iter()
        .filter(|e| matches!(e, InputEvent::Lead(_)))
        .count()
        + 1;
    assert_eq!(
        value(&format!(
            "leadflow_events_consumed_total{{topic=\"{}\"}}",
            config.topics.leads
        )),
        leads_consumed as f64
    );
    assert_eq!(value("leadflow_events_applied_total"), events.len() as f64);
    assert_eq!(
        value("leadflow_dead_letters_total{reason=\"truncated\"}"),
        1.0
    );
    assert_eq!(
        value("leadflow_outputs_written_total"),
        summary.outputs as f64
    );
    assert_eq!(value("leadflow_outbox_depth"), 0.0);
    assert!(value("leadflow_batch_commit_duration_seconds_count") >= 1.0);
    // Lag per partition: caught up at the end.
    for p in 0..config.kafka.partitions {
        assert_eq!(
            value(&format!(
                "leadflow_consumer_lag{{partition=\"{p}\",topic=\"{}\"}}",
                config.topics.interactions
            )),
            0.0
        );
    }
    assert!(value("process_resident_memory_bytes") > 0.0);
}
