//! REST API latency under load (issue 17): `GET /api/v1/leads/{id}` (a
//! random lead each request) and `GET /api/v1/analytics/funnel` on a store
//! of BENCH_API_LEADS leads (default 100,000; their transitions written by
//! a replay of simulated history), SQLite and PostgreSQL, measured with
//! `wrk` while the processor (`leadflow run`, the release binary) consumes a
//! live stream from the broker. Goal: p99 under 10 ms for a lead, under
//! 50 ms for the funnel.
//!
//! `make bench` runs it (and installs wrk when missing). Without `--bench`
//! (`cargo test --all-targets`) it is a smoke run of a few hundred leads.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadflow::codec::Codec;
use leadflow::config::api::Rate;
use leadflow::config::Config;
use leadflow::events::InputEvent;
use leadflow::kafka::{self, InputFormat};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;
use leadflow::store::{LeadStore, PgStore, SqliteStore};
use sqlx::Connection;

fn bench_config(name: &str, database_url: &str, port: u16) -> Config {
    let mut config = Config::default();
    let id = format!("bench-api-{name}-{}", std::process::id());
    config.kafka.bootstrap_servers =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    config.kafka.group_id = format!("{id}-group");
    config.kafka.session_timeout_ms = 6_000;
    config.topics = config.topics.with_prefix(&format!("{id}-"));
    config.database.url = database_url.to_string();
    config.http.listen = format!("127.0.0.1:{port}");
    config.processor.clock = leadflow::config::ClockMode::EventTime;
    // The load tool is one key: it measures latency, not the limiter.
    config.api.rate_limits.admin = Rate {
        per_second: 1e9,
        burst: u32::MAX,
    };
    config
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn history(leads: u32, seed: u64) -> Vec<InputEvent> {
    simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed,
        leads,
        days: 90,
        start: 1_767_225_600_000,
    })
}

/// One wrk run: requests per second, p50 and p99 in milliseconds, and the
/// answers that were not 2xx.
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn millis(text: &str) -> f64 {
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(script: &Path, url: &str, seconds: u64) -> Load {
    let out = Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (make bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk: {text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    Load {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map_or(f64::NAN, |v| millis(&v)),
        p99_ms: field("99%").map_or(f64::NAN, |v| millis(&v)),
        errors: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// A wrk script that asks for `path` (with `{id}` replaced by a random one
/// of `ids`) with the key.
fn script(dir: &Path, name: &str, path: &str, ids: &[String], key: &str) -> std::path::PathBuf {
    let list: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
    let lua = format!(
        "local ids = {{{}}}\n\
         request = function()\n\
           local path = string.gsub(\"{path}\", \"{{id}}\", ids[math.random(#ids)])\n\
           return wrk.format(\"GET\", path, {{[\"Authorization\"] = \"Bearer {key}\"}})\n\
         end\n",
        list.join(",")
    );
    let file = dir.join(format!("{name}.lua"));
    std::fs::write(&file, lua).unwrap();
    file
}

fn spawn_processor(config: &Config, dir: &Path) -> Child {
    let path = dir.join("leadflow.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join("processor.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env("LEADFLOW_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start leadflow run")
}

fn admin_key(config_dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .arg("--config")
        .arg(config_dir.join("leadflow.toml"))
        .args(["apikey", "create", "--name", "bench", "--scope", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn measure<S: LeadStore + 'static>(
    name: &str,
    store: Arc<S>,
    url: &str,
    leads: u32,
    seconds: u64,
) {
    let port = free_port();
    let config = bench_config(name, url, port);
    let events = history(leads, 41);
    let started = Instant::now();
    leadflow::pipeline::replay::replay(&config, store.as_ref(), events.clone())
        .await
        .unwrap();
    let stored = store.lead_count().await.unwrap();
    println!(
        "{name}: {stored} leads, {} transitions stored by replay in {:.0} s",
        store.transitions(None).await.unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    let ids: Vec<String> = events
        .iter()
        .step_by((events.len() / 2000).max(1))
        .map(|e| e.lead_ext_id().to_string())
        .collect();
    // The live stream the processor consumes during the load: new leads,
    // published at a steady rate.
    kafka::create_topics(&config).await.unwrap();
    let live = history((leads / 10).max(50), 42);
    let live_count = live.len() as i64;
    let publisher = {
        let config = config.clone();
        tokio::spawn(async move {
            kafka::publish_inputs(&config, &Codec::new(None), &live, InputFormat::Avro, 2000)
                .await
                .unwrap()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_processor(&config, dir.path());
    let key = admin_key(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{base}/ready"))
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            Instant::now() < deadline,
            "the processor never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumed = |store: Arc<S>, group: String| async move {
        store
            .partition_offsets(&group)
            .await
            .unwrap()
            .iter()
            .map(|o| o.next_offset)
            .sum::<i64>()
    };
    let before = consumed(store.clone(), config.kafka.group_id.clone()).await;
    let lead = script(dir.path(), "lead", "/api/v1/leads/{id}", &ids, &key);
    let funnel = script(dir.path(), "funnel", "/api/v1/analytics/funnel", &ids, &key);
    let lead_load = tokio::task::spawn_blocking({
        let base = base.clone();
        move || wrk(&lead, &base, seconds)
    })
    .await
    .unwrap();
    let funnel_load = tokio::task::spawn_blocking(move || wrk(&funnel, &base, seconds))
        .await
        .unwrap();
    let after = consumed(store.clone(), config.kafka.group_id.clone()).await;
    for (route, load, goal) in [
        ("GET /leads/{id}", &lead_load, 10.0),
        ("GET /analytics/funnel", &funnel_load, 50.0),
    ] {
        println!(
            "  {name:<10} {route:<24} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  (goal p99 < {goal} ms: {})  non-2xx {}",
            load.rps,
            load.p50_ms,
            load.p99_ms,
            if load.p99_ms < goal { "met" } else { "NOT met" },
            load.errors
        );
    }
    println!(
        "  {name:<10} the processor applied {} of {live_count} live messages during the {}+{} s of load",
        after - before,
        seconds,
        seconds
    );
    child.kill().unwrap();
    child.wait().unwrap();
    publisher.abort();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("api benchmark: wrk is not installed (make bench installs it); nothing measured");
        return;
    }
    let leads: u32 = std::env::var("BENCH_API_LEADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 100_000 } else { 300 });
    let seconds = if measuring { 15 } else { 1 };
    println!("leadflow REST API benchmark: {leads} leads, wrk -t2 -c8 for {seconds} s per route");

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = SqliteStore::connect(&sqlite_url, 8).await.unwrap();
    sqlite.migrate().await.unwrap();
    measure("sqlite", Arc::new(sqlite), &sqlite_url, leads, seconds).await;

    let admin = std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("leadflow_bench_api_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let pg_url = match admin.rfind('/') {
        Some(i) => format!("{}/{db_name}", &admin[..i]),
        None => unreachable!("a database URL has a path"),
    };
    let pg = PgStore::connect(&pg_url, 8).await.unwrap();
    pg.migrate().await.unwrap();
    measure("postgres", Arc::new(pg), &pg_url, leads, seconds).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
