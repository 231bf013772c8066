//! Lead-generation forecasts next to seasonal naive and statsforecast's
//! AutoETS (season 7) with conformal intervals, on the same series and the
//! same rolling origins.
//!
//! `make bench` runs `cargo bench --bench forecast`: it builds the daily
//! series below, writes each to `target/bench-forecast/<name>.csv`
//! (`date,count`), backtests leadflow's forecast over 8 origins a week
//! apart with a 14-day horizon (the last origin 14 days before the end),
//! then runs `benches/forecast/compare.py` once per anchor with the Python
//! of `LEADFLOW_BENCH_PYTHON` (the Makefile's venv) on the same file and
//! origins. Prints one Markdown table: MASE (each origin's mean absolute
//! error over its in-sample weekly-naive error, averaged over origins),
//! the share of forecast days inside the 80% and 95% intervals, and the
//! milliseconds per forecast.
//!
//! Series: the daily created leads of the real simulator with a growing
//! inflow, and shapes of our own, each seeded: a weekday-heavy Poisson
//! inflow with a trend, a sparse one (most days none), and a campaign that
//! lifts the level for good with public holidays (no leads) on the way.
//!
//! Then pipeline_value: simulated traffic (flat and growing inflow, two
//! seeds each) replayed into a scratch SQLite store, forecasts of the value
//! won within 14 and 30 days made at 40 past origins four days apart (from
//! what was known at each), against the value the leads open then actually
//! won; the share of origins inside the 80% and 95% intervals. No anchor
//! ships such a check (the CRMs' weighted pipelines have no interval).
//!
//! Under `cargo test` (no `--bench`) it runs a smoke round of leadflow's
//! side on one series and one small replay, so the benchmark cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::NaiveDate;
use leadflow::config::Config;
use leadflow::core::state::LeadState;
use leadflow::events::{InputEvent, LeadEventKind, Millis, MILLIS_PER_DAY};
use leadflow::forecast::lead_generation::backtest;
use leadflow::forecast::pipeline_value;
use leadflow::forecast::series::DailySeries;
use leadflow::pipeline::replay::replay;
use leadflow::simulate::{generate, SimulationParams};
use leadflow::store::prelude::*;
use leadflow::store::SqliteStore;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HORIZON: usize = 14;
const ORIGINS: usize = 8;
const STEP: usize = 7;
const LEVELS: [f64; 2] = [0.8, 0.95];

fn start() -> NaiveDate {
    // A Monday.
    NaiveDate::from_ymd_opt(2025, 1, 6).unwrap()
}

/// Leads created per day by the simulator, inflow doubling over the year.
fn simulated_leads(leads: u32, days: u32) -> DailySeries {
    let start_millis = start()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let params = SimulationParams {
        seed: 11,
        leads,
        days,
        start: start_millis,
        source_shares: Default::default(),
        inflow_growth: 1.0,
    };
    let mut counts = vec![0.0; days as usize];
    for event in generate(&params) {
        if let InputEvent::Lead(lead) = &event {
            if lead.kind == LeadEventKind::Created {
                counts[((lead.occurred_at - start_millis) / MILLIS_PER_DAY) as usize] += 1.0;
            }
        }
    }
    DailySeries {
        start: start(),
        counts,
    }
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    // Knuth's method, fine for the means below (under 100).
    let limit = (-mean).exp();
    let (mut k, mut p) = (0.0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1.0;
    }
}

/// Poisson counts of `mean(day)` times a weekday profile (Monday first).
fn shaped(days: usize, seed: u64, profile: [f64; 7], mean: impl Fn(usize) -> f64) -> DailySeries {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DailySeries {
        start: start(),
        counts: (0..days)
            .map(|t| poisson(&mut rng, mean(t) * profile[t % 7]))
            .collect(),
    }
}

fn all_series(full: bool) -> Vec<(&'static str, DailySeries)> {
    let office = [1.25, 1.3, 1.25, 1.15, 1.0, 0.3, 0.2];
    if !full {
        return vec![(
            "weekly-growing",
            shaped(200, 1, office, |t| 8.0 + 0.04 * t as f64),
        )];
    }
    vec![
        ("simulated-leads", simulated_leads(30_000, 364)),
        (
            "weekly-growing",
            shaped(420, 1, office, |t| 8.0 + 0.04 * t as f64),
        ),
        (
            "sparse",
            shaped(365, 2, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], |_| 0.7),
        ),
        (
            "campaign-holidays",
            shaped(365, 3, office, |t| {
                // Ten holidays at the same days each run; the level rises
                // by 60% from day 250 and stays.
                let holiday = [20, 45, 88, 121, 150, 190, 233, 276, 301, 340].contains(&t);
                if holiday {
                    0.0
                } else if t >= 250 {
                    32.0
                } else {
                    20.0
                }
            }),
        ),
    ]
}

fn write_series(series: &DailySeries, path: &Path) {
    let mut text = String::from("date,count\n");
    for (day, count) in series.counts.iter().enumerate() {
        text.push_str(&format!("{},{count}\n", series.date(day)));
    }
    std::fs::write(path, text).unwrap();
}

struct Row {
    method: String,
    mase: f64,
    coverage_80: f64,
    coverage_95: f64,
    ms_per_forecast: f64,
}

