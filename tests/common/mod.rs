//! Shared test harness: real PostgreSQL, SQLite and Kafka-compatible broker.
//! `make test` starts the broker and PostgreSQL; a test whose service is
//! missing fails with a message that says how to start it.

#![allow(dead_code)]

pub mod expected;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use leadflow::config::Config;
use leadflow::store::prelude::*;
use leadflow::store::{LeadStore, PgStore, SqliteStore};
use sqlx::Connection;

pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn admin_database_url() -> String {
    std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the leadflow binary on the database at `db`, quietly.
pub fn run_cli(db: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("LEADFLOW_LOG", "warn")
        .output()
        .expect("run leadflow")
}

/// Standard output and standard error as text.
pub fn output_text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A PostgreSQL database of the test's own, dropped when the guard goes.
pub struct TestPg {
    pub url: String,
    name: String,
}

impl TestPg {
    pub async fn new() -> TestPg {
        let admin = admin_database_url();
        let name = unique("leadflow_test");
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is not reachable ({e}); run `make postgres` or set LEADFLOW_TEST_DATABASE_URL")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestPg {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn store(&self) -> PgStore {
        let store = PgStore::connect(&self.url, 4)
            .await
            .expect("connect test database");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let admin = admin_database_url();
        let name = self.name.clone();
        // Drop on a thread of its own: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A SQLite file in a temporary directory of the test's own.
pub struct TestSqlite {
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestSqlite {
    pub fn new() -> TestSqlite {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("leadflow.db").display());
        TestSqlite { url, _dir: dir }
    }

    pub async fn store(&self) -> SqliteStore {
        let store = SqliteStore::connect(&self.url, 4)
            .await
            .expect("open test sqlite");
        store.migrate().await.expect("migrate");
        store
    }
}

/// Runs one SQL statement on a test database behind the store's back (to
/// damage a row the way a defect or a manual edit would).
pub async fn execute_sql(database_url: &str, sql: &str) {
    if database_url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
}

/// A config pointing at the test broker with topics and group of the test's own.
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::default();
    let id = unique("t");
    config.kafka.bootstrap_servers = kafka_bootstrap();
    config.kafka.group_id = format!("{id}-group");
    config.kafka.partitions = 3;
    config.kafka.session_timeout_ms = 6_000;
    config.topics = config.topics.with_prefix(&format!("{id}-"));
    config.database.url = database_url.to_string();
    config.processor.batch_linger_ms = 20;
    // Nurturing timers on event time: a live run is then comparable with a
    // replay of the same events, messages included. Tests of the wall clock
    // set it back and drive a ManualClock.
    config.processor.clock = leadflow::config::ClockMode::EventTime;
    config
}

/// Runs one async test body against both stores: `backend_tests!(name_of_body)`
/// defines `name_of_body::postgres` and `name_of_body::sqlite`.
#[macro_export]
macro_rules! backend_tests {
    ($($body:ident),+ $(,)?) => {
        $(
            mod $body {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = $crate::common::TestPg::new().await;
                    let store = db.store().await;
                    super::$body(std::sync::Arc::new(store), &db.url).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = $crate::common::TestSqlite::new();
                    let store = db.store().await;
                    super::$body(std::sync::Arc::new(store), &db.url).await;
                }
            }
        )+
    };
}

/// Every message of `topic`, read from the beginning to the high watermark
/// of each partition (assigned, not in a group): (partition, key, value, headers).
pub struct TopicMessage {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl TopicMessage {
    /// The value of header `name`, if the message carries it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

pub fn read_topic(config: &Config, topic: &str) -> Vec<TopicMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::Duration;

    let consumer: BaseConsumer = leadflow::kafka::client_config(
        &config.kafka,
        &[("group.id", "test-reader"), ("enable.auto.commit", "false")],
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // The end is the high watermark librdkafka caches from fetch responses.
    // Not ListOffsets: Nisshi 0.7.0 answers it with a count of record
    // batches rather than the next offset (docs/DECISIONS.md).
    let cached_high = |partition: i32| -> i64 {
        let name = std::ffi::CString::new(topic).unwrap();
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: valid client pointer; reads librdkafka's cached state only.
        unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
                &mut low,
                &mut high,
            );
        }
        high
    };
    let mut next = vec![0i64; config.kafka.partitions as usize];
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = (0..config.kafka.partitions).all(|p| {
            let high = cached_high(p);
            high >= 0 && next[p as usize] >= high
        });
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = result.unwrap();
        next[m.partition() as usize] = m.offset() + 1;
        out.push(TopicMessage {
            partition: m.partition(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

/// The ids of every output published (scores, then outbound messages), in
/// topic order (repeats kept).
pub async fn published_output_ids(config: &Config) -> Vec<String> {
    let mut ids = published_score_ids(config).await;
    ids.extend(
        published_messages(config)
            .await
            .into_iter()
            .map(|m| m.message_id),
    );
    ids.extend(
        published_forecasts(config)
            .await
            .into_iter()
            .map(|f| f.forecast_id),
    );
    ids
}

/// The ForecastEvents on the forecasts topic, in topic order (repeats kept).
pub async fn published_forecasts(config: &Config) -> Vec<leadflow::events::ForecastEvent> {
    let codec = leadflow::codec::Codec::new(None);
    let mut out = Vec::new();
    for m in read_topic(config, &config.topics.forecasts) {
        let forecast: leadflow::events::ForecastEvent =
            codec.decode(m.payload.as_deref().unwrap()).await.unwrap();
        assert_eq!(
            m.header("leadflow.output.id"),
            Some(forecast.forecast_id.as_str())
        );
        assert_eq!(
            m.key.as_deref(),
            Some(forecast.kind.as_str().as_bytes()),
            "keyed by kind"
        );
        out.push(forecast);
    }
    out
}

/// The OutboundMessages on the outbound topic, in topic order (repeats kept).
pub async fn published_messages(config: &Config) -> Vec<leadflow::events::OutboundMessage> {
    let codec = leadflow::codec::Codec::new(None);
    let mut out = Vec::new();
    for m in read_topic(config, &config.topics.outbound) {
        let message: leadflow::events::OutboundMessage =
            codec.decode(m.payload.as_deref().unwrap()).await.unwrap();
        assert_eq!(
            m.header("leadflow.output.id"),
            Some(message.message_id.as_str())
        );
        assert_eq!(m.key.as_deref(), Some(message.lead_ext_id.as_bytes()));
        out.push(message);
    }
    out
}

/// The score ids published on the scores topic, in topic order (repeats
/// kept); an erased lead's tombstone (no value) by its output id header.
pub async fn published_score_ids(config: &Config) -> Vec<String> {
    let codec = leadflow::codec::Codec::new(None);
    let mut ids = Vec::new();
    for m in read_topic(config, &config.topics.scores) {
        if m.payload.is_none() {
            ids.push(
                m.header("leadflow.output.id")
                    .expect("output id header")
                    .to_string(),
            );
            continue;
        }
        let score: leadflow::events::LeadScore =
            codec.decode(m.payload.as_deref().unwrap()).await.unwrap();
        assert_eq!(
            m.header("leadflow.output.id"),
            Some(score.score_id.as_str()),
            "output id header"
        );
        assert_eq!(
            m.key.as_deref(),
            Some(score.lead_ext_id.as_bytes()),
            "keyed by lead"
        );
        ids.push(score.score_id);
    }
    ids
}

/// Every stored lead state, by id.
pub async fn all_states<S: LeadStore>(
    store: &S,
) -> std::collections::BTreeMap<String, leadflow::core::state::LeadState> {
    store
        .all_lead_states()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lead_ext_id.clone(), l))
        .collect()
}

/// What one clean run of `events` gives: a replay into a fresh SQLite store.
pub struct CleanRun {
    pub states: std::collections::BTreeMap<String, leadflow::core::state::LeadState>,
    pub output_ids: std::collections::BTreeSet<String>,
    /// Each output's id and the lead it is about (none for a forecast).
    pub output_leads: std::collections::BTreeMap<String, Option<String>>,
    pub outputs: usize,
    /// Of the outputs, the OutboundMessages.
    pub messages: usize,
    /// Of the outputs, the forecasts, by id.
    pub forecasts: std::collections::BTreeMap<String, leadflow::events::ForecastEvent>,
    /// The replay's `lead_transitions` rows.
    pub transitions: Vec<leadflow::store::TransitionRow>,
    /// The replay's daily analytics history (`lead_analytics`).
    pub history: Vec<leadflow::store::AnalyticsRow>,
    /// Worked out from the input alone: each distinct stage change as
    /// (lead, event id, to stage, at), and the leads a LeadEvent created.
    pub input_stage_changes: std::collections::BTreeSet<(String, String, String, i64)>,
    pub input_created: std::collections::BTreeSet<String>,
    /// Worked out from the input alone: the funnel (reached per step, lost)
    /// of the creation cohorts `[from, until)`: all time, and ten whole
    /// days in the middle of the stream.
    pub input_funnels: Vec<(i64, i64, (Vec<i64>, i64))>,
}

pub async fn clean_run(config: &Config, events: &[leadflow::events::InputEvent]) -> CleanRun {
    clean_run_with_model(config, events, None).await
}

/// A gradient-boosting model trained on another simulated stream (seed 99,
/// 1,500 leads over 120 days), ready to copy into a store.
pub async fn trained_model(config: &Config) -> leadflow::store::NewModel {
    let db = TestSqlite::new();
    let store = db.store().await;
    let events = leadflow::simulate::generate(&leadflow::simulate::SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 99,
        leads: 1_500,
        days: 120,
        start: 1_751_328_000_000, // 2025-07-01
    });
    leadflow::pipeline::replay::replay(config, &store, events)
        .await
        .unwrap();
    let dataset = leadflow::registry::dataset_from_store(&store, &config.scoring, 365)
        .await
        .unwrap();
    let registered = leadflow::registry::train_and_register(
        &store,
        &config.scoring,
        dataset,
        "test",
        leadflow::registry::Activation::Always,
        std::sync::Arc::new(leadflow::ml::training::NoProgress),
        1_760_000_000_000,
        false,
    )
    .await
    .unwrap();
    let record = store
        .model_record(registered.version)
        .await
        .unwrap()
        .unwrap();
    let document = store
        .model_document(registered.version)
        .await
        .unwrap()
        .unwrap();
    leadflow::store::NewModel {
        entry: record.entry,
        model: document.model,
        profile: document.profile,
    }
}

/// Adds `model` to `store`'s registry and makes it the active one.
pub async fn activate_copy<S: LeadStore>(store: &S, model: &leadflow::store::NewModel) {
    let version = store.insert_model(model).await.unwrap();
    store
        .activate_model(version, 1_760_000_000_000)
        .await
        .unwrap();
}

/// [`clean_run`] with `model` active in the replay's store.
pub async fn clean_run_with_model(
    config: &Config,
    events: &[leadflow::events::InputEvent],
    model: Option<&leadflow::store::NewModel>,
) -> CleanRun {
    let db = TestSqlite::new();
    let store = db.store().await;
    if let Some(model) = model {
        activate_copy(&store, model).await;
    }
    let (_, outputs) = leadflow::pipeline::replay::replay(config, &store, events.to_vec())
        .await
        .unwrap();
    let output_ids = outputs.iter().map(|o| o.id().to_string()).collect();
    let output_leads = outputs
        .iter()
        .map(|o| (o.id().to_string(), o.lead_ext_id().map(str::to_string)))
        .collect();
    let messages = outputs
        .iter()
        .filter(|o| matches!(o, leadflow::core::apply::Output::Message(_)))
        .count();
    let forecasts = outputs
        .iter()
        .filter_map(|o| match o {
            leadflow::core::apply::Output::Forecast(f) => Some((f.forecast_id.clone(), f.clone())),
            _ => None,
        })
        .collect();
    let mut input_stage_changes = std::collections::BTreeSet::new();
    let mut input_created = std::collections::BTreeSet::new();
    for event in events {
        match event {
            leadflow::events::InputEvent::StageChange(e) => {
                input_stage_changes.insert((
                    e.lead_ext_id.clone(),
                    e.event_id.clone(),
                    e.to_stage.as_str().to_string(),
                    e.occurred_at,
                ));
            }
            leadflow::events::InputEvent::Lead(e)
                if e.kind == leadflow::events::LeadEventKind::Created =>
            {
                input_created.insert(e.lead_ext_id.clone());
            }
            _ => {}
        }
    }
    let (first, last) = events
        .iter()
        .map(|e| e.occurred_at())
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let middle = (first + (last - first) / 2).div_euclid(expected::DAY) * expected::DAY;
    let input_funnels = [
        (i64::MIN, i64::MAX),
        (middle - 5 * expected::DAY, middle + 5 * expected::DAY),
    ]
    .into_iter()
    .map(|(from, until)| (from, until, expected::expected_funnel(events, from, until)))
    .collect();
    CleanRun {
        states: all_states(&store).await,
        output_ids,
        output_leads,
        outputs: outputs.len(),
        messages,
        forecasts,
        transitions: store.transitions(None).await.unwrap(),
        history: store
            .analytics_history(i64::MIN, i64::MAX, "", "")
            .await
            .unwrap(),
        input_stage_changes,
        input_created,
        input_funnels,
    }
}

/// Asserts two sets of lead states are equal, naming the first lead that differs.
pub fn assert_same_states(
    actual: &std::collections::BTreeMap<String, leadflow::core::state::LeadState>,
    expected: &std::collections::BTreeMap<String, leadflow::core::state::LeadState>,
) {
    assert_eq!(actual.len(), expected.len(), "number of leads");
    for (id, want) in expected {
        let got = actual
            .get(id)
            .unwrap_or_else(|| panic!("lead {id} missing"));
        assert_eq!(got, want, "state of lead {id}");
    }
}

/// A pipeline run in the background until the returned sender is used (or
/// dropped).
pub type StoppablePipeline = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<
        Result<leadflow::pipeline::RunSummary, leadflow::pipeline::PipelineError>,
    >,
);

/// Runs a pipeline on `clock` with `metrics` in the background, with no
/// idle limit: tests that move the clock by hand stop it when done.
pub fn spawn_pipeline_on_clock<S: LeadStore + 'static>(
    config: &Config,
    store: std::sync::Arc<S>,
    metrics: std::sync::Arc<leadflow::metrics::Metrics>,
    clock: std::sync::Arc<leadflow::core::clock::ManualClock>,
) -> StoppablePipeline {
    let pipeline = leadflow::pipeline::Pipeline::new(
        config.clone(),
        store,
        std::sync::Arc::new(leadflow::codec::Codec::new(None)),
        metrics,
    )
    .expect("pipeline")
    .with_clock(clock);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pipeline
            .run(
                leadflow::pipeline::RunOptions {
                    exit_when_idle: None,
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
    });
    (stop, task)
}

