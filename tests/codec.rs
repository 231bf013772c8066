//! The schemas in `schemas/` are the source of truth: every Rust type
//! round-trips through its schema in every wire format, its fields are
//! exactly the schema's, and a reader of today's schema reads what an older
//! producer wrote. The Confluent path runs against a local HTTP server that
//! speaks the Schema Registry's REST API.
//!
//! One file past 600 lines on purpose: the registry stand-in and the wire
//! formats are exercised together, one test per format and record type.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::zigzag;
use leadflow::codec::{
    fingerprint, legacy_fingerprint, Codec, CodecError, RegistryClient, CURRENT_SCHEMAS,
    HISTORICAL_SCHEMAS,
};
use leadflow::events::*;
use leadflow::testing;
use serde::Serialize;
use serde_json::{json, Value};

fn lead_event(full: bool) -> LeadEvent {
    LeadEvent {
        event_id: "ev-1".into(),
        lead_ext_id: "WEB-ABC123".into(),
        kind: LeadEventKind::Created,
        occurred_at: 1_767_225_600_123,
        email: full.then(|| "juan@example.com".into()),
        phone: full.then(|| "+34612345678".into()),
        first_name: full.then(|| "Juan".into()),
        last_name: full.then(|| "García".into()),
        company: full.then(|| "Mi Empresa".into()),
        source: full.then(|| "web".into()),
        owner: full.then(|| "rep-01".into()),
        estimated_value: full.then_some(50_000.0),
        probability: full.then_some(0.25),
        initial_score: full.then_some(72.5),
        consent: full.then(|| Consent {
            email: Some(true),
            sms: None,
            recorded_at: 1_767_225_600_000,
            source: "web_form:pricing".into(),
        }),
        timezone: full.then(|| "Europe/Madrid".into()),
        attributes: if full {
            BTreeMap::from([("industry".into(), "software".into())])
        } else {
            BTreeMap::new()
        },
    }
}

fn interaction() -> InteractionEvent {
    InteractionEvent {
        event_id: "ev-2".into(),
        actor: Some("lead".into()),
        attributes: BTreeMap::from([("campaign".into(), "spring".into())]),
        ..testing::interaction(
            "WEB-ABC123",
            2,
            InteractionKind::EmailReply,
            1_767_225_700_000,
            "email",
        )
    }
}

fn stage_change() -> StageChangeEvent {
    StageChangeEvent {
        event_id: "ev-3".into(),
        from_stage: Some(Stage::Negotiation),
        owner: Some("rep-01".into()),
        deal_value: Some(48_000.0),
        ..testing::stage_change("WEB-ABC123", 3, Stage::ClosedWon, 1_767_225_800_000)
    }
}

fn lead_score() -> LeadScore {
    LeadScore {
        score_id: "s-1".into(),
        lead_ext_id: "WEB-ABC123".into(),
        computed_at: 1_767_225_900_000,
        initial_score: 60.0,
        ml_score: Some(81.2),
        ml_conversion_probability: Some(0.812),
        final_score: 70.6,
        segment: Segment::HighPriority,
        model_version: Some("gb-3".into()),
        top_factors: vec![ScoreFactor {
            feature: "engagement.email_reply".into(),
            contribution: 0.4,
        }],
    }
}

fn outbound() -> OutboundMessage {
    OutboundMessage {
        message_id: "m-1".into(),
        data: BTreeMap::from([("first_name".into(), "Juan".into())]),
        sequence: "high_priority".into(),
        step: 3,
        cycle: 1,
        variant: Some("B".into()),
        scheduled_for: 1_767_312_000_000,
        created_at: 1_767_225_600_000,
        ..testing::outbound_message(
            "WEB-ABC123",
            Channel::Sms,
            "+34612345678",
            "high_priority_followup",
        )
    }
}

fn delivery() -> DeliveryEvent {
    DeliveryEvent {
        event_id: "d-1".into(),
        reason: Some("mailbox does not exist".into()),
        ..testing::delivery(
            "m-1",
            "WEB-ABC123",
            DeliveryStatus::Bounced,
            1_767_312_000_500,
        )
    }
}

