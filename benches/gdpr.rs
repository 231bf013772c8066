//! Erasure latency under load (issue 18): from an erasure request accepted
//! (`gdpr::request_erasure` returned: the event is on the broker and the
//! request audited) to the lead's tombstone on `lead-scores`, while
//! simulated background traffic is published at a fixed rate and a
//! processor consumes it, on SQLite and on PostgreSQL. The goal is under
//! 5 s at p99 at 10,000 events/s of background.
//!
//! `make bench` runs it. BENCH_GDPR_RATE (events/s, default 10000),
//! BENCH_GDPR_SECONDS (how long the background runs, default 30) and
//! BENCH_GDPR_ERASURES (default 40) set the size; without `--bench`
//! (`cargo test --benches`) a small smoke run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::env_or;
use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::{InputEvent, LeadEventKind};
use leadflow::gdpr::{request_erasure, ErasureRequest};
use leadflow::kafka::{self, InputFormat};
use leadflow::metrics::Metrics;
use leadflow::pipeline::{Pipeline, RunOptions};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;
use leadflow::store::{LeadStore, PgStore, SqliteStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use sqlx::Connection;

struct Size {
    rate: u32,
    seconds: u32,
    erasures: usize,
}

fn bench_config(name: &str, database_url: &str) -> Config {
    let mut config = Config::default();
    let id = format!("bench-gdpr-{name}-{}", std::process::id());
    config.kafka.bootstrap_servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    config.kafka.group_id = format!("{id}-group");
    config.kafka.partitions = 6;
    config.kafka.session_timeout_ms = 6_000;
    config.topics = config.topics.with_prefix(&format!("{id}-"));
    config.database.url = database_url.to_string();
    config.http.listen = "127.0.0.1:0".into();
    // Event time: the simulated events are months old.
    config.processor.clock = leadflow::config::ClockMode::EventTime;
    config
}

/// When each erased lead's tombstone reached the scores topic.
fn watch_tombstones(config: &Config) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer: StreamConsumer = kafka::client_config(
        &config.kafka,
        &[
            ("group.id", &format!("{}-watch", config.kafka.group_id)),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "10"),
        ],
    )
    .create()
    .unwrap();
    consumer.subscribe(&[&config.topics.scores]).unwrap();
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            if m.payload().is_none() {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                out.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
        }
    });
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Seconds from each accepted erasure to its tombstone on the topic.
async fn erasure_latencies<S: LeadStore + 'static>(
    config: &Config,
    store: Arc<S>,
    size: &Size,
) -> Vec<f64> {
    let leads = (size.rate as u64 * size.seconds as u64 / 11).max(200) as u32;
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 41,
        leads,
        days: 60,
        start: 1_767_225_600_000,
    });
    kafka::create_topics(config).await.unwrap();
    let tombstones = watch_tombstones(config);
    let metrics = Arc::new(Metrics::new());
    let pipeline = Pipeline::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        metrics.clone(),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        pipeline
            .run(
                RunOptions {
                    exit_when_idle: None,
                },
                async {
                    stopped.await.ok();
                },
            )
            .await
            .unwrap()
    });
    let background = {
        let config = config.clone();
        let rate = size.rate;
        let events = events.clone();
        tokio::spawn(async move {
            kafka::publish_inputs(&config, &Codec::new(None), &events, InputFormat::Avro, rate)
                .await
                .unwrap()
        })
    };
    // Erase leads whose creation was published a while before, spread
    // over the run.
    let created: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            InputEvent::Lead(l) if l.kind == LeadEventKind::Created => Some(l.lead_ext_id.clone()),
            _ => None,
        })
        .collect();
    let producer = kafka::producer(&config.kafka).unwrap();
    let codec = Codec::new(None);
    let started = Instant::now();
    let gap = Duration::from_secs_f64(size.seconds as f64 / (size.erasures + 1) as f64);
    let mut accepted: Vec<(String, Instant)> = Vec::new();
    for i in 0..size.erasures {
        tokio::time::sleep_until((started + gap * (i as u32 + 1)).into()).await;
        // A lead created in the part of the stream published by now.
        let published = started.elapsed().as_secs_f64() * size.rate as f64 / events.len() as f64;
        let mut index = ((published * 0.8).min(1.0) * (created.len() - 1) as f64) as usize;
        while index > 0 && accepted.iter().any(|(l, _)| *l == created[index]) {
            index -= 1;
        }
        let lead = &created[index];
        let request = ErasureRequest {
            lead_ext_id: lead,
            actor: "bench",
            reason: None,
            at: leadflow::core::clock::wall_clock_millis(),
            inactive_since: None,
        };
        request_erasure(config, &codec, &producer, store.as_ref(), request)
            .await
            .unwrap();
        accepted.push((lead.clone(), Instant::now()));
    }
    background.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let latencies = loop {
        let seen = tombstones.lock().unwrap().clone();
        if accepted.iter().all(|(lead, _)| seen.contains_key(lead)) {
            break accepted
                .iter()
                .map(|(lead, at)| seen[lead].saturating_duration_since(*at).as_secs_f64())
                .collect::<Vec<f64>>();
        }
        assert!(Instant::now() < deadline, "tombstones missing after 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "  background: {} events at {} events/s; processor applied {} events",
        events.len(),
        size.rate,
        metrics.value("leadflow_events_applied_total", &[])
    );
    stop.send(()).unwrap();
    run.await.unwrap();
    latencies
}

fn report(store: &str, latencies: &mut [f64]) {
    latencies.sort_by(f64::total_cmp);
    println!(
        "| {store} | {} | {:.2} | {:.2} | {:.2} |",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.last().unwrap()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size = Size {
        rate: env_or("BENCH_GDPR_RATE", 10_000, 500),
        seconds: env_or("BENCH_GDPR_SECONDS", 30, 4),
        erasures: env_or("BENCH_GDPR_ERASURES", 40, 3),
    };
    println!(
        "erasure latency, request accepted -> tombstone on lead-scores, {} erasures over {} s of background at {} events/s (goal: p99 under 5 s)",
        size.erasures, size.seconds, size.rate
    );
    println!("| store | erasures | p50 s | p99 s | max s |");
    println!("|---|---:|---:|---:|---:|");

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Arc::new(SqliteStore::connect(&sqlite_url, 8).await.unwrap());
    store.migrate().await.unwrap();
    let mut sqlite = erasure_latencies(&bench_config("sqlite", &sqlite_url), store, &size).await;
    report("SQLite", &mut sqlite);

    let admin = std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("leadflow_bench_gdpr_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let pg_url = format!("{}/{db_name}", admin.rsplit_once('/').unwrap().0);
    let store = Arc::new(PgStore::connect(&pg_url, 8).await.unwrap());
    store.migrate().await.unwrap();
    let mut pg = erasure_latencies(&bench_config("postgres", &pg_url), store.clone(), &size).await;
    report("PostgreSQL", &mut pg);
    drop(store);
    sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