/// Runs a pipeline in the background until it has been idle for `idle`;
/// returns its task and its metrics.
pub fn spawn_pipeline<S: LeadStore + 'static>(
    config: &Config,
    store: std::sync::Arc<S>,
    idle: std::time::Duration,
) -> (
    tokio::task::JoinHandle<
        Result<leadflow::pipeline::RunSummary, leadflow::pipeline::PipelineError>,
    >,
    std::sync::Arc<leadflow::metrics::Metrics>,
) {
    use std::sync::Arc;
    let metrics = Arc::new(leadflow::metrics::Metrics::new());
    let pipeline = leadflow::pipeline::Pipeline::new(
        config.clone(),
        store,
        Arc::new(leadflow::codec::Codec::new(None)),
        metrics.clone(),
    )
    .expect("pipeline");
    let task = tokio::spawn(async move {
        pipeline
            .run(
                leadflow::pipeline::RunOptions {
                    exit_when_idle: Some(idle),
                },
                std::future::pending(),
            )
            .await
    });
    (task, metrics)
}

/// Input messages the store has committed for the config's group.
pub async fn committed_messages<S: LeadStore>(store: &S, config: &Config) -> i64 {
    store
        .partition_offsets(&config.kafka.group_id)
        .await
        .unwrap()
        .iter()
        .map(|o| o.next_offset)
        .sum()
}

