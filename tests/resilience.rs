//! SPEC §5 under failure: the processor as a real child process, killed with
//! SIGKILL mid-stream, joined by a second instance and left by the first,
//! and cut off from its database. Each time the final state and the set of
//! published output ids (scores and nurturing messages: the processors run on
//! event time, so their timers fire as a replay's do) must equal one clean
//! run of the same events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadflow::analytics::funnel;
use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::ForecastEvent;
use leadflow::kafka::{self, InputFormat};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::{LeadStore, PgStore};

use common::{
    activate_copy, all_states, assert_same_states, clean_run, clean_run_with_model,
    committed_messages, published_forecasts, published_output_ids, spawn_pipeline, test_config,
    trained_model, CleanRun,
};

fn resilience_config(url: &str) -> Config {
    let mut config = test_config(url);
    // Small batches: many commits, so the kills land mid-stream.
    config.processor.batch_size = 10;
    config.processor.batch_linger_ms = 5;
    config.http.listen = "127.0.0.1:0".into();
    config
}

fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("leadflow.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

fn spawn_processor(config_path: &Path, log: &Path, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .arg("--config")
        .arg(config_path)
        .arg("run")
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("LEADFLOW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start leadflow run")
}

async fn wait_for_progress<S: LeadStore>(
    store: &S,
    config: &Config,
    at_least: i64,
    child: &mut Child,
    log: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if committed_messages(store, config).await >= at_least {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "processor exited early ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no progress to {at_least}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn wait_for_exit(child: &mut Child, log: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "processor failed ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "processor did not stop; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn assert_equals_clean_run<S: LeadStore>(store: &S, config: &Config, clean: &CleanRun) {
    assert_same_states(&all_states(store).await, &clean.states);
    // Stage transitions: one row each, as the replay wrote them, and as the
    // input says they happened.
    let transitions = store.transitions(None).await.unwrap();
    assert_eq!(transitions, clean.transitions, "lead_transitions");
    // The daily analytics history too: every day stored once, with the
    // replay's figures (a day is a function of the transitions before its end).
    let history = store
        .analytics_history(i64::MIN, i64::MAX, "", "")
        .await
        .unwrap();
    assert!(!history.is_empty());
    assert_eq!(history, clean.history, "lead_analytics");
    let stage_changes: BTreeSet<(String, String, String, i64)> = transitions
        .iter()
        .filter(|t| t.seq > 0)
        .map(|t| {
            let event = t.event_id.clone().expect("a stage change names its event");
            (t.lead_ext_id.clone(), event, t.to_stage.clone(), t.at)
        })
        .collect();
    assert_eq!(
        transitions.iter().filter(|t| t.seq > 0).count(),
        stage_changes.len(),
        "one row per stage change"
    );
    assert_eq!(
        stage_changes, clean.input_stage_changes,
        "stage changes of the input"
    );
    let created: BTreeSet<String> = transitions
        .iter()
        .filter(|t| t.seq == 0)
        .map(|t| t.lead_ext_id.clone())
        .collect();
    assert_eq!(created, clean.input_created, "creations of the input");
    // The funnel, from the counts the commit path keeps per creation day.
    for (from, until, expected) in &clean.input_funnels {
        let report = funnel::funnel(&store.furthest_stages(*from, *until).await.unwrap());
        let reached: Vec<i64> = report.steps.iter().map(|s| s.reached).collect();
        assert_eq!(
            &(reached, report.lost),
            expected,
            "funnel of [{from}, {until})"
        );
    }
    assert_eq!(store.outbox_depth().await.unwrap(), 0, "outbox drained");
    let published = published_output_ids(config).await;
    let distinct: BTreeSet<String> = published.iter().cloned().collect();
    // No gaps and nothing that a clean run would not have emitted. A row
    // acknowledged by the broker just before a kill is published again with
    // the same id after the restart; consumers drop such repeats by id.
    assert_eq!(distinct, clean.output_ids, "published output ids");
    // Forecasts: the same figures as the replay's, stored once each.
    let mut forecasts = BTreeMap::new();
    for f in published_forecasts(config).await {
        if let Some(earlier) = forecasts.insert(f.forecast_id.clone(), f.clone()) {
            assert_eq!(earlier, f, "a republished forecast is the same forecast");
        }
    }
    assert_eq!(forecasts, clean.forecasts, "published forecasts");
    let stored = store.forecasts(None, 10_000).await.unwrap();
    assert_eq!(stored.len(), clean.forecasts.len(), "stored once each");
    for row in stored {
        assert!(row.scheduled);
        let event: ForecastEvent = serde_json::from_str(&row.event).unwrap();
        assert_eq!(Some(&event), clean.forecasts.get(&row.forecast_id));
    }
}

async fn publish(config: &Config, seed: u64, leads: u32) -> Vec<leadflow::events::InputEvent> {
    common::publish_simulated(config, seed, leads, 30).await
}

/// Runs the processor as a child process and SIGKILLs it once each share
/// of the `total` messages is committed, then runs it to the end.
async fn kill_at_then_finish<S: LeadStore>(store: &S, config: &Config, total: i64, shares: &[f64]) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), config);
    let log = dir.path().join("processor.log");
    let mut killed_at = Vec::new();
    for share in shares {
        let mut child = spawn_processor(&config_path, &log, &[]);
        wait_for_progress(
            store,
            config,
            (total as f64 * share) as i64,
            &mut child,
            &log,
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        killed_at.push(committed_messages(store, config).await);
    }
    assert!(
        killed_at.iter().all(|p| *p < total),
        "every kill landed mid-stream: {killed_at:?} of {total}"
    );
    let mut last = spawn_processor(&config_path, &log, &["--exit-when-idle", "8"]);
    wait_for_exit(&mut last, &log, Duration::from_secs(180));
    assert_eq!(committed_messages(store, config).await, total);
}

