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
//! `cargo bench --bench models -- --small` (also part of `make bench`) is the
//! small-data comparison: public data sets from packages in the bench venv
//! and simulated leads at 2,000, 5,000 and 40,000 rows, prepared by
//! `benches/ml/small_data.py` with five seeded stratified 70/30 splits each;
//! our three learners with their defaults next to scikit-learn's
//! GradientBoosting, HistGradientBoosting and logistic regression and
//! LightGBM with theirs, on the same splits.
//!
//! Under `cargo test` (no `--bench`) it runs a 3,000-row smoke round of
//! leadflow's side only, so the benchmark cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use leadflow::core::apply::{apply, ApplyContext};
use leadflow::core::state::LeadState;
use leadflow::ml::features::{feature_defs, FeatureValue};
use leadflow::ml::model::ModelType;
use leadflow::ml::training::{evaluate_model, train, CsvSpec, Dataset, NoProgress, TrainingConfig};
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
        inflow_growth: 0.0,
        source_shares: Default::default(),
    };
    let features = feature_defs(&scoring.features);
    let ctx = ApplyContext {
        score: scoring.policy(),
        dedup_window: 64,
        model: None,
        nurture: None,
        forecast_slots: None,
        recreate_after_erasure: false,
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
    /// One thread: ours one row after another (the processor's case), the
    /// Python libraries' batch call limited to one thread.
    score_one_thread_us_per_row: f64,
}

fn leadflow_row(dataset: &Dataset, config: &TrainingConfig) -> (Row, usize, f64) {
    let outcome = train(dataset, config, &NoProgress).expect("train");
    // Binning and trees, as the Python libraries' fit times them; the whole
    // run (encoding the feature rows, evaluating, profiling) is reported too.
    let train_seconds = outcome.fit_seconds;
    // The rows the evaluation scored: the newest fifth for these timed rows.
    let holdout = &dataset.examples[outcome.evaluated.clone()];
    let rows: Vec<&[FeatureValue]> = holdout.iter().map(|e| e.values.as_slice()).collect();
    // The whole hold-out in one call on every core, as the Python libraries'
    // predict_proba; then one row after another on one thread, the
    // processor's case.
    let started = Instant::now();
    let checksum: f64 = outcome.model.probabilities(&rows).iter().sum();
    let score_us_per_row = started.elapsed().as_secs_f64() / holdout.len() as f64 * 1e6;
    let started = Instant::now();
    let one_at_a_time: f64 = rows.iter().map(|r| outcome.model.probability(r)).sum();
    let one_at_a_time_us = started.elapsed().as_secs_f64() / holdout.len() as f64 * 1e6;
    assert!((checksum - one_at_a_time).abs() < 1e-9 * holdout.len() as f64);
    assert!(checksum.is_finite());
    // Where the time goes: encoding alone, and the trees followed one by one
    // instead of the compiled walk.
    if let leadflow::ml::model::Learner::GradientBoosting(b) = &outcome.model.learner {
        let per_row =
            |started: Instant| started.elapsed().as_secs_f64() / holdout.len() as f64 * 1e6;
        let started = Instant::now();
        let encoded: Vec<Vec<f64>> = holdout
            .iter()
            .map(|e| outcome.model.encoder.encode(&e.values))
            .collect();
        let encode_us = per_row(started);
        let started = Instant::now();
        let compiled: f64 = encoded.iter().map(|r| b.margin(r)).sum();
        let compiled_us = per_row(started);
        let started = Instant::now();
        let one_by_one: f64 = encoded
            .iter()
            .map(|r| b.trees.iter().map(|t| t.predict(r)).sum::<f64>())
            .sum();
        let one_by_one_us = per_row(started);
        assert!(compiled.is_finite() && one_by_one.is_finite());
        eprintln!(
            "scoring µs/row one at a time: {one_at_a_time_us:.2} in all; encoding {encode_us:.2}, compiled trees {compiled_us:.2}, trees one by one {one_by_one_us:.2} ({} trees)",
            b.trees.len()
        );
    }
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
            score_one_thread_us_per_row: one_at_a_time_us,
        },
        trees,
        outcome.seconds,
    )
}