/// Creates the config's topics and publishes `days` of simulated traffic
/// for `leads` leads from 2026-01-01 (Avro, no registry); returns it.
pub async fn publish_simulated(
    config: &Config,
    seed: u64,
    leads: u32,
    days: u32,
) -> Vec<leadflow::events::InputEvent> {
    use leadflow::kafka;
    kafka::create_topics(config).await.unwrap();
    let events = leadflow::simulate::generate(&leadflow::simulate::SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed,
        leads,
        days,
        start: 1_767_225_600_000,
    });
    kafka::publish_inputs(
        config,
        &leadflow::codec::Codec::new(None),
        &events,
        kafka::InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
    events
}

/// Produces raw bytes (bad input, on purpose) to a topic.
pub async fn produce(config: &Config, topic: &str, key: Option<&str>, payload: &[u8]) {
    use rdkafka::producer::FutureRecord;
    let producer = leadflow::kafka::producer(&config.kafka).unwrap();
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, std::time::Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// (source topic, error kind, error message) of every dead letter, sorted.
pub fn read_dead_letters(config: &Config) -> Vec<(String, String, String)> {
    use leadflow::kafka::deadletter::dlq_headers;
    let mut out: Vec<_> = read_topic(config, &config.topics.dlq)
        .into_iter()
        .map(|m| {
            let h = |k: &str| {
                m.header(k)
                    .expect("dead letters carry every header")
                    .to_string()
            };
            (
                h(dlq_headers::SOURCE_TOPIC),
                h(dlq_headers::ERROR_KIND),
                h(dlq_headers::ERROR_MESSAGE),
            )
        })
        .collect();
    out.sort();
    out
}

/// Avro's zigzag varint encoding of a long, for hand-made (hostile) datums.
pub fn zigzag(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// Every row of every table of the database at `url` as text (all its
/// columns), with its table's name: what a scan for personal data reads.
pub async fn all_rows_as_text(url: &str) -> Vec<(String, String)> {
    use sqlx::Row;
    let mut out = Vec::new();
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for table in tables {
            let rows = sqlx::query(&format!("SELECT t::text FROM \"{table}\" t"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            out.extend(rows.iter().map(|r| (table.clone(), r.get::<String, _>(0))));
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for table in tables {
            let columns: Vec<String> =
                sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            let row_text = columns
                .iter()
                .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '')"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            // As bytes: a BLOB column (a migration's checksum) is no UTF-8.
            let rows = sqlx::query(&format!("SELECT CAST({row_text} AS BLOB) FROM \"{table}\""))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            out.extend(rows.iter().map(|r| {
                let bytes = r.get::<Vec<u8>, _>(0);
                (table.clone(), String::from_utf8_lossy(&bytes).into_owned())
            }));
        }
    }
    out
}