async fn survives_sigkill_at_several_points<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let config = resilience_config(url);
    let events = publish(&config, 21, 250).await;
    let total = events.len() as i64;
    kill_at_then_finish(store.as_ref(), &config, total, &[0.2, 0.45, 0.7]).await;
    let clean = clean_run(&config, &events).await;
    // Nurturing is on: the kills also land among timer firings and messages.
    assert!(clean.messages > 100, "{} messages", clean.messages);
    assert_equals_clean_run(store.as_ref(), &config, &clean).await;
}

/// Eleven weeks of weekly-seasonal inflow that doubles over the period, so
/// every forecast kind falls due on the schedule (lead generation needs
/// nine weeks of history), with kills among the slots. Each forecast is
/// published with the replay's figures and stored once.
async fn makes_each_forecast_once_across_sigkills<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let mut config = resilience_config(url);
    config.processor.batch_size = 40;
    // A trained model scores the leads, live and in the replay: the
    // forecasts read each lead's model score as it stood at the slot.
    let model = trained_model(&config).await;
    activate_copy(store.as_ref(), &model).await;
    kafka::create_topics(&config).await.unwrap();
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 1.0,
        source_shares: Default::default(),
        seed: 33,
        leads: 500,
        days: 77,
        start: 1_767_225_600_000,
    });
    kafka::publish_inputs(&config, &Codec::new(None), &events, InputFormat::Avro, 0)
        .await
        .unwrap();
    let total = events.len() as i64;
    kill_at_then_finish(store.as_ref(), &config, total, &[0.5, 0.75, 0.9]).await;
    let clean = clean_run_with_model(&config, &events, Some(&model)).await;
    let kinds: BTreeSet<&str> = clean.forecasts.values().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["lead_generation", "pipeline_value", "time_to_close"]),
        "every kind is made: {:?}",
        clean
            .forecasts
            .values()
            .map(|f| (f.kind, f.generated_at))
            .collect::<Vec<_>>()
    );
    // Eleven Mondays fall in the eleven weeks; each whose grace period the
    // slowest partition passed makes a pipeline value.
    let slots = clean
        .forecasts
        .values()
        .filter(|f| f.kind.as_str() == "pipeline_value")
        .count();
    assert!(slots >= 10, "one pipeline value per weekly slot: {slots}");
    let from_model = store
        .forecasts(Some("pipeline_value"), 100)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.model_version.is_some())
        .count();
    assert!(
        from_model >= 9,
        "{from_model} pipeline values used the model"
    );
    assert_equals_clean_run(store.as_ref(), &config, &clean).await;
}