fn forecast() -> ForecastEvent {
    ForecastEvent {
        forecast_id: "f-1".into(),
        kind: ForecastKind::LeadGeneration,
        generated_at: 1_767_225_600_000,
        horizon_days: 7,
        confidence: 0.8,
        pipeline_value: Some(PipelineValueForecast {
            current_pipeline_value: 500_000.0,
            forecasted_value: 350_000.0,
            conversion_rate: 0.25,
            avg_deal_value: 50_000.0,
            confidence: 0.8,
            lower: 300_000.0,
            upper: 400_000.0,
            open_leads: 40,
            expected_value: Some(420_000.0),
            historical_estimate: Some(500_000.0),
            intervals: vec![leadflow::events::ValueInterval {
                level: 0.8,
                lower: 300_000.0,
                upper: 400_000.0,
            }],
            breakdown: vec![leadflow::events::PipelineBreakdown {
                dimension: "owner".into(),
                name: "ana".into(),
                open_leads: 40,
                current_value: 500_000.0,
                expected_value: 420_000.0,
                expected_within_horizon: 350_000.0,
            }],
        }),
        time_to_close: Some(TimeToCloseForecast {
            mean_days: 21.5,
            median_days: 18.0,
            lower_days: 7.0,
            upper_days: 45.0,
            sample_size: 120,
            p90_days: None,
            by_source: vec![leadflow::events::SourceTimeToClose {
                source: "web".into(),
                sample_size: 60,
                p25_days: Some(6.0),
                median_days: Some(17.5),
                p75_days: None,
                p90_days: None,
            }],
        }),
        lead_generation: Some(LeadGenerationForecast {
            expected_leads: 70.0,
            lower: 55.0,
            upper: 85.0,
            daily: vec![DailyLeadForecast {
                date: "2026-01-02".into(),
                expected: 10.0,
                lower: 7.0,
                upper: 13.0,
            }],
        }),
    }
}

/// Field names of the record schema, recursively as `record.field` paths.
fn schema_fields(schema: &Schema, prefix: &str, out: &mut BTreeSet<String>) {
    match schema {
        Schema::Record(r) => {
            for f in &r.fields {
                let path = format!("{prefix}{}", f.name);
                out.insert(path.clone());
                schema_fields(&f.schema, &format!("{path}."), out);
            }
        }
        Schema::Union(u) => {
            for v in u.variants() {
                schema_fields(v, prefix, out);
            }
        }
        Schema::Array(a) => schema_fields(&a.items, prefix, out),
        _ => {}
    }
}

/// Field names of a serialized value, recursively, the same way.
fn value_fields(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.insert(path.clone());
                // Avro maps (attributes, data) have free-form keys, not fields.
                if !matches!(k.as_str(), "attributes" | "data") {
                    value_fields(v, &format!("{path}."), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                value_fields(first, prefix, out);
            }
        }
        _ => {}
    }
}

fn assert_fields_match<T: Record>(value: &T) {
    let (_, text) = CURRENT_SCHEMAS
        .iter()
        .find(|(n, _)| *n == T::NAME)
        .expect("schema file");
    let schema = Schema::parse_str(text).unwrap();
    let mut expected = BTreeSet::new();
    schema_fields(&schema, "", &mut expected);
    let mut actual = BTreeSet::new();
    value_fields(&serde_json::to_value(value).unwrap(), "", &mut actual);
    assert_eq!(
        actual,
        expected,
        "{}: Rust fields differ from schemas/{}.avsc",
        T::NAME,
        T::NAME
    );
}

async fn round_trip<T: Record + PartialEq + std::fmt::Debug>(codec: &Codec, value: &T) {
    let single = codec.encode_single_object(value).unwrap();
    assert_eq!(&single[..2], &[0xC3, 0x01]);
    assert_eq!(
        codec.decode::<T>(&single).await.unwrap(),
        *value,
        "{} single-object",
        T::NAME
    );
    let json = Codec::encode_json(value).unwrap();
    assert_eq!(
        codec.decode::<T>(&json).await.unwrap(),
        *value,
        "{} JSON",
        T::NAME
    );
}

