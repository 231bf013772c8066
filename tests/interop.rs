//! Single-object Avro against an independent implementation (fastavro, in
//! the test venv `make test` installs): fastavro reads our outputs by their
//! fingerprint, and the processor applies what fastavro writes, through the
//! real broker, on both stores.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use leadflow::codec::Codec;
use leadflow::events::*;
use leadflow::store::LeadStore;
use leadflow::testing;
use serde_json::Value;

use common::{read_dead_letters, test_config};

/// The venv's interpreter: `LEADFLOW_TEST_PYTHON`, as `make test` sets it.
fn python() -> PathBuf {
    let path = std::env::var_os("LEADFLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/leadflow/test-venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} not found: `make test-venv` installs fastavro for this test",
        path.display()
    );
    path
}

fn peer(mode: &str, dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fastavro_peer.py");
    let out = Command::new(python())
        .arg(script)
        .arg(mode)
        .arg(dir)
        .output()
        .expect("run the fastavro peer");
    assert!(
        out.status.success(),
        "fastavro peer {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn outputs() -> Vec<(&'static str, Vec<u8>, Value)> {
    let codec = Codec::new(None);
    fn one<T: Record>(codec: &Codec, value: T) -> (&'static str, Vec<u8>, Value) {
        (
            T::NAME,
            codec.encode_single_object(&value).unwrap(),
            serde_json::to_value(&value).unwrap(),
        )
    }
    vec![
        one(
            &codec,
            LeadScore {
                score_id: "s-1".into(),
                lead_ext_id: "WEB-1".into(),
                computed_at: 1_767_312_000_123,
                initial_score: 61.5,
                ml_score: Some(73.25),
                ml_conversion_probability: Some(0.7325),
                final_score: 68.0,
                segment: Segment::HighPriority,
                model_version: Some("gbm-3".into()),
                top_factors: vec![ScoreFactor {
                    feature: "engagement".into(),
                    contribution: 0.5,
                }],
            },
        ),
        one(
            &codec,
            OutboundMessage {
                message_id: "m-1".into(),
                data: [("first_name".to_string(), "Núria".to_string())].into(),
                sequence: "high_priority".into(),
                step: 2,
                cycle: 1,
                scheduled_for: 1_767_398_400_000,
                created_at: 1_767_312_000_000,
                ..testing::outbound_message(
                    "WEB-1",
                    Channel::Sms,
                    "+34600000001",
                    "high_priority_followup",
                )
            },
        ),
        one(
            &codec,
            DeliveryEvent {
                event_id: "d-1".into(),
                reason: Some("mailbox does not exist".into()),
                ..testing::delivery("m-1", "WEB-1", DeliveryStatus::Bounced, 1_767_312_000_500)
            },
        ),
        one(
            &codec,
            ForecastEvent {
                forecast_id: "f-1".into(),
                kind: ForecastKind::PipelineValue,
                generated_at: 1_767_312_000_000,
                horizon_days: 30,
                confidence: 0.9,
                pipeline_value: Some(PipelineValueForecast {
                    current_pipeline_value: 1.0e6,
                    forecasted_value: 2.5e5,
                    conversion_rate: 0.25,
                    avg_deal_value: 12_500.0,
                    confidence: 0.9,
                    lower: 2.0e5,
                    upper: 3.0e5,
                    open_leads: 80,
                    expected_value: Some(4.0e5),
                    historical_estimate: None,
                    intervals: vec![leadflow::events::ValueInterval {
                        level: 0.9,
                        lower: 2.0e5,
                        upper: 3.0e5,
                    }],
                    breakdown: vec![leadflow::events::PipelineBreakdown {
                        dimension: "source".into(),
                        name: "web".into(),
                        open_leads: 80,
                        current_value: 1.0e6,
                        expected_value: 4.0e5,
                        expected_within_horizon: 2.5e5,
                    }],
                }),
                time_to_close: None,
                lead_generation: None,
            },
        ),
    ]
}

/// fastavro finds each of our messages' schemas by the fingerprint in its
/// header and reads the same values we wrote.
#[test]
fn fastavro_reads_our_single_object_outputs_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = outputs();
    for (i, (name, bytes, _)) in outputs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}-{name}.bin")), bytes).unwrap();
    }
    let lines: Vec<Value> = peer("read", dir.path())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), outputs.len());
    for (line, (name, _, ours)) in lines.iter().zip(&outputs) {
        assert_eq!(line["schema"], *name, "{line}");
        assert_eq!(&line["record"], ours, "{name}");
    }
}

async fn fastavro_inputs_are_applied<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let config = test_config(url);
    leadflow::kafka::create_topics(&config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    peer("write", dir.path());
    let manifest: Vec<Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let codec = Codec::new(None);
    for entry in &manifest {
        let bytes = std::fs::read(dir.path().join(entry["file"].as_str().unwrap())).unwrap();
        // The peer's fingerprint is the one we write for our current schemas.
        let schema = entry["schema"].as_str().unwrap();
        if !schema.contains(".") {
            let name = schema;
            assert_eq!(
                hex(&codec.schemas().current_fingerprint(name)),
                entry["fingerprint"].as_str().unwrap(),
                "{name}"
            );
        }
        let topic = match schema {
            "LeadEvent" | "LeadEvent.v1" => &config.topics.leads,
            "InteractionEvent" => &config.topics.interactions,
            _ => &config.topics.stage_changes,
        };
        let key = entry["record"]["lead_ext_id"].as_str().unwrap();
        common::produce(&config, topic, Some(key), &bytes).await;
    }
    let (task, _) = common::spawn_pipeline(&config, store.clone(), Duration::from_secs(6));
    let summary = task.await.unwrap().unwrap();
    assert_eq!(read_dead_letters(&config), vec![]);
    assert_eq!(summary.applied, 4);

    let one = store.get_lead("FA-1").await.unwrap().expect("FA-1 stored");
    assert_eq!(one.email.as_deref(), Some("ines@example.org"));
    assert_eq!(one.last_name.as_deref(), Some("Peña"));
    assert_eq!(one.timezone.as_deref(), Some("Europe/Madrid"));
    assert_eq!(
        one.attributes.get("industry").map(String::as_str),
        Some("logistics")
    );
    assert_eq!(one.created_at, Some(1_767_312_000_000));
    assert_eq!(one.stage, Stage::Qualified);
    assert_eq!(one.deal_value, Some(38_000.0));
    assert_eq!(
        one.last_contact_at,
        Some(1_767_315_600_000),
        "the email reply"
    );
    let two = store
        .get_lead("FA-2")
        .await
        .unwrap()
        .expect("FA-2 (v1 schema) stored");
    assert_eq!(two.email.as_deref(), Some("old@example.org"));
    assert_eq!(two.timezone, None);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

backend_tests!(fastavro_inputs_are_applied);
