//! Nurturing at scale: a replay (the clock at event time, timers swept at
//! their due times) of 100,000 simulated leads over 90 days into SQLite with
//! the built-in sequences. Prints how long it took and the messages it
//! produced per sequence, template and variant (docs/BENCHMARKS.md).
//!
//! `make bench` runs it; BENCH_NURTURE_LEADS and BENCH_NURTURE_DAYS set the
//! size. `cargo test --bench nurture` does a small smoke run.

mod common;

use common::env_or;
use std::collections::BTreeMap;
use std::time::Instant;

use leadflow::config::Config;
use leadflow::core::apply::Output;
use leadflow::core::nurture::experiments::report;
use leadflow::pipeline::replay::replay;
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;
use leadflow::store::SqliteStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let leads = env_or("BENCH_NURTURE_LEADS", 100_000, 500);
    let days = env_or("BENCH_NURTURE_DAYS", 90, 45);
    let started = Instant::now();
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 2026,
        leads,
        days,
        start: 1_767_225_600_000,
    });
    let generated = started.elapsed().as_secs_f64();
    println!(
        "leadflow nurturing replay: {leads} leads, {days} days, {} events (generated in {generated:.1} s)",
        events.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("nurture.db").display());
    let store = SqliteStore::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = Config::default();
    config.database.url = url;
    let total_events = events.len();
    let started = Instant::now();
    let (summary, outputs) = replay(&config, &store, events).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();

    let mut per_template: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut messages = 0u64;
    for o in &outputs {
        if let Output::Message(m) = o {
            messages += 1;
            let variant = m.variant.clone().unwrap_or_else(|| "-".into());
            *per_template
                .entry((m.sequence.clone(), m.template.clone(), variant))
                .or_default() += 1;
        }
    }
    let scores = outputs.len() as u64 - messages;
    println!(
        "replayed in {seconds:.1} s ({:.0} events/s): {} applied, {scores} scores, {messages} messages",
        total_events as f64 / seconds,
        summary.applied
    );
    println!("| sequence | template | variant | messages |");
    println!("|---|---|---|---:|");
    for ((sequence, template, variant), n) in &per_template {
        println!("| {sequence} | {template} | {variant} | {n} |");
    }
    let counts = store.experiment_counts().await.unwrap();
    for experiment in report(&counts, &config.nurture.sequences.0.experiments()) {
        println!("experiment {}:", experiment.experiment);
        for v in experiment.variants {
            println!(
                "  {:<10} enrolled {:>6}  replied {:>5} ({:.2}%, p {})  won {:>5} ({:.2}%, p {})",
                v.variant,
                v.enrolled,
                v.replied,
                100.0 * v.reply.rate,
                v.reply
                    .p_value
                    .map_or("-".to_string(), |p| format!("{p:.3}")),
                v.converted,
                100.0 * v.conversion.rate,
                v.conversion
                    .p_value
                    .map_or("-".to_string(), |p| format!("{p:.3}")),
            );
        }
    }
    assert!(messages > 0, "a replay of {leads} leads sends messages");
}