#[tokio::test]
async fn every_record_round_trips_and_matches_its_schema() {
    let codec = Codec::new(None);
    round_trip(&codec, &lead_event(true)).await;
    round_trip(&codec, &lead_event(false)).await;
    round_trip(&codec, &interaction()).await;
    round_trip(&codec, &stage_change()).await;
    round_trip(&codec, &lead_score()).await;
    round_trip(&codec, &outbound()).await;
    round_trip(&codec, &delivery()).await;
    round_trip(&codec, &forecast()).await;
    assert_fields_match(&lead_event(true));
    assert_fields_match(&interaction());
    assert_fields_match(&stage_change());
    assert_fields_match(&lead_score());
    assert_fields_match(&outbound());
    assert_fields_match(&delivery());
    assert_fields_match(&forecast());
    // Every schema file is covered above.
    assert_eq!(CURRENT_SCHEMAS.len(), leadflow::codec::record_names().len());
}

#[tokio::test]
async fn schema_files_on_disk_are_the_compiled_in_ones() {
    for (name, text) in CURRENT_SCHEMAS {
        let on_disk = std::fs::read_to_string(format!("schemas/{name}.avsc")).unwrap();
        assert_eq!(&on_disk, text, "schemas/{name}.avsc");
        let schema = Schema::parse_str(text).unwrap();
        match schema {
            Schema::Record(r) => {
                assert_eq!(r.name.name, *name);
                assert_eq!(r.name.namespace.as_deref(), Some("io.leadflow"));
            }
            other => panic!("{name} is not a record: {other:?}"),
        }
    }
}

/// Encodes `value` as a single object with an explicit writer schema and header fingerprint.
fn single_object_with(
    schema: &Schema,
    fingerprint: [u8; 8],
    value: apache_avro::types::Value,
) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fingerprint);
    out.extend_from_slice(&apache_avro::to_avro_datum(schema, value).unwrap());
    out
}

fn v1_lead_event_text() -> &'static str {
    HISTORICAL_SCHEMAS
        .iter()
        .find(|(n, _)| *n == "LeadEvent")
        .unwrap()
        .1
}

fn v1_lead_event_schema() -> Schema {
    Schema::parse_str(v1_lead_event_text()).unwrap()
}

/// A LeadEvent as a v1 producer (no timezone, no attributes) would write it.
fn v1_lead_event_value(schema: &Schema) -> apache_avro::types::Value {
    #[derive(Serialize)]
    struct V1 {
        event_id: String,
        lead_ext_id: String,
        kind: LeadEventKind,
        occurred_at: i64,
        email: Option<String>,
        phone: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        company: Option<String>,
        source: Option<String>,
        owner: Option<String>,
        estimated_value: Option<f64>,
        probability: Option<f64>,
        initial_score: Option<f64>,
        consent: Option<Consent>,
    }
    let full = lead_event(true);
    let v1 = V1 {
        event_id: full.event_id,
        lead_ext_id: full.lead_ext_id,
        kind: full.kind,
        occurred_at: full.occurred_at,
        email: full.email,
        phone: full.phone,
        first_name: full.first_name,
        last_name: full.last_name,
        company: full.company,
        source: full.source,
        owner: full.owner,
        estimated_value: full.estimated_value,
        probability: full.probability,
        initial_score: full.initial_score,
        consent: full.consent,
    };
    apache_avro::to_value(v1).unwrap().resolve(schema).unwrap()
}

#[tokio::test]
async fn current_reader_reads_records_written_with_the_v1_schema() {
    let v1 = v1_lead_event_schema();
    let codec = Codec::new(None);
    let standard = fingerprint(v1_lead_event_text()).unwrap();
    assert_ne!(standard, codec.schemas().current_fingerprint("LeadEvent"));
    let mut expected = lead_event(true);
    // The fields v2 added take their schema defaults.
    expected.timezone = None;
    expected.attributes = BTreeMap::new();
    // By the standard fingerprint, and by the one leadflow wrote before.
    for fp in [standard, legacy_fingerprint(&v1)] {
        let bytes = single_object_with(&v1, fp, v1_lead_event_value(&v1));
        let decoded: LeadEvent = codec.decode(&bytes).await.unwrap();
        assert_eq!(decoded, expected);
    }
}