/// Runs one Python learner (`script args... --lib library`) in its own
/// process and reads the JSON line it prints.
fn python_json(
    python: &str,
    script_args: &[&std::ffi::OsStr],
    library: &str,
) -> Option<serde_json::Value> {
    let out = Command::new(python)
        .args(script_args)
        .args(["--lib", library])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{library} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn python_row(python: &str, csv: &Path, library: &str) -> Option<Row> {
    let v = python_json(
        python,
        &[
            "benches/ml/compare.py".as_ref(),
            "--csv".as_ref(),
            csv.as_os_str(),
        ],
        library,
    )?;
    Some(Row {
        library: library.to_string(),
        roc_auc: v["roc_auc"].as_f64()?,
        log_loss: v["log_loss"].as_f64()?,
        train_seconds: v["train_seconds"].as_f64()?,
        score_us_per_row: v["score_us_per_row"].as_f64()?,
        score_one_thread_us_per_row: v["score_one_thread_us_per_row"].as_f64()?,
    })
}

/// Names of the prepared data sets, smallest public ones first.
const PUBLIC_SETS: [&str; 4] = ["breast_cancer", "oj", "caravan", "default"];
const SMALL_LEAD_ROWS: [usize; 3] = [2_000, 5_000, 40_000];
const OUR_LEARNERS: [ModelType; 3] = [
    ModelType::GradientBoosting,
    ModelType::RandomForest,
    ModelType::Logistic,
];
const PYTHON_LEARNERS: [&str; 4] = ["sklearn_gbc", "sklearn_hgb", "sklearn_logistic", "lightgbm"];

/// Mean ROC AUC, Brier score and fit seconds over a data set's splits.
struct SplitScores {
    library: String,
    roc_auc: f64,
    brier: f64,
    train_seconds: f64,
}

fn ours_on_splits(data: &Dataset, splits: &[Vec<usize>], model_type: ModelType) -> SplitScores {
    let config = TrainingConfig {
        model_type,
        ..TrainingConfig::default()
    };
    let (mut auc, mut brier, mut seconds) = (0.0, 0.0, 0.0);
    for test in splits {
        let mut in_test = vec![false; data.examples.len()];
        for &r in test {
            in_test[r] = true;
        }
        let (test_rows, train_rows): (Vec<_>, Vec<_>) = data
            .examples
            .iter()
            .cloned()
            .zip(&in_test)
            .partition(|(_, t)| **t);
        let part = |rows: Vec<(leadflow::ml::training::Example, &bool)>| Dataset {
            features: data.features.clone(),
            timed: false,
            examples: rows.into_iter().map(|(e, _)| e).collect(),
        };
        let (train_set, test_set) = (part(train_rows), part(test_rows));
        let outcome = train(&train_set, &config, &NoProgress).expect("train");
        let metrics = evaluate_model(&outcome.model, &test_set, 0..test_set.examples.len()).model;
        auc += metrics.roc_auc;
        brier += metrics.brier;
        seconds += outcome.fit_seconds;
    }
    let k = splits.len() as f64;
    SplitScores {
        library: format!("leadflow {model_type}"),
        roc_auc: auc / k,
        brier: brier / k,
        train_seconds: seconds / k,
    }
}

fn python_on_splits(python: &str, data: &Path, library: &str) -> Option<SplitScores> {
    let v = python_json(
        python,
        &[
            "benches/ml/small_data.py".as_ref(),
            "run".as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
        ],
        library,
    )?;
    Some(SplitScores {
        library: library.to_string(),
        roc_auc: v["roc_auc"].as_f64()?,
        brier: v["brier"].as_f64()?,
        train_seconds: v["train_seconds"].as_f64()?,
    })
}

/// The small-data comparison (`--small`); needs the bench venv's Python.
fn small_data(python: &str, scoring: &ScoringConfig) {
    let raw = PathBuf::from("target/bench-models/raw");
    let prepared = PathBuf::from("target/bench-models/small");
    std::fs::create_dir_all(&raw).unwrap();
    let mut prepare = Command::new(python);
    prepare
        .args(["benches/ml/small_data.py", "prepare", "--out"])
        .arg(&prepared);
    for rows in SMALL_LEAD_ROWS {
        let data = dataset((rows as f64 / 0.74) as u32, scoring);
        let csv = raw.join(format!("leads-{rows}.csv"));
        write_csv(&data, &csv);
        prepare
            .arg("--csv")
            .arg(format!("{}:converted:closed_at", csv.display()));
    }
    let status = prepare.status().expect("run benches/ml/small_data.py");
    assert!(status.success(), "small_data.py prepare failed");
    // LEADFLOW_BENCH_SETS=oj,caravan runs only those (all are prepared).
    let only: Option<Vec<String>> = std::env::var("LEADFLOW_BENCH_SETS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let names = PUBLIC_SETS
        .iter()
        .map(|s| s.to_string())
        .chain(SMALL_LEAD_ROWS.iter().map(|r| format!("leads-{r}")))
        .filter(|name| only.as_ref().is_none_or(|o| o.contains(name)));
    println!("| data set | rows | library | ROC AUC | Brier | fit s |");
    println!("|---|---:|---|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for name in names {
        let base = prepared.join(&name);
        let csv = base.with_extension("csv");
        let file = std::fs::File::open(&csv).expect("prepared csv");
        let spec = CsvSpec {
            target: "target".into(),
            ..CsvSpec::default()
        };
        let data = Dataset::from_csv(&csv.display().to_string(), file, &spec).expect("read csv");
        let splits: Vec<Vec<usize>> = serde_json::from_reader(
            std::fs::File::open(base.with_extension("splits.json")).expect("splits"),
        )
        .expect("splits json");
        let mut rows: Vec<SplitScores> = OUR_LEARNERS
            .iter()
            .map(|t| ours_on_splits(&data, &splits, *t))
            .collect();
        rows.extend(
            PYTHON_LEARNERS
                .iter()
                .filter_map(|lib| python_on_splits(python, &base, lib)),
        );
        for r in &rows {
            println!(
                "| {name} | {} | {} | {:.4} | {:.4} | {:.3} |",
                data.examples.len(),
                r.library,
                r.roc_auc,
                r.brier,
                r.train_seconds
            );
        }
        let ours = &rows[0];
        let best_auc = rows[3..].iter().map(|r| r.roc_auc).fold(f64::NAN, f64::max);
        let best_brier = rows[3..].iter().map(|r| r.brier).fold(f64::NAN, f64::min);
        verdicts.push(format!(
            "{name}: gradient boosting AUC {:+.4} against the best other library, Brier {:+.4} against the best",
            ours.roc_auc - best_auc,
            ours.brier - best_brier
        ));
    }
    println!();
    for v in verdicts {
        println!("- {v}");
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LEADFLOW_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    if args.iter().any(|a| a == "--small") {
        let python = std::env::var("LEADFLOW_BENCH_PYTHON")
            .expect("--small needs LEADFLOW_BENCH_PYTHON (the Makefile's bench venv)");
        small_data(&python, &ScoringConfig::default());
        return;
    }
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

    println!(
        "| rows | library | ROC AUC | log loss | train s | score µs/row | one thread µs/row |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
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
                "| {} | {} | {:.4} | {:.4} | {:.2} | {:.2} | {:.2} |",
                data.examples.len(),
                r.library,
                r.roc_auc,
                r.log_loss,
                r.train_seconds,
                r.score_us_per_row,
                r.score_one_thread_us_per_row
            );
        }
    }
}