async fn survives_a_member_joining_and_one_leaving<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let config = resilience_config(url);
    let events = publish(&config, 22, 3_000).await;
    let total = events.len() as i64;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &config);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = spawn_processor(&config_path, &log_a, &[]);
    wait_for_progress(store.as_ref(), &config, total / 10, &mut a, &log_a).await;
    let mut b = spawn_processor(&config_path, &log_b, &["--exit-when-idle", "10"]);
    // B joins: the group rebalances and B starts committing its partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .contains("partitions assigned")
    {
        assert!(
            Instant::now() < deadline,
            "B never got partitions:\n{}",
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both work for a few batches, then A leaves while events remain.
    let joined_at = committed_messages(store.as_ref(), &config).await;
    wait_for_progress(store.as_ref(), &config, joined_at + 50, &mut a, &log_a).await;
    // A leaves gracefully (SIGTERM): finishes its batch, flushes, leaves.
    let left_at = committed_messages(store.as_ref(), &config).await;
    assert!(left_at < total, "A left mid-stream ({left_at} of {total})");
    unsafe {
        assert_eq!(libc_kill(a.id() as i32, 15), 0);
    }
    wait_for_exit(&mut a, &log_a, Duration::from_secs(60));
    wait_for_exit(&mut b, &log_b, Duration::from_secs(180));
    assert_eq!(committed_messages(store.as_ref(), &config).await, total);
    let log = std::fs::read_to_string(&log_b).unwrap();
    assert!(
        log.matches("partitions assigned").count() >= 2,
        "B was rebalanced when A left:\n{log}"
    );
    assert_equals_clean_run(store.as_ref(), &config, &clean_run(&config, &events).await).await;
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Erasures in the middle of the log, SIGKILLs around them (small batches:
/// the kills land among the erasure batches): the final state equals one
/// clean run's, the published outputs (tombstones included) are the clean
/// run's but for erased leads' outputs their erasure dropped unpublished,
/// and every erased lead is a tombstone.
async fn erasures_survive_sigkill<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    use leadflow::events::{InputEvent, LeadEvent, LeadEventKind};
    let config = resilience_config(url);
    let mut events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 33,
        leads: 200,
        days: 30,
        start: 1_767_225_600_000,
    });
    let middle = events.len() / 2;
    let at = events[middle].occurred_at();
    let erased: Vec<String> = events[..middle]
        .iter()
        .filter_map(|e| match e {
            InputEvent::Lead(l) if l.kind == LeadEventKind::Created => Some(l.lead_ext_id.clone()),
            _ => None,
        })
        .step_by(4)
        .collect();
    assert!(erased.len() >= 10, "{}", erased.len());
    let erasures = erased
        .iter()
        .map(|id| InputEvent::Lead(LeadEvent::erasure(format!("erase-{id}"), id.clone(), at)));
    events.splice(middle..middle, erasures);
    kafka::create_topics(&config).await.unwrap();
    kafka::publish_inputs(&config, &Codec::new(None), &events, InputFormat::Avro, 0)
        .await
        .unwrap();
    let total = events.len() as i64;
    let share = middle as f64 / total as f64;
    kill_at_then_finish(
        store.as_ref(),
        &config,
        total,
        &[share - 0.02, share + 0.005, share + 0.03],
    )
    .await;
    let clean = clean_run(&config, &events).await;
    assert_same_states(&all_states(store.as_ref()).await, &clean.states);
    // Published: what the clean run emitted, but for outputs of erased
    // leads that were still in the outbox when their erasure committed
    // (the erasure drops them; whether the relay got to one first is a race
    // the replay, which hands every output to its caller, does not have).
    let published: BTreeSet<String> = published_output_ids(&config).await.into_iter().collect();
    let extra: Vec<&String> = published.difference(&clean.output_ids).collect();
    assert!(
        extra.is_empty(),
        "published but not in the clean run: {extra:?}"
    );
    for id in clean.output_ids.difference(&published) {
        let lead = clean.output_leads[id].clone().unwrap_or_default();
        assert!(
            erased.contains(&lead),
            "output {id} of {lead} (not erased) was never published"
        );
    }
    assert_eq!(store.outbox_depth().await.unwrap(), 0, "outbox drained");
    for id in &erased {
        let state = store.get_lead(id).await.unwrap().unwrap();
        assert!(state.erased_at.is_some() && state.email.is_none(), "{id}");
    }
}