/// Runs `compare.py` for one anchor and reads the JSON line it prints.
fn python_row(python: &str, csv: &Path, library: &str) -> Option<Row> {
    let output = Command::new(python)
        .arg("benches/forecast/compare.py")
        .arg(csv)
        .args(["--horizon", &HORIZON.to_string()])
        .args(["--origins", &ORIGINS.to_string()])
        .args(["--step", &STEP.to_string()])
        .args(["--lib", library])
        .output()
        .expect("running the Python anchor");
    if !output.status.success() {
        eprintln!(
            "{library} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last()?).ok()?;
    Some(Row {
        method: library.into(),
        mase: v["mase"].as_f64()?,
        coverage_80: v["coverage_80"].as_f64()?,
        coverage_95: v["coverage_95"].as_f64()?,
        ms_per_forecast: v["seconds_per_forecast"].as_f64()? * 1e3,
    })
}

/// Lead states after replaying simulated traffic, and the newest event time.
async fn replayed_leads(params: &SimulationParams) -> (Vec<LeadState>, Millis) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("forecast.db").display());
    let store = SqliteStore::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = Config::default();
    config.database.url = url;
    replay(&config, &store, generate(params)).await.unwrap();
    let leads = store.all_lead_states().await.unwrap();
    let end = store.newest_update().await.unwrap().unwrap();
    (leads, end)
}

async fn pipeline_value_backtests(full: bool) {
    let (runs, origins, leads, days): (&[(u64, f64)], usize, u32, u32) = if full {
        (
            &[(16, 0.0), (17, 0.0), (16, 1.0), (17, 1.0)],
            40,
            20_000,
            300,
        )
    } else {
        (&[(16, 1.0)], 10, 3_000, 150)
    };
    println!();
    println!("| traffic | horizon | origins | open leads (mean) | mean rel. error | 80% held | 95% held | ms per forecast |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut pooled: Vec<(f64, f64, f64)> = Vec::new();
    for &(seed, growth) in runs {
        let params = SimulationParams {
            seed,
            leads,
            days,
            start: 1_735_689_600_000, // 2025-01-01
            source_shares: Default::default(),
            inflow_growth: growth,
        };
        let (states, end) = replayed_leads(&params).await;
        for horizon in [14.0, 30.0] {
            let horizon_ms = (horizon * MILLIS_PER_DAY as f64) as Millis;
            let at: Vec<Millis> = (0..origins as Millis)
                .rev()
                .map(|k| end - horizon_ms - k * 4 * MILLIS_PER_DAY)
                .collect();
            let started = Instant::now();
            let result = pipeline_value::backtest(&states, &at, horizon, &LEVELS).unwrap();
            let ms = started.elapsed().as_secs_f64() * 1e3 / origins as f64;
            let open =
                result.origins.iter().map(|o| o.open_leads).sum::<usize>() as f64 / origins as f64;
            if !full {
                assert!(
                    result.relative_error < 0.5,
                    "smoke run: the forecast is {} off the value won",
                    result.relative_error
                );
            }
            println!(
                "| seed {seed}, inflow growth {growth} | {horizon} d | {origins} | {open:.0} | {:.3} | {:.1}% | {:.1}% | {ms:.0} |",
                result.relative_error,
                100.0 * result.coverage[0].1,
                100.0 * result.coverage[1].1,
            );
            pooled.push((horizon, result.coverage[0].1, result.coverage[1].1));
        }
    }
    for horizon in [14.0, 30.0] {
        let of: Vec<_> = pooled.iter().filter(|p| p.0 == horizon).collect();
        let n = of.len() as f64;
        println!(
            "| all | {horizon} d | | | | {:.1}% | {:.1}% | |",
            100.0 * of.iter().map(|p| p.1).sum::<f64>() / n,
            100.0 * of.iter().map(|p| p.2).sum::<f64>() / n
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let python = std::env::var("LEADFLOW_BENCH_PYTHON").ok().filter(|_| full);
    let dir = PathBuf::from("target/bench-forecast");
    std::fs::create_dir_all(&dir).unwrap();
    println!("| series | days | method | MASE | 80% held | 95% held | ms per forecast |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    let mut pooled: Vec<(String, f64, f64, usize)> = Vec::new();
    for (name, series) in all_series(full) {
        let csv = dir.join(format!("{name}.csv"));
        write_series(&series, &csv);
        let started = Instant::now();
        let ours = backtest(&series, HORIZON, ORIGINS, STEP, &LEVELS).expect("backtest");
        let ms_per_forecast = started.elapsed().as_secs_f64() * 1e3 / ORIGINS as f64;
        let methods: Vec<String> = ours.methods.iter().map(|m| m.to_string()).collect();
        eprintln!("{name}: leadflow chose {}", methods.join(", "));
        if !full {
            assert!(
                ours.mase < ours.seasonal_naive_mase,
                "smoke run: MASE {} against seasonal naive {}",
                ours.mase,
                ours.seasonal_naive_mase
            );
        }
        let mut rows = vec![Row {
            method: "leadflow".into(),
            mase: ours.mase,
            coverage_80: ours.coverage[0].1,
            coverage_95: ours.coverage[1].1,
            ms_per_forecast,
        }];
        if let Some(python) = &python {
            for library in ["seasonal_naive", "autoets"] {
                rows.extend(python_row(python, &csv, library));
            }
        }
        for row in rows {
            println!(
                "| {name} | {} | {} | {:.3} | {:.1}% | {:.1}% | {:.1} |",
                series.counts.len(),
                row.method,
                row.mase,
                100.0 * row.coverage_80,
                100.0 * row.coverage_95,
                row.ms_per_forecast
            );
            match pooled.iter_mut().find(|p| p.0 == row.method) {
                Some(p) => {
                    p.1 += row.coverage_80;
                    p.2 += row.coverage_95;
                    p.3 += 1;
                }
                None => pooled.push((row.method, row.coverage_80, row.coverage_95, 1)),
            }
        }
    }
    for (method, eighty, ninety_five, n) in pooled {
        println!(
            "| all | | {method} | | {:.1}% | {:.1}% | |",
            100.0 * eighty / n as f64,
            100.0 * ninety_five / n as f64
        );
    }
    pipeline_value_backtests(full).await;
}