/// Records written before the fingerprints followed the specification
/// carry apache-avro's; they still read, and new ones carry the standard one.
#[tokio::test]
async fn single_objects_carry_the_standard_fingerprint_and_old_ones_still_read() {
    let codec = Codec::new(None);
    for (name, text) in CURRENT_SCHEMAS {
        let standard = fingerprint(text).unwrap();
        assert_eq!(
            codec.schemas().current_fingerprint(name),
            standard,
            "{name}"
        );
        let schema = Schema::parse_str(text).unwrap();
        // Every schema of ours has a timestamp-millis field, where
        // apache-avro's canonical form departs from the specification.
        assert_ne!(legacy_fingerprint(&schema), standard, "{name}");
    }
    let event = stage_change();
    let new = codec.encode_single_object(&event).unwrap();
    assert_eq!(
        &new[2..10],
        &codec.schemas().current_fingerprint("StageChangeEvent")
    );
    let schema = codec.schemas().current("StageChangeEvent").clone();
    let mut old = new.clone();
    old[2..10].copy_from_slice(&legacy_fingerprint(&schema));
    assert_eq!(codec.decode::<StageChangeEvent>(&old).await.unwrap(), event);
}

/// A record cut anywhere before its end is `truncated`, never a record with
/// its missing fields read as null.
#[tokio::test]
async fn a_record_cut_at_any_byte_is_truncated() {
    let codec = Codec::new(None);
    let records: Vec<(&str, Vec<u8>)> = vec![
        (
            "StageChangeEvent",
            codec.encode_single_object(&stage_change()).unwrap(),
        ),
        (
            "LeadEvent",
            codec.encode_single_object(&lead_event(true)).unwrap(),
        ),
        (
            "InteractionEvent",
            codec.encode_single_object(&interaction()).unwrap(),
        ),
        (
            "DeliveryEvent",
            codec.encode_single_object(&delivery()).unwrap(),
        ),
        (
            "OutboundMessage",
            codec.encode_single_object(&outbound()).unwrap(),
        ),
    ];
    for (name, bytes) in records {
        for cut in 10..bytes.len() {
            let err = match name {
                "StageChangeEvent" => codec.decode::<StageChangeEvent>(&bytes[..cut]).await.err(),
                "LeadEvent" => codec.decode::<LeadEvent>(&bytes[..cut]).await.err(),
                "InteractionEvent" => codec.decode::<InteractionEvent>(&bytes[..cut]).await.err(),
                "DeliveryEvent" => codec.decode::<DeliveryEvent>(&bytes[..cut]).await.err(),
                _ => codec.decode::<OutboundMessage>(&bytes[..cut]).await.err(),
            };
            let err = err
                .unwrap_or_else(|| panic!("{name} cut at {cut} of {} was accepted", bytes.len()));
            assert_eq!(err.kind(), "truncated", "{name} cut at {cut}: {err}");
        }
    }
}

/// 63 bytes claiming a map of 500 million attributes: refused as truncated
/// without the decoder reserving room for them (that aborted the process).
#[tokio::test]
async fn a_huge_count_claim_is_refused_without_allocating() {
    let codec = Codec::new(None);
    let mut event = lead_event(false);
    event.attributes.clear();
    let good = codec.encode_single_object(&event).unwrap();
    // The attributes map is the last field: an empty map is one 0 byte.
    assert_eq!(*good.last().unwrap(), 0);
    let mut hostile = good[..good.len() - 1].to_vec();
    hostile.extend_from_slice(&zigzag(500_000_000));
    hostile.extend_from_slice(b"\x02k\x02v");
    let err = codec.decode::<LeadEvent>(&hostile).await.unwrap_err();
    assert_eq!(err.kind(), "truncated", "{err}");
    assert!(err.to_string().contains("500000000"), "{err}");
}

#[tokio::test]
async fn malformed_input_is_rejected_with_a_reason() {
    let codec = Codec::new(None);
    let good = codec.encode_single_object(&interaction()).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        ("garbage", b"\x07\x99garbage".to_vec(), "unknown_format"),
        ("truncated header", vec![0xC3, 0x01, 1, 2], "truncated"),
        (
            "truncated datum",
            good[..good.len() - 6].to_vec(),
            "truncated",
        ),
        (
            "unknown fingerprint",
            [&[0xC3, 0x01][..], &[9; 8], &good[10..]].concat(),
            "unknown_schema",
        ),
        (
            "confluent without registry",
            [&[0u8, 0, 0, 0, 7][..], &good[10..]].concat(),
            "unknown_schema",
        ),
        (
            "wrong JSON types",
            br#"{"event_id": 5, "lead_ext_id": "X", "occurred_at": "soon", "kind": "call"}"#
                .to_vec(),
            "invalid_json",
        ),
        (
            "unknown enum symbol",
            br#"{"event_id": "e", "lead_ext_id": "X", "occurred_at": 1, "kind": "carrier_pigeon"}"#
                .to_vec(),
            "invalid_json",
        ),
    ];
    for (name, bytes, kind) in cases {
        let err = codec
            .decode::<InteractionEvent>(&bytes)
            .await
            .expect_err(name);
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert!(!err.is_transient(), "{name}");
    }
    // A schema for another record is refused, not misread.
    let lead = codec.encode_single_object(&lead_event(true)).unwrap();
    let err = codec.decode::<InteractionEvent>(&lead).await.unwrap_err();
    assert!(matches!(err, CodecError::SchemaMismatch { .. }), "{err}");
}