backend_tests!(
    erasures_survive_sigkill,
    survives_sigkill_at_several_points,
    makes_each_forecast_once_across_sigkills,
    survives_a_member_joining_and_one_leaving
);

type RunTask = tokio::task::JoinHandle<
    Result<leadflow::pipeline::RunSummary, leadflow::pipeline::PipelineError>,
>;

/// Publishes the first half of a simulated stream, starts a pipeline on
/// `store` and returns once a third of that half is committed (read through
/// `observer`), so that an outage starting now lands mid-stream.
async fn start_mid_stream<S: LeadStore + 'static, O: LeadStore>(
    config: &Config,
    seed: u64,
    store: Arc<S>,
    observer: &O,
) -> (
    Vec<leadflow::events::InputEvent>,
    RunTask,
    Arc<leadflow::metrics::Metrics>,
) {
    kafka::create_topics(config).await.unwrap();
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed,
        leads: 200,
        days: 30,
        start: 1_767_225_600_000,
    });
    let half = events.len() / 2;
    kafka::publish_inputs(
        config,
        &Codec::new(None),
        &events[..half],
        InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
    let (run, metrics) = spawn_pipeline(config, store, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_messages(observer, config).await < half as i64 / 3 {
        assert!(Instant::now() < deadline, "no progress before the outage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (events, run, metrics)
}

async fn publish_second_half(config: &Config, events: &[leadflow::events::InputEvent]) {
    let half = events.len() / 2;
    kafka::publish_inputs(
        config,
        &Codec::new(None),
        &events[half..],
        InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
}

/// A TCP proxy in front of PostgreSQL that the test can cut.
struct CuttableProxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    async fn start(upstream: &'static str) -> CuttableProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        CuttableProxy {
            port,
            up,
            connections,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_out_a_database_outage_and_loses_nothing() {
    let db = common::TestPg::new().await;
    let direct = db.store().await;
    let proxy = CuttableProxy::start("127.0.0.1:5432").await;
    let proxied_url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(
        proxied_url, db.url,
        "the test database is reached through the proxy"
    );
    let config = resilience_config(&proxied_url);
    let store = Arc::new(PgStore::connect(&proxied_url, 4).await.unwrap());
    let (events, run, metrics) = start_mid_stream(&config, 23, store, &direct).await;
    proxy.cut();
    publish_second_half(&config, &events).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = committed_messages(&direct, &config).await;
    assert!(during < events.len() as i64, "the outage hit mid-stream");
    proxy.restore();
    let summary = run
        .await
        .unwrap()
        .expect("the processor waits out the outage");
    assert_eq!(summary.applied, events.len() as u64);
    assert!(
        metrics.value("leadflow_store_retries_total", &[]) > 0.0,
        "the outage was noticed and retried"
    );
    assert_equals_clean_run(&direct, &config, &clean_run(&config, &events).await).await;
}

/// SQLite's equivalent of an outage: another connection holds the write
/// lock for a while. The processor waits (and retries) and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_out_a_locked_sqlite_database_and_loses_nothing() {
    use sqlx::Connection;
    let db = common::TestSqlite::new();
    let store = Arc::new(db.store().await);
    let mut config = resilience_config(&db.url);
    config.processor.batch_size = 50;
    let (events, run, metrics) = start_mid_stream(&config, 24, store.clone(), store.as_ref()).await;
    // Hold the write lock for longer than the store's busy timeout (10 s).
    let mut locker = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked_at = committed_messages(store.as_ref(), &config).await;
    publish_second_half(&config, &events).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    assert!(locked_at < events.len() as i64, "the lock hit mid-stream");
    let summary = run
        .await
        .unwrap()
        .expect("the processor waits out the lock");
    assert_eq!(summary.applied, events.len() as u64);
    assert!(
        metrics.value("leadflow_store_retries_total", &[]) > 0.0,
        "the busy database was noticed and retried"
    );
    assert_equals_clean_run(store.as_ref(), &config, &clean_run(&config, &events).await).await;
}
