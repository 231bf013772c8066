//! Events per second through the whole processing loop (decode, merge,
//! apply, one store transaction per batch with the outbox, relay publish)
//! on SQLite and on PostgreSQL, next to a plain rdkafka loop that consumes
//! the same input and produces one message per input with the same
//! idempotent producer settings: the ratio shows what our processing costs.
//!
//! `make bench` runs it against the local broker and PostgreSQL.
//! BENCH_LEADS (default 5000, about 55k events) sets the size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::kafka::{self, InputFormat};
use leadflow::metrics::Metrics;
use leadflow::pipeline::{Pipeline, RunOptions};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;
use leadflow::store::{LeadStore, PgStore, SqliteStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use sqlx::Connection;

fn bench_config(name: &str, database_url: &str) -> Config {
    let mut config = Config::default();
    let id = format!("bench-{name}-{}", std::process::id());
    config.kafka.bootstrap_servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    config.kafka.group_id = format!("{id}-group");
    config.kafka.partitions = 6;
    config.kafka.session_timeout_ms = 6_000;
    config.topics = config.topics.with_prefix(&format!("{id}-"));
    config.database.url = database_url.to_string();
    config.http.listen = "127.0.0.1:0".into();
    // Nurturing stays on, on event time: the simulated events are months
    // old, and on the wall clock every timer would be due at once.
    config.processor.clock = leadflow::config::ClockMode::EventTime;
    config
}

async fn prepare(config: &Config, events: &[leadflow::events::InputEvent]) {
    kafka::create_topics(config).await.unwrap();
    kafka::publish_inputs(config, &Codec::new(None), events, InputFormat::Avro, 0)
        .await
        .unwrap();
}

/// The baseline: consume every input message and produce one output per
/// message, waiting for all acks. Seconds from the first message to the last ack.
async fn plain_loop(config: &Config, total: usize) -> f64 {
    let consumer: StreamConsumer = kafka::client_config(
        &config.kafka,
        &[
            ("group.id", config.kafka.group_id.as_str()),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()
    .unwrap();
    let t = &config.topics;
    consumer
        .subscribe(&[&t.leads, &t.interactions, &t.stage_changes])
        .unwrap();
    let producer = kafka::producer(&config.kafka).unwrap();
    let mut acks = FuturesUnordered::new();
    let mut first = None;
    for _ in 0..total {
        let m = consumer.recv().await.unwrap();
        first.get_or_insert_with(Instant::now);
        let key = m.key().unwrap().to_vec();
        let payload = m.payload().unwrap().to_vec();
        let producer = producer.clone();
        let topic = t.scores.clone();
        acks.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        while acks.len() > 10_000 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
    first.unwrap().elapsed().as_secs_f64()
}

/// leadflow's loop: seconds from the first committed batch until every
/// event is committed and every output published.
async fn leadflow_loop<S: LeadStore + 'static>(
    config: &Config,
    store: Arc<S>,
    total: usize,
) -> (f64, u64, u64) {
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
    let published =
        |topic: &str| metrics.value("leadflow_outputs_published_total", &[("topic", topic)]) as u64;
    let mut first = None;
    loop {
        let applied = metrics.value("leadflow_events_applied_total", &[]) as usize;
        if applied > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if applied >= total
            && metrics.value("leadflow_outbox_depth", &[]) == 0.0
            && published(&config.topics.scores) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = first.unwrap().elapsed().as_secs_f64();
    stop.send(()).unwrap();
    run.await.unwrap();
    (
        seconds,
        published(&config.topics.scores),
        published(&config.topics.outbound),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then a small smoke run keeps this code honest without costing minutes.
    let measuring = std::env::args().any(|a| a == "--bench");
    let leads: u32 = match std::env::var("BENCH_LEADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => n,
        None if measuring => 5_000,
        None => 50,
    };
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 99,
        leads,
        days: 60,
        start: 1_767_225_600_000,
    });
    let total = events.len();
    println!(
        "leadflow throughput benchmark: {leads} leads, {total} events, 6 partitions per topic"
    );

    let plain = bench_config("plain", "sqlite://unused");
    prepare(&plain, &events).await;
    let plain_secs = plain_loop(&plain, total).await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = bench_config("sqlite", &sqlite_url);
    prepare(&sqlite, &events).await;
    let store = Arc::new(SqliteStore::connect(&sqlite_url, 8).await.unwrap());
    store.migrate().await.unwrap();
    let (sqlite_secs, sqlite_outputs, sqlite_messages) = leadflow_loop(&sqlite, store, total).await;

    let admin = std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("leadflow_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let pg_url = format!("{}/{db_name}", admin.rsplit_once('/').unwrap().0);
    let pg = bench_config("postgres", &pg_url);
    prepare(&pg, &events).await;
    let store = Arc::new(PgStore::connect(&pg_url, 8).await.unwrap());
    store.migrate().await.unwrap();
    let (pg_secs, pg_outputs, pg_messages) = leadflow_loop(&pg, store.clone(), total).await;
    store.pool().close().await;
    sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();

    // Same events, same merge, same core: the stores must not change the
    // scores. (How many nurturing timers have fired when the last event is
    // in depends on when the 1 s ticks fell, so messages are only reported.)
    assert_eq!(
        sqlite_outputs, pg_outputs,
        "SQLite and PostgreSQL runs emitted different scores"
    );

    let rate = |secs: f64| total as f64 / secs;
    println!();
    println!("| loop | seconds | events/s | scores | messages | vs plain rdkafka |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| plain rdkafka consume + produce | {plain_secs:.2} | {:.0} | {total} | - | 1.00 |",
        rate(plain_secs)
    );
    println!(
        "| leadflow, SQLite | {sqlite_secs:.2} | {:.0} | {sqlite_outputs} | {sqlite_messages} | {:.2} |",
        rate(sqlite_secs),
        rate(sqlite_secs) / rate(plain_secs)
    );
    println!(
        "| leadflow, PostgreSQL | {pg_secs:.2} | {:.0} | {pg_outputs} | {pg_messages} | {:.2} |",
        rate(pg_secs),
        rate(pg_secs) / rate(plain_secs)
    );
}
