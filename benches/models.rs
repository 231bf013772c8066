//! Gradient boosting next to scikit-learn and LightGBM on the same rows.
//!
//! `make bench` runs `cargo bench --bench models -- --rows 40000,1000000`:
//! for each size it simulates leads, builds each closed lead's point-in-time
//! training row through the real core (the state just before its close),
//! writes them to `target/bench-models/leads-<rows>.csv`, trains leadflow's
//! gradient boosting with the default configuration, then runs
//! `benches/ml/compare.py` once per Python library, each in its own process,
//! with the Python of `LEADFLOW_BENCH_PYTHON` (the Makefile's venv). Same
//! time-based split everywhere. Prints one Markdown table.
//!
//! Under `cargo test` (no `--bench`) it runs a 3,000-row smoke round of
//! leadflow's side only, so the benchmark cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use leadflow::core::apply::{apply, ApplyContext};
use leadflow::core::state::LeadState;
use leadflow::ml::features::{feature_defs, FeatureValue};
use leadflow::ml::training::{train, Dataset, NoProgress, TrainingConfig};
use leadflow::ml::ScoringConfig;
use leadflow::simulate::{lead_events, SimulationParams};
use rayon::prelude::*;

const START: i64 = 1_735_689_600_000; // 2025-01-01

/// Closed leads' rows from `leads` simulated leads, built lead by lead so
/// that a million rows never need a million states in memory at once.
fn dataset(leads: u32, scoring: &ScoringConfig) -> Dataset {
    let params = SimulationParams {
        seed: 2026,
        leads,
        days: 365,
        start: START,
        source_shares: Default::default(),
    };
    let features = feature_defs(&scoring.features);
    let ctx = ApplyContext {
        score: scoring.policy(),
        dedup_window: 64,
        model: None,
        nurture: None,
    };
    let examples = (0..leads)
        .into_par_iter()
        .filter_map(|index| {
            let mut state: Option<LeadState> = None;
            for event in lead_events(&params, index) {
                state = Some(apply(state, &event, &ctx).state);
            }
            let one = Dataset::from_closed_leads(&[state?], scoring, features.clone());
            one.examples.into_iter().next()
        })
        .collect();
    let mut dataset = Dataset {
        features,
        timed: true,
        examples,
    };
    dataset
        .examples
        .sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    dataset
}

fn write_csv(dataset: &Dataset, path: &Path) {
    let mut w = csv::Writer::from_path(path).expect("create benchmark csv");
    let mut header = vec!["closed_at".to_string(), "converted".to_string()];
    header.extend(dataset.features.iter().map(|f| f.name.clone()));
    w.write_record(&header).unwrap();
    for e in &dataset.examples {
        let mut row = vec![e.at.to_string(), (e.label as u8).to_string()];
        row.extend(e.values.iter().map(|v| match v {
            FeatureValue::Number(x) if x.is_finite() => x.to_string(),
            FeatureValue::Number(_) => String::new(),
            FeatureValue::Category(c) => c.clone().unwrap_or_default(),
        }));
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
}

struct Row {
    library: String,
    roc_auc: f64,
    log_loss: f64,
    train_seconds: f64,
    score_us_per_row: f64,
}

fn leadflow_row(dataset: &Dataset, config: &TrainingConfig) -> (Row, usize, f64) {
    let outcome = train(dataset, config, &NoProgress).expect("train");
    // Binning and trees, as the Python libraries' fit times them; the whole
    // run (encoding the feature rows, evaluating, profiling) is reported too.
    let train_seconds = outcome.fit_seconds;
    let holdout = &dataset.examples[outcome.train_rows..];
    let started = Instant::now();
    let mut checksum = 0.0;
    for e in holdout {
        checksum += outcome.model.probability(&e.values);
    }
    let score_us_per_row = started.elapsed().as_secs_f64() / holdout.len() as f64 * 1e6;
    assert!(checksum.is_finite());
    let trees = match &outcome.model.learner {
        leadflow::ml::model::Learner::GradientBoosting(b) => b.trees.len(),
        _ => 0,
    };
    (
        Row {
            library: "leadflow gradient_boosting".into(),
            roc_auc: outcome.evaluation.model.roc_auc,
            log_loss: outcome.evaluation.model.log_loss,
            train_seconds,
            score_us_per_row,
        },
        trees,
        outcome.seconds,
    )
}

fn python_row(python: &str, csv: &Path, library: &str) -> Option<Row> {
    let out = Command::new(python)
        .args(["benches/ml/compare.py", "--csv"])
        .arg(csv)
        .args(["--lib", library])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{library} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Row {
        library: library.to_string(),
        roc_auc: v["roc_auc"].as_f64()?,
        log_loss: v["log_loss"].as_f64()?,
        train_seconds: v["train_seconds"].as_f64()?,
        score_us_per_row: v["score_us_per_row"].as_f64()?,
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LEADFLOW_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("--rows N,M"))
                .collect()
        })
        .unwrap_or_else(|| {
            if full {
                vec![40_000, 1_000_000]
            } else {
                vec![3_000]
            }
        });
    let python = std::env::var("LEADFLOW_BENCH_PYTHON").ok().filter(|_| full);
    let gbc_max_rows: usize = std::env::var("LEADFLOW_BENCH_GBC_MAX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let dir = PathBuf::from("target/bench-models");
    std::fs::create_dir_all(&dir).unwrap();
    let scoring = ScoringConfig::default();

    println!("| rows | library | ROC AUC | log loss | train s | score µs/row |");
    println!("|---:|---|---:|---:|---:|---:|");
    for rows in sizes {
        // About 75% of simulated leads close within the year.
        let started = Instant::now();
        let data = dataset((rows as f64 / 0.74) as u32, &scoring);
        let csv = dir.join(format!("leads-{rows}.csv"));
        write_csv(&data, &csv);
        eprintln!(
            "{} rows ({} won) built in {:.1} s from {} simulated days -> {}",
            data.examples.len(),
            data.positives(),
            started.elapsed().as_secs_f64(),
            365,
            csv.display()
        );
        let (ours, trees, whole) = leadflow_row(&data, &scoring.training);
        eprintln!("leadflow: {trees} trees after early stopping; {whole:.2} s with encoding and evaluation");
        if !full {
            assert!(ours.roc_auc > 0.75, "smoke run AUC {}", ours.roc_auc);
        }
        let mut table = vec![ours];
        if let Some(python) = &python {
            for library in ["sklearn_gbc", "sklearn_hgb", "lightgbm"] {
                if library == "sklearn_gbc" && data.examples.len() > gbc_max_rows {
                    eprintln!("sklearn_gbc skipped above {gbc_max_rows} rows");
                    continue;
                }
                table.extend(python_row(python, &csv, library));
            }
        }
        for r in table {
            println!(
                "| {} | {} | {:.4} | {:.4} | {:.2} | {:.2} |",
                data.examples.len(),
                r.library,
                r.roc_auc,
                r.log_loss,
                r.train_seconds,
                r.score_us_per_row
            );
        }
    }
}
