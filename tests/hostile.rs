//! Hostile input through the real broker, on both stores: a corpus of bad
//! messages of many kinds (sizes at, just under and over each limit, huge
//! length and count claims, NUL and invalid UTF-8 in every text field,
//! records cut at every byte, timestamps in the wrong unit or far away,
//! deep JSON nesting) mixed into simulated traffic. Every bad message must
//! reach the dead-letter topic with the reason the corpus expects, the
//! processor must stay up, and the stored state must equal a replay of the
//! good events alone.
//!
//! One file past 600 lines on purpose: the corpus is one list of cases and
//! one run over it per store; its builders are used by nothing else.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::*;
use leadflow::kafka::deadletter::dlq_headers;
use leadflow::kafka::{self, InputFormat};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::LeadStore;
use leadflow::testing::{self, consent, lead_created};
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::{all_states, assert_same_states, clean_run, read_topic, test_config, zigzag};

const JAN_2026: Millis = 1_767_225_600_000;

/// One message of the corpus: where it goes, its bytes, and what must
/// become of it (`None`: applied, as a good event).
struct Case {
    stream: InputStream,
    key: Vec<u8>,
    payload: Vec<u8>,
    expected: Option<&'static str>,
    good: Option<InputEvent>,
}

fn lead(id: &str, at: Millis) -> LeadEvent {
    LeadEvent {
        phone: Some("+34600000000".into()),
        last_name: Some("Ruiz".into()),
        company: Some("Acme".into()),
        source: Some("web".into()),
        owner: Some("rep-1".into()),
        estimated_value: Some(12_000.0),
        probability: Some(0.3),
        consent: Some(Consent {
            source: "web_form".into(),
            ..consent(true, false, at)
        }),
        attributes: BTreeMap::from([("industry".into(), "retail".into())]),
        ..lead_created(id, at)
    }
}

fn interaction(id: &str, at: Millis) -> InteractionEvent {
    InteractionEvent {
        event_id: format!("{id}-call"),
        actor: Some("rep-1".into()),
        attributes: BTreeMap::from([("outcome".into(), "answered".into())]),
        ..testing::interaction(id, 0, InteractionKind::Call, at, "phone")
    }
}

fn stage_change(id: &str, at: Millis) -> StageChangeEvent {
    StageChangeEvent {
        event_id: format!("{id}-stage"),
        from_stage: Some(Stage::New),
        owner: Some("rep-1".into()),
        deal_value: Some(5_000.0),
        ..testing::stage_change(id, 0, Stage::Contacted, at)
    }
}

fn delivery(id: &str, at: Millis) -> DeliveryEvent {
    DeliveryEvent {
        event_id: format!("{id}-delivery"),
        provider_message_id: Some("sg-1".into()),
        reason: Some("ok".into()),
        ..testing::delivery(&format!("{id}-message"), id, DeliveryStatus::Sent, at)
    }
}