#[tokio::test]
async fn json_input_accepts_millis_and_rfc3339_and_validates() {
    let codec = Codec::new(None);
    let json = br#"{"event_id":"j-1","lead_ext_id":"WEB-J","occurred_at":"2026-01-01T10:00:00+01:00",
        "kind":"created","email":"a@example.com","consent":{"email":true,"recorded_at":1767258000000,"source":"form"},
        "unknown_extra_field": 1}"#;
    let event = codec.decode_input(InputStream::Leads, json).await.unwrap();
    match event {
        InputEvent::Lead(e) => {
            assert_eq!(e.occurred_at, 1_767_258_000_000);
            assert_eq!(e.consent.unwrap().email, Some(true));
            assert!(e.attributes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let bad = br#"{"event_id":"j-2","lead_ext_id":"WEB-J","occurred_at":1,"probability":1.7}"#;
    let err = codec
        .decode_input(InputStream::Leads, bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "validation");
    assert!(err.to_string().contains("probability 1.7"), "{err}");
}

/// A local server speaking the Confluent Schema Registry REST API.
#[derive(Clone, Default)]
struct FakeRegistry {
    schemas: Arc<Mutex<Vec<(String, String)>>>,
    fetches: Arc<AtomicUsize>,
    registrations: Arc<AtomicUsize>,
}

async fn get_schema(State(r): State<FakeRegistry>, Path(id): Path<u32>) -> impl IntoResponse {
    r.fetches.fetch_add(1, Ordering::SeqCst);
    let schemas = r.schemas.lock().unwrap();
    match schemas.get(id as usize - 1) {
        Some((_, schema)) if id > 0 => (StatusCode::OK, Json(json!({ "schema": schema }))),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error_code": 40403, "message": "Schema not found" })),
        ),
    }
}

async fn register(
    State(r): State<FakeRegistry>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    r.registrations.fetch_add(1, Ordering::SeqCst);
    let schema = body["schema"].as_str().expect("schema field").to_string();
    if Schema::parse_str(&schema).is_err() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error_code": 42201, "message": "Invalid schema" })),
        );
    }
    let mut schemas = r.schemas.lock().unwrap();
    let id = match schemas
        .iter()
        .position(|(s, text)| *s == subject && *text == schema)
    {
        Some(i) => i + 1,
        None => {
            schemas.push((subject, schema));
            schemas.len()
        }
    };
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn start_registry(registry: FakeRegistry) -> String {
    let app = Router::new()
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/subjects/{subject}/versions", post(register))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn confluent_framing_registers_fetches_and_caches_schemas() {
    let registry = FakeRegistry::default();
    let url = start_registry(registry.clone()).await;
    let producer = Codec::new(Some(
        RegistryClient::new(&url, Duration::from_secs(2)).unwrap(),
    ));
    let consumer = Codec::new(Some(
        RegistryClient::new(&url, Duration::from_secs(2)).unwrap(),
    ));

    let a = producer
        .encode("lead-interactions", &interaction())
        .await
        .unwrap();
    let b = producer
        .encode("lead-interactions", &interaction())
        .await
        .unwrap();
    let c = producer.encode("leads", &lead_event(true)).await.unwrap();
    assert_eq!(a[0], 0, "Confluent magic byte");
    assert_eq!(u32::from_be_bytes(a[1..5].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(c[1..5].try_into().unwrap()), 2);
    assert_eq!(a, b);
    assert_eq!(
        registry.registrations.load(Ordering::SeqCst),
        2,
        "second encode used the cache"
    );
    assert_eq!(
        registry.schemas.lock().unwrap()[0].0,
        "lead-interactions-value"
    );

    for _ in 0..3 {
        assert_eq!(
            consumer.decode::<InteractionEvent>(&a).await.unwrap(),
            interaction()
        );
    }
    assert_eq!(
        consumer.decode::<LeadEvent>(&c).await.unwrap(),
        lead_event(true)
    );
    assert_eq!(
        registry.fetches.load(Ordering::SeqCst),
        2,
        "one fetch per schema id"
    );

    // What was registered is the schema's own text: docs, defaults and
    // logical types, which the canonical form drops.
    for (_, text) in registry.schemas.lock().unwrap().iter() {
        assert!(
            text.contains("\"logicalType\": \"timestamp-millis\""),
            "{text}"
        );
        assert!(text.contains("\"default\""), "{text}");
        assert!(text.contains("\"doc\""), "{text}");
    }

    // An older producer's schema, registered under its own id, still reads.
    let v1 = v1_lead_event_schema();
    registry
        .schemas
        .lock()
        .unwrap()
        .push(("leads-value".into(), v1.canonical_form()));
    let v1_id = registry.schemas.lock().unwrap().len() as u32;
    let mut framed = vec![0];
    framed.extend_from_slice(&v1_id.to_be_bytes());
    framed.extend_from_slice(&apache_avro::to_avro_datum(&v1, v1_lead_event_value(&v1)).unwrap());
    let old: LeadEvent = consumer.decode(&framed).await.unwrap();
    assert_eq!(old.timezone, None);
    assert_eq!(old.email.as_deref(), Some("juan@example.com"));

    let mut unknown = a.clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    let err = consumer
        .decode::<InteractionEvent>(&unknown)
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId(999)), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transient_error() {
    // Bind and drop to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let codec = Codec::new(Some(
        RegistryClient::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(500),
        )
        .unwrap(),
    ));
    let err = codec
        .decode::<InteractionEvent>(&[0, 0, 0, 0, 1, 2])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let err = codec.encode("t", &interaction()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// A ForecastEvent written by a v1 producer (before the breakdown, the
/// levels and the per-source times) reads with the new fields' defaults.
#[tokio::test]
async fn forecast_events_written_with_the_v1_schema_still_read() {
    #[derive(Serialize)]
    struct V1Pipeline {
        current_pipeline_value: f64,
        forecasted_value: f64,
        conversion_rate: f64,
        avg_deal_value: f64,
        confidence: f64,
        lower: f64,
        upper: f64,
    }
    #[derive(Serialize)]
    struct V1 {
        forecast_id: String,
        kind: ForecastKind,
        generated_at: i64,
        horizon_days: i32,
        confidence: f64,
        pipeline_value: Option<V1Pipeline>,
        time_to_close: Option<()>,
        lead_generation: Option<()>,
    }
    let text = HISTORICAL_SCHEMAS
        .iter()
        .find(|(n, _)| *n == "ForecastEvent")
        .unwrap()
        .1;
    let v1 = Schema::parse_str(text).unwrap();
    let value = apache_avro::to_value(V1 {
        forecast_id: "f-9".into(),
        kind: ForecastKind::PipelineValue,
        generated_at: 1_767_571_200_000,
        horizon_days: 30,
        confidence: 0.8,
        pipeline_value: Some(V1Pipeline {
            current_pipeline_value: 9.0e5,
            forecasted_value: 1.5e5,
            conversion_rate: 0.2,
            avg_deal_value: 30_000.0,
            confidence: 0.8,
            lower: 1.0e5,
            upper: 2.0e5,
        }),
        time_to_close: None,
        lead_generation: None,
    })
    .unwrap()
    .resolve(&v1)
    .unwrap();
    let codec = Codec::new(None);
    let standard = fingerprint(text).unwrap();
    assert_ne!(
        standard,
        codec.schemas().current_fingerprint("ForecastEvent")
    );
    let decoded: ForecastEvent = codec
        .decode(&single_object_with(&v1, standard, value))
        .await
        .unwrap();
    let pipeline = decoded.pipeline_value.unwrap();
    assert_eq!((pipeline.lower, pipeline.upper), (1.0e5, 2.0e5));
    assert_eq!(pipeline.open_leads, 0);
    assert_eq!(pipeline.expected_value, None);
    assert!(pipeline.intervals.is_empty() && pipeline.breakdown.is_empty());
}
