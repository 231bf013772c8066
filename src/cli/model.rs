//! `leadflow model`: train, list, evaluate, activate and score with
//! conversion models.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tracing::info;

use leadflow::config::Config;
use leadflow::ml::evaluation::Metrics as ModelMetrics;
use leadflow::ml::model::{ModelType, TrainedModel};
use leadflow::ml::training::{evaluate_model, CsvSpec, Dataset, EvaluationMethod, Progress};
use leadflow::ml::ActiveModel;
use leadflow::registry::{
    dataset_from_store, load_model, train_and_register, Activation, StoredMetrics,
};
use leadflow::store::prelude::*;
use leadflow::store::Store;

use super::open_store;

/// Where training or evaluation rows come from when not from the database.
#[derive(Args, Clone)]
pub(crate) struct CsvArgs {
    /// Read rows from this CSV instead of the closed leads in the database.
    #[arg(long, value_name = "FILE")]
    pub(crate) csv: Option<PathBuf>,
    /// With --csv: the outcome column (1/0, won/lost, ...).
    #[arg(long, default_value = "converted", requires = "csv")]
    pub(crate) target: String,
    /// With --csv: feature columns, comma-separated (default: all but target, id and time).
    #[arg(long, value_delimiter = ',', requires = "csv")]
    pub(crate) features: Vec<String>,
    /// With --csv: columns to treat as categories (others are numbers if every value parses).
    #[arg(long, value_delimiter = ',', requires = "csv")]
    pub(crate) categorical: Vec<String>,
    /// With --csv: the column that orders rows in time: the hold-out is the newest rows and
    /// cross-validation folds are time blocks (without it: stratified random folds, or file order
    /// for the hold-out of a file too big to cross-validate).
    #[arg(long, requires = "csv")]
    pub(crate) time_column: Option<String>,
    /// With --csv: a row id column, excluded from the features.
    #[arg(long, requires = "csv")]
    pub(crate) id_column: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ModelCommand {
    /// Train a model on the closed leads of the window (or a CSV) and register it.
    Train {
        /// Learner (default: scoring.training.model_type).
        #[arg(long = "type", value_enum)]
        model_type: Option<ModelTypeArg>,
        /// Closed leads of this many days up to the newest close (default: scoring.training.window_days).
        #[arg(long)]
        window_days: Option<u32>,
        /// When to make the new model the active one.
        #[arg(long, value_enum, default_value_t = ActivateArg::IfNotWorse)]
        activate: ActivateArg,
        #[command(flatten)]
        csv: CsvArgs,
    },
    /// List registered models with their hold-out metrics.
    List,
    /// Evaluate a model (default: the active one) on the current hold-out or a CSV.
    Evaluate {
        version: Option<i64>,
        #[arg(long)]
        window_days: Option<u32>,
        #[command(flatten)]
        csv: CsvArgs,
    },
    /// Make a registered model the active one; running processors switch within seconds.
    Activate { version: i64 },
    /// Write each CSV row's conversion probability, with the active (or a named) model.
    Score {
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long)]
        version: Option<i64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ModelTypeArg {
    GradientBoosting,
    RandomForest,
    Logistic,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ActivateArg {
    Never,
    IfNotWorse,
    Always,
}

pub(crate) async fn model(mut config: Config, command: ModelCommand) -> Result<()> {
    let store = open_store(&config).await?;
    match command {
        ModelCommand::Train {
            model_type,
            window_days,
            activate,
            csv,
        } => {
            if let Some(t) = model_type {
                config.scoring.training.model_type = match t {
                    ModelTypeArg::GradientBoosting => ModelType::GradientBoosting,
                    ModelTypeArg::RandomForest => ModelType::RandomForest,
                    ModelTypeArg::Logistic => ModelType::Logistic,
                };
            }
            let window = window_days.unwrap_or(config.scoring.training.window_days);
            let (dataset, reason) = match &csv.csv {
                Some(path) => (
                    read_csv_dataset(path, &csv)?,
                    format!("csv:{}", path.display()),
                ),
                None => (
                    dataset_from_store(&store, &config.scoring, window).await?,
                    "cli".to_string(),
                ),
            };
            info!(
                rows = dataset.examples.len(),
                won = dataset.positives(),
                features = dataset.features.len(),
                model_type = %config.scoring.training.model_type,
                "training"
            );
            let activation = match activate {
                ActivateArg::Never => Activation::Never,
                ActivateArg::IfNotWorse => Activation::IfNotWorse,
                ActivateArg::Always => Activation::Always,
            };
            let registered = train_and_register(
                &store,
                &config.scoring,
                dataset,
                &reason,
                activation,
                Arc::new(CliProgress::new()),
                chrono::Utc::now().timestamp_millis(),
                csv.csv.is_none(),
            )
            .await?;
            let o = &registered.outcome;
            let measured_on = match o.evaluation.method {
                EvaluationMethod::HoldOut => {
                    format!("hold-out: the newest {} rows", o.holdout_rows)
                }
                EvaluationMethod::CrossValidated { folds } => {
                    format!(
                        "metrics: {folds}-fold cross-validated over {} rows",
                        o.holdout_rows
                    )
                }
                EvaluationMethod::OutOfBag => {
                    format!("metrics: out-of-bag over {} rows", o.holdout_rows)
                }
            };
            println!(
                "model {} ({}) trained on {} rows in {:.2} s; {measured_on}",
                registered.version,
                o.model.model_type(),
                o.train_rows,
                o.seconds,
            );
            if !o.tried.is_empty() {
                println!("parameters chosen: {}", o.params);
                for t in &o.tried {
                    println!("  candidate log loss {:.4}: {}", t.log_loss, t.params);
                }
            }
            print_metrics("this model", &o.evaluation.model);
            if let Some(rule) = &o.evaluation.rule_score {
                print_metrics("rule-based score", rule);
            }
            if let Some((version, m)) = &registered.previous {
                print_metrics(&format!("active model {version}"), m);
            }
            println!(
                "{}",
                if registered.activated {
                    format!("model {} is now active", registered.version)
                } else {
                    format!(
                        "model {} registered, not activated (`leadflow model activate {}`)",
                        registered.version, registered.version
                    )
                }
            );
        }
        ModelCommand::List => {
            println!(
                "{:>7} {:<18} {:<16} {:<16} {:>8} {:>7} {:>8} {:>7}  active",
                "version", "type", "trained", "reason", "rows", "auc", "logloss", "brier"
            );
            for m in store.list_models().await? {
                let metrics: StoredMetrics = serde_json::from_str(&m.entry.metrics)
                    .with_context(|| format!("metrics of model {}", m.version))?;
                let e = &metrics.evaluation.model;
                println!(
                    "{:>7} {:<18} {:<16} {:<16} {:>8} {:>7.4} {:>8.4} {:>7.4}  {}",
                    m.version,
                    m.entry.model_type,
                    format_millis(m.entry.trained_at),
                    m.entry.reason.chars().take(16).collect::<String>(),
                    m.entry.train_rows,
                    e.roc_auc,
                    e.log_loss,
                    e.brier,
                    if m.active { "*" } else { "" }
                );
            }
        }
        ModelCommand::Evaluate {
            version,
            window_days,
            csv,
        } => {
            let active = chosen_model(&store, version).await?;
            let version = active.version;
            let (dataset, rows) = match &csv.csv {
                Some(path) => {
                    let d = read_csv_dataset(path, &csv)?;
                    let n = d.examples.len();
                    (d, 0..n)
                }
                None => {
                    let window = window_days.unwrap_or(config.scoring.training.window_days);
                    let d = dataset_from_store(&store, &config.scoring, window).await?;
                    let rows = d.holdout_rows(config.scoring.training.holdout_fraction);
                    (d, rows)
                }
            };
            if rows.is_empty() {
                bail!("nothing to evaluate on: no closed leads (or rows)");
            }
            let evaluation = evaluate_model(&active.model, &dataset, rows);
            print_metrics(&format!("model {version}"), &evaluation.model);
            if let Some(rule) = &evaluation.rule_score {
                print_metrics("rule-based score", rule);
            }
        }
        ModelCommand::Activate { version } => {
            store
                .activate_model(version, chrono::Utc::now().timestamp_millis())
                .await?;
            println!(
                "model {version} is now active; running processors switch within {} ms",
                config.scoring.model.poll_interval_ms
            );
        }
        ModelCommand::Score {
            input,
            output,
            version,
        } => {
            let active = chosen_model(&store, version).await?;
            let version = active.version;
            let scored = score_csv(&active.model, &input, &output)?;
            println!(
                "scored {scored} rows of {} with model {version} into {}",
                input.display(),
                output.display()
            );
        }
    }
    Ok(())
}

/// A progress bar on a terminal, a log line per tenth otherwise.
struct CliProgress {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    total: std::sync::atomic::AtomicU64,
    logged: std::sync::atomic::AtomicU64,
    terminal: bool,
}

impl CliProgress {
    fn new() -> Self {
        use std::io::IsTerminal;
        CliProgress {
            bar: std::sync::Mutex::new(None),
            total: Default::default(),
            logged: Default::default(),
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl Drop for CliProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn stage(&self, name: &str, total: u64) {
        use std::sync::atomic::Ordering;
        self.total.store(total, Ordering::Relaxed);
        self.logged.store(0, Ordering::Relaxed);
        if self.terminal {
            let bar = indicatif::ProgressBar::new(total).with_message(name.to_string());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            *self.bar.lock().expect("progress lock") = Some(bar);
        } else {
            info!(stage = name, total, "training");
        }
    }

    fn advance(&self, done: u64) {
        use std::sync::atomic::Ordering;
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.set_position(done);
            return;
        }
        let total = self.total.load(Ordering::Relaxed).max(1);
        let tenth = done * 10 / total;
        if self.logged.fetch_max(tenth, Ordering::Relaxed) < tenth {
            info!(done, total, "training progress");
        }
    }
}

fn csv_spec(args: &CsvArgs) -> CsvSpec {
    CsvSpec {
        target: args.target.clone(),
        features: args.features.clone(),
        categorical: args.categorical.clone(),
        time_column: args.time_column.clone(),
        id_column: args.id_column.clone(),
    }
}

fn read_csv_dataset(path: &std::path::Path, args: &CsvArgs) -> Result<Dataset> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Dataset::from_csv(
        &path.display().to_string(),
        std::io::BufReader::new(file),
        &csv_spec(args),
    )?)
}

fn format_millis(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| at.to_string())
}

fn print_metrics(label: &str, m: &ModelMetrics) {
    println!(
        "{label:<22} rows {:>7}  won {:>6}  auc {:.4}  log_loss {:.4}  brier {:.4}  accuracy {:.3}  precision {:.3}  recall {:.3}  calibration_error {:.4}",
        m.rows, m.positives, m.roc_auc, m.log_loss, m.brier, m.accuracy, m.precision, m.recall, m.calibration_error
    );
}

/// The named model version, or the active one.
async fn chosen_model(store: &Store, version: Option<i64>) -> Result<ActiveModel> {
    let version = match version {
        Some(v) => v,
        None => store
            .active_model_version()
            .await?
            .context("no model is active; name a version")?,
    };
    load_model(store, version)
        .await?
        .with_context(|| format!("no model version {version}"))
}

/// Copies a CSV, adding `conversion_probability` from the model; a missing
/// column or an unreadable number is reported on stderr.
fn score_csv(
    model: &TrainedModel,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<usize> {
    let reader =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let writer =
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let rows = leadflow::ml::csv_scoring::score_csv(model, reader, writer, &mut |warning| {
        eprintln!("warning: {warning}")
    })
    .with_context(|| format!("scoring {}", input.display()))?;
    Ok(rows)
}