fn avro_string(s: &str) -> Vec<u8> {
    let mut out = zigzag(s.len() as i64);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Each text field of each input record, as a setter.
type TextSetter<T> = (&'static str, fn(&mut T, String));

fn lead_text_fields() -> Vec<TextSetter<LeadEvent>> {
    vec![
        ("event_id", |e, v| e.event_id = v),
        ("lead_ext_id", |e, v| e.lead_ext_id = v),
        ("email", |e, v| e.email = Some(v)),
        ("phone", |e, v| e.phone = Some(v)),
        ("first_name", |e, v| e.first_name = Some(v)),
        ("last_name", |e, v| e.last_name = Some(v)),
        ("company", |e, v| e.company = Some(v)),
        ("source", |e, v| e.source = Some(v)),
        ("owner", |e, v| e.owner = Some(v)),
        ("timezone", |e, v| e.timezone = Some(v)),
        ("consent.source", |e, v| {
            e.consent.as_mut().expect("consent").source = v
        }),
        ("attribute key", |e, v| {
            e.attributes.insert(v, "x".into());
        }),
        ("attribute value", |e, v| {
            e.attributes.insert("k".into(), v);
        }),
    ]
}

fn interaction_text_fields() -> Vec<TextSetter<InteractionEvent>> {
    vec![
        ("event_id", |e, v| e.event_id = v),
        ("lead_ext_id", |e, v| e.lead_ext_id = v),
        ("channel", |e, v| e.channel = Some(v)),
        ("actor", |e, v| e.actor = Some(v)),
        ("attribute key", |e, v| {
            e.attributes.insert(v, "x".into());
        }),
        ("attribute value", |e, v| {
            e.attributes.insert("k".into(), v);
        }),
    ]
}

fn stage_text_fields() -> Vec<TextSetter<StageChangeEvent>> {
    vec![
        ("event_id", |e, v| e.event_id = v),
        ("lead_ext_id", |e, v| e.lead_ext_id = v),
        ("owner", |e, v| e.owner = Some(v)),
    ]
}

fn delivery_text_fields() -> Vec<TextSetter<DeliveryEvent>> {
    vec![
        ("event_id", |e, v| e.event_id = v),
        ("message_id", |e, v| e.message_id = v),
        ("lead_ext_id", |e, v| e.lead_ext_id = v),
        ("provider", |e, v| e.provider = Some(v)),
        ("provider_message_id", |e, v| {
            e.provider_message_id = Some(v)
        }),
        ("reason", |e, v| e.reason = Some(v)),
    ]
}

/// Builds the corpus. Keys are `H<n>:`-prefixed and unique, so a dead
/// letter (which keeps the original key, or its start when cut) names its case.
struct Corpus {
    codec: Codec,
    cases: Vec<Case>,
}

impl Corpus {
    fn key(&self) -> String {
        format!("H{}:", self.cases.len())
    }

    fn bad(&mut self, stream: InputStream, key: Vec<u8>, payload: Vec<u8>, kind: &'static str) {
        self.cases.push(Case {
            stream,
            key,
            payload,
            expected: Some(kind),
            good: None,
        });
    }

    fn good(&mut self, event: InputEvent, payload: Vec<u8>) {
        self.cases.push(Case {
            stream: event.stream(),
            key: event.lead_ext_id().as_bytes().to_vec(),
            payload,
            expected: None,
            good: Some(event),
        });
    }

    fn single<T: Record>(&self, value: &T) -> Vec<u8> {
        self.codec.encode_single_object(value).unwrap()
    }

    /// Each text field with a NUL (Avro and JSON) and with invalid UTF-8
    /// (Avro: the bytes of a placeholder replaced in place; JSON: raw 0xff).
    fn text_cases<T: Record + Clone>(
        &mut self,
        stream: InputStream,
        base: impl Fn(&str) -> T,
        fields: Vec<TextSetter<T>>,
    ) {
        const MARK: &str = "@@PLACEHOLDER@@";
        for (field, set) in fields {
            let key = self.key();
            let mut event = base(&key);
            set(&mut event, format!("a\0b{key}"));
            let (avro, json) = (self.single(&event), Codec::encode_json(&event).unwrap());
            self.bad(stream, key.clone().into_bytes(), avro, "validation");
            let key = self.key();
            self.bad(stream, key.into_bytes(), json, "validation");

            let key = self.key();
            let mut event = base(&key);
            set(&mut event, MARK.to_string());
            for (payload, kind) in [
                (self.single(&event), "invalid_avro"),
                (Codec::encode_json(&event).unwrap(), "invalid_json"),
            ] {
                let key = self.key();
                let at = payload
                    .windows(MARK.len())
                    .position(|w| w == MARK.as_bytes())
                    .unwrap_or_else(|| panic!("{field}: placeholder not found"));
                let mut payload = payload;
                payload[at..at + MARK.len()].fill(0xff);
                self.bad(stream, key.into_bytes(), payload, kind);
            }
        }
    }
}

fn corpus(max_message_bytes: usize) -> Corpus {
    let mut c = Corpus {
        codec: Codec::new(None),
        cases: Vec::new(),
    };
    let now = chrono::Utc::now().timestamp_millis();
    use InputStream::*;

    // Sizes at, just under and over processor.max_message_bytes: a valid
    // JSON event padded with spaces to exactly the limit is applied; one
    // byte more is too large; invalid JSON just under the limit is a dead
    // letter too large for the default producer (it stalled the processor).
    let key = c.key();
    let event = lead(&key, JAN_2026 + 1_000);
    let mut at_limit = Codec::encode_json(&event).unwrap();
    at_limit.resize(max_message_bytes, b' ');
    let over = [&at_limit[..], b" "].concat();
    c.good(InputEvent::Lead(event), at_limit);
    let key = c.key();
    c.bad(Leads, key.into_bytes(), over, "too_large");
    let key = c.key();
    let mut just_under = br#"{"event_id": ""#.to_vec();
    just_under.resize(1_010_000, b'x');
    c.bad(Interactions, key.into_bytes(), just_under, "invalid_json");
    // A 1.05 MB key (the lead id of a key_mismatch) in a small message.
    let mut huge_key = c.key().into_bytes();
    huge_key.resize(1_050_000, b'k');
    let small = c.single(&interaction("H-other", JAN_2026));
    c.bad(Interactions, huge_key, small, "key_mismatch");

    // Text limits: at the limit applied, one byte over refused.
    let ids = [
        (text_limits::MAX_LEAD_ID_BYTES, None),
        (text_limits::MAX_LEAD_ID_BYTES + 1, Some("validation")),
    ];
    for (len, expected) in ids {
        let mut id = c.key();
        id.extend(std::iter::repeat_n('L', len - id.len()));
        let event = lead(&id, JAN_2026 + 2_000);
        let payload = c.single(&event);
        match expected {
            None => c.good(InputEvent::Lead(event), payload),
            Some(kind) => c.bad(Leads, id.into_bytes(), payload, kind),
        }
    }
    for (len, expected) in [
        (text_limits::MAX_FIELD_BYTES, None),
        (text_limits::MAX_FIELD_BYTES + 1, Some("validation")),
    ] {
        let id = c.key();
        let mut event = lead(&id, JAN_2026 + 3_000);
        event.company = Some("c".repeat(len));
        event.event_id = "e".repeat(text_limits::MAX_EVENT_ID_BYTES);
        let payload = c.single(&event);
        match expected {
            None => c.good(InputEvent::Lead(event), payload),
            Some(kind) => c.bad(Leads, id.into_bytes(), payload, kind),
        }
    }
    for (n, expected) in [
        (text_limits::MAX_ATTRIBUTES, None),
        (text_limits::MAX_ATTRIBUTES + 1, Some("validation")),
    ] {
        let id = c.key();
        let mut event = interaction(&id, JAN_2026 + 4_000);
        event.attributes = (0..n).map(|i| (format!("a{i}"), "v".into())).collect();
        let payload = c.single(&event);
        match expected {
            None => c.good(InputEvent::Interaction(event), payload),
            Some(kind) => c.bad(Interactions, id.into_bytes(), payload, kind),
        }
    }

    // Huge length and count claims, in every kind the input schemas have.
    let header = |c: &Corpus, name: &str| -> Vec<u8> {
        let mut h = vec![0xC3, 0x01];
        h.extend_from_slice(&c.codec.schemas().current_fingerprint(name));
        h
    };
    for (stream, name) in [
        (Leads, "LeadEvent"),
        (Interactions, "InteractionEvent"),
        (StageChanges, "StageChangeEvent"),
        (Deliveries, "DeliveryEvent"),
    ] {
        for claim in [1i64 << 40, 500_000_000, 1_000_001] {
            // The first field, event_id, is a string.
            let key = c.key();
            let payload = [header(&c, name), zigzag(claim), b"abc".to_vec()].concat();
            c.bad(stream, key.into_bytes(), payload, "truncated");
        }
        let key = c.key();
        let payload = [header(&c, name), zigzag(-5), b"abc".to_vec()].concat();
        c.bad(stream, key.into_bytes(), payload, "invalid_avro");
        let key = c.key();
        let payload = [header(&c, name), vec![0xff; 12]].concat();
        c.bad(stream, key.into_bytes(), payload, "invalid_avro");
    }
    // Map counts (positive, and negative with a byte size) in attributes,
    // the last field of LeadEvent and InteractionEvent.
    for (stream, good) in [
        (
            Leads,
            c.single(&LeadEvent {
                attributes: BTreeMap::new(),
                ..lead("H-map", JAN_2026)
            }),
        ),
        (
            Interactions,
            c.single(&InteractionEvent {
                attributes: BTreeMap::new(),
                ..interaction("H-map", JAN_2026)
            }),
        ),
    ] {
        let body = &good[..good.len() - 1];
        for claim in [
            zigzag(500_000_000),
            [zigzag(-500_000_000), zigzag(10)].concat(),
            [zigzag(-1), zigzag(1 << 40)].concat(),
        ] {
            let key = c.key();
            let payload = [body, &claim[..], b"\x02k\x02v\x00"].concat();
            c.bad(stream, key.into_bytes(), payload, "truncated");
        }
    }
    // Union and enum indexes far out of range (StageChangeEvent's
    // from_stage union, then its to_stage enum).
    let prefix = [
        header(&c, "StageChangeEvent"),
        avro_string("e"),
        avro_string("H-union"),
        zigzag(JAN_2026),
    ]
    .concat();
    for tail in [
        zigzag(1_000_000_000),
        [zigzag(0), zigzag(1_000_000_000)].concat(),
    ] {
        let key = c.key();
        c.bad(
            StageChanges,
            key.into_bytes(),
            [&prefix[..], &tail].concat(),
            "invalid_avro",
        );
    }

    // NUL and invalid UTF-8 in every text field of every input record.
    c.text_cases(Leads, |id| lead(id, JAN_2026), lead_text_fields());
    c.text_cases(
        Interactions,
        |id| interaction(id, JAN_2026),
        interaction_text_fields(),
    );
    c.text_cases(
        StageChanges,
        |id| stage_change(id, JAN_2026),
        stage_text_fields(),
    );
    c.text_cases(
        Deliveries,
        |id| delivery(id, JAN_2026),
        delivery_text_fields(),
    );

    // Records cut at every byte of the datum (every field boundary among them).
    let cuts = [
        (StageChanges, c.single(&stage_change("H-cut", JAN_2026))),
        (Leads, c.single(&lead("H-cut", JAN_2026))),
    ];
    for (stream, whole) in cuts {
        for cut in 10..whole.len() {
            let key = c.key();
            c.bad(stream, key.into_bytes(), whole[..cut].to_vec(), "truncated");
        }
    }

    // Timestamps in the wrong unit or far away; within the bound, applied.
    for (at, expected) in [
        (now * 1_000, Some("event_time_out_of_range")),
        (now / 1_000, Some("event_time_out_of_range")),
        (253_402_214_400_000, Some("event_time_out_of_range")), // 9999-12-31
        (-1, Some("validation")),
        (now + 3_600_000, None),
    ] {
        let id = c.key();
        let event = stage_change(&id, at);
        let payload = c.single(&event);
        match expected {
            None => c.good(InputEvent::StageChange(event), payload),
            Some(kind) => c.bad(StageChanges, id.into_bytes(), payload, kind),
        }
    }
    let id = c.key();
    let json = format!(
        r#"{{"event_id":"x","lead_ext_id":"{id}","occurred_at":"9999-12-31T00:00:00Z","kind":"call"}}"#
    );
    c.bad(
        Interactions,
        id.into_bytes(),
        json.into_bytes(),
        "event_time_out_of_range",
    );

    // Deep JSON nesting, in a field and as the whole value.
    for depth in [200, 50_000] {
        let key = c.key();
        let mut json =
            br#"{"event_id":"x","lead_ext_id":"y","occurred_at":1,"kind":"call","attributes":"#
                .to_vec();
        json.extend(std::iter::repeat_n(b'[', depth));
        json.extend(std::iter::repeat_n(b']', depth));
        json.push(b'}');
        c.bad(Interactions, key.into_bytes(), json, "invalid_json");
        let key = c.key();
        let mut json = Vec::new();
        json.extend(std::iter::repeat_n(b'{', 1));
        json.extend(std::iter::repeat_n(&b"\"a\":{"[..], depth).flatten());
        json.extend(std::iter::repeat_n(b'}', depth + 1));
        c.bad(Leads, key.into_bytes(), json, "invalid_json");
    }
    c
}

/// A producer that can write the corpus's largest messages, whatever
/// limit the processor's own clients are configured with.
fn corpus_producer(config: &Config) -> FutureProducer {
    let mut kafka = config.kafka.clone();
    kafka.client.clear();
    kafka::client_config(
        &kafka,
        &[
            ("message.max.bytes", "4000000"),
            ("partitioner", "murmur2_random"),
            ("linger.ms", "5"),
        ],
    )
    .create()
    .unwrap()
}

async fn hostile_input_is_dead_lettered_and_good_input_applied<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let mut config = test_config(url);
    // The corpus is mostly bad on purpose; the budget is tested elsewhere.
    config.processor.dead_letter_max_ratio = 1.0;
    // The corpus's event dated an hour from now moves its partition's clock
    // by eleven months; a replay then fires every nurturing timer up to it,
    // which a live run does in later rounds. Input handling is what this
    // test is about, so nurturing stays out of it.
    config.nurture.enabled = false;
    // The processor's producer may not send what dead_letter_max_bytes
    // allows: the broker-side refusal ("message too large") must shrink
    // the dead letter, not stall the partition.
    config
        .kafka
        .client
        .insert("message.max.bytes".into(), "400000".into());
    kafka::create_topics(&config).await.unwrap();

    let simulated = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 11,
        leads: 20,
        days: 10,
        start: JAN_2026,
    });
    let half = simulated.len() / 2;
    let codec = Codec::new(None);
    kafka::publish_inputs(&config, &codec, &simulated[..half], InputFormat::Avro, 0)
        .await
        .unwrap();
    let corpus = corpus(config.processor.max_message_bytes);
    let producer = corpus_producer(&config);
    for case in &corpus.cases {
        let record = FutureRecord::to(config.topics.input(case.stream))
            .key(&case.key[..])
            .payload(&case.payload[..]);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker takes every corpus message");
    }
    kafka::publish_inputs(&config, &codec, &simulated[half..], InputFormat::Json, 0)
        .await
        .unwrap();

    let (task, _) = common::spawn_pipeline(&config, store.clone(), Duration::from_secs(8));
    let summary = task.await.unwrap().expect("the processor stays up");

    let bad: Vec<&Case> = corpus
        .cases
        .iter()
        .filter(|c| c.expected.is_some())
        .collect();
    let good: Vec<InputEvent> = simulated[..half]
        .iter()
        .cloned()
        .chain(corpus.cases.iter().filter_map(|c| c.good.clone()))
        .chain(simulated[half..].iter().cloned())
        .collect();
    assert_eq!(summary.dead_lettered, bad.len() as u64);
    assert_eq!(summary.applied + summary.duplicates, good.len() as u64);

    // Each dead letter is its case's, with the expected reason.
    let by_prefix: HashMap<Vec<u8>, &Case> = bad
        .iter()
        .map(|c| {
            let end = c.key.iter().position(|&b| b == b':').unwrap() + 1;
            (c.key[..end].to_vec(), *c)
        })
        .collect();
    let letters = read_topic(&config, &config.topics.dlq);
    assert_eq!(letters.len(), bad.len());
    let mut seen = std::collections::HashSet::new();
    for letter in &letters {
        let key = letter.key.as_deref().expect("dead letters keep the key");
        let end = key.iter().position(|&b| b == b':').unwrap() + 1;
        let case = by_prefix.get(&key[..end]).unwrap_or_else(|| {
            panic!(
                "dead letter for unknown key {}",
                String::from_utf8_lossy(&key[..end])
            )
        });
        assert!(seen.insert(key[..end].to_vec()), "one dead letter per case");
        let name = String::from_utf8_lossy(&key[..end]);
        assert_eq!(
            letter.header(dlq_headers::ERROR_KIND),
            case.expected,
            "{name}: {:?}",
            letter.header(dlq_headers::ERROR_MESSAGE)
        );
        assert_eq!(
            letter.header(dlq_headers::SOURCE_TOPIC),
            Some(config.topics.input(case.stream))
        );
        let payload = letter.payload.as_deref().unwrap_or_default();
        if letter.header(dlq_headers::TRUNCATED) == Some("true") {
            assert!(
                payload.len() < case.payload.len() || key.len() < case.key.len(),
                "{name}"
            );
            assert_eq!(
                payload,
                &case.payload[..payload.len()],
                "{name}: a prefix of the original"
            );
            assert_eq!(
                letter.header(dlq_headers::ORIGINAL_VALUE_BYTES),
                Some(case.payload.len().to_string().as_str())
            );
            assert!(
                payload.len() + key.len() <= 400_000,
                "{name}: fits the producer"
            );
        } else {
            assert_eq!(payload, &case.payload[..], "{name}: the original bytes");
            assert_eq!(key, &case.key[..], "{name}");
        }
    }
    // The oversize cases could only be cut; everything small went whole.
    let cut = letters
        .iter()
        .filter(|l| l.header(dlq_headers::TRUNCATED) == Some("true"))
        .count();
    assert_eq!(cut, 3, "too_large, just under the limit, the 1 MB key");

    assert_same_states(
        &all_states(store.as_ref()).await,
        &clean_run(&config, &good).await.states,
    );
}

backend_tests!(hostile_input_is_dead_lettered_and_good_input_applied);
