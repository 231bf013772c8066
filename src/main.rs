//! The `leadflow` binary: parses the command line, loads the configuration
//! and hands over to the library. Errors end here, as `anyhow` reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::info;

use leadflow::api::{self, HttpState};
use leadflow::codec::{Codec, RegistryClient};
use leadflow::config::Config;
use leadflow::events::{timestamp, InputEvent, MILLIS_PER_DAY};
use leadflow::kafka::{self, InputFormat, TopicOutcome};
use leadflow::metrics::Metrics;
use leadflow::ml::evaluation::Metrics as ModelMetrics;
use leadflow::ml::features::FeatureValue;
use leadflow::ml::model::{ModelType, TrainedModel};
use leadflow::ml::table::ColumnKind;
use leadflow::ml::training::{evaluate_model, CsvSpec, Dataset, Progress};
use leadflow::ml::ActiveModel;
use leadflow::notify::worker::NotifyWorker;
use leadflow::pipeline::{replay, Pipeline, RunOptions};
use leadflow::registry::{
    dataset_from_store, load_model, train_and_register, Activation, StoredMetrics,
};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::{LeadStore, Store};

#[derive(Parser)]
#[command(
    name = "leadflow",
    version,
    about = "Scores, nurtures and forecasts sales leads from Kafka event streams"
)]
struct Cli {
    /// TOML configuration file; every key is optional (see config/leadflow.example.toml).
    #[arg(long, short, global = true, env = "LEADFLOW_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: consume the input topics and keep every lead's state.
    Run(RunArgs),
    /// Run the delivery worker: send outbound messages through SendGrid and
    /// Twilio, once each, and report on message-deliveries.
    Notify(NotifyArgs),
    /// Generate deterministic synthetic traffic to the input topics or to a file.
    Simulate(SimulateArgs),
    /// Manage the Kafka topics leadflow uses.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Create or upgrade the database schema (also done by `run` at start-up).
    Migrate,
    /// Look at stored lead state.
    #[command(subcommand)]
    Leads(LeadsCommand),
    /// Train, inspect and activate conversion models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Import historical leads (with their outcome) from a CSV file.
    Import(ImportArgs),
    /// A/B tests of nurturing sequences: per variant, leads enrolled, replies
    /// and closed_won, with lift and a two-proportion test against the control.
    Experiments(ExperimentsArgs),
}

#[derive(Args)]
struct ExperimentsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// CSV with a header row: lead_ext_id, created_at, outcome, closed_at, source, ...;
    /// other columns become custom attributes (see docs/MODELS.md).
    file: PathBuf,
    /// What to do when a row is invalid: refuse the whole file, or skip the row.
    #[arg(long, value_enum, default_value_t = OnError::Refuse)]
    on_error: OnError,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnError {
    Refuse,
    Skip,
}

/// Where training or evaluation rows come from when not from the database.
#[derive(Args, Clone)]
struct CsvArgs {
    /// Read rows from this CSV instead of the closed leads in the database.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// With --csv: the outcome column (1/0, won/lost, ...).
    #[arg(long, default_value = "converted", requires = "csv")]
    target: String,
    /// With --csv: feature columns, comma-separated (default: all but target, id and time).
    #[arg(long, value_delimiter = ',', requires = "csv")]
    features: Vec<String>,
    /// With --csv: columns to treat as categories (others are numbers if every value parses).
    #[arg(long, value_delimiter = ',', requires = "csv")]
    categorical: Vec<String>,
    /// With --csv: the column that orders rows for the time-based hold-out (default: file order).
    #[arg(long, requires = "csv")]
    time_column: Option<String>,
    /// With --csv: a row id column, excluded from the features.
    #[arg(long, requires = "csv")]
    id_column: Option<String>,
}

#[derive(Subcommand)]
enum ModelCommand {
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
enum ModelTypeArg {
    GradientBoosting,
    RandomForest,
    Logistic,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActivateArg {
    Never,
    IfNotWorse,
    Always,
}

#[derive(Args)]
struct NotifyArgs {
    /// Stop after this many seconds with nothing received and nothing in
    /// flight (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    exit_when_idle: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    /// Stop after this many seconds without a new message (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", conflicts_with = "from_file")]
    exit_when_idle: Option<u64>,
    /// Replay a stream file written by `simulate --output` instead of
    /// consuming Kafka: same core, clock driven by event time.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// With --from-file: where to write the outputs, one `<topic>.jsonl` per output topic.
    #[arg(
        long,
        value_name = "DIR",
        requires = "from_file",
        default_value = "data/replay"
    )]
    output_dir: PathBuf,
}

#[derive(Args)]
struct SimulateArgs {
    /// Seed of the generator; the same arguments always give the same events.
    #[arg(long, default_value_t = 42, allow_negative_numbers = true)]
    seed: u64,
    /// Number of leads to create.
    #[arg(long, default_value_t = 1_000, allow_negative_numbers = true)]
    leads: u32,
    /// Length of the simulated period in days.
    #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
    days: u32,
    /// Most events per second to publish (0: as fast as the broker accepts).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    rate: u32,
    /// First day of the simulated period (YYYY-MM-DD or RFC 3339); default: --days before today.
    #[arg(long)]
    start: Option<String>,
    /// Write the stream to this file (JSON Lines) instead of publishing it.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Wire format of the published events.
    #[arg(long, value_enum, default_value_t = InputFormat::Avro)]
    format: InputFormat,
    /// Replace the built-in source mix, e.g. `social=3,paid_search=1` (relative weights).
    #[arg(long, value_name = "SOURCE=WEIGHT,...", value_delimiter = ',')]
    source_mix: Vec<String>,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the input, output and dead-letter topics (existing ones are kept).
    Create,
}

#[derive(Subcommand)]
enum LeadsCommand {
    /// Print one lead's full state as JSON.
    Get { lead_ext_id: String },
    /// List leads (id, stage, owner, source, segment, score).
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Start after this lead id (for paging).
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Count stored leads.
    Count,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEADFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(dispatch(cli.command, config))
}

async fn dispatch(command: Command, config: Config) -> Result<()> {
    match command {
        Command::Run(args) => run(config, args).await,
        Command::Notify(args) => notify(config, args).await,
        Command::Simulate(args) => simulate(config, args).await,
        Command::Topics(TopicsCommand::Create) => {
            for (topic, outcome) in kafka::create_topics(&config).await? {
                let what = match outcome {
                    TopicOutcome::Created => "created",
                    TopicOutcome::AlreadyExists => "exists",
                };
                println!("{what:>8}  {topic}");
            }
            Ok(())
        }
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("database schema is up to date ({})", store.backend());
            Ok(())
        }
        Command::Leads(command) => leads(config, command).await,
        Command::Model(command) => model(config, command).await,
        Command::Import(args) => import(config, args).await,
        Command::Experiments(args) => experiments(config, args).await,
    }
}

/// Messages per sequence, template and variant, as a replay produced them.
fn print_message_counts(outputs: &[leadflow::core::apply::Output]) {
    let mut counts: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
    for o in outputs {
        if let leadflow::core::apply::Output::Message(m) = o {
            let variant = m.variant.clone().unwrap_or_else(|| "-".into());
            *counts
                .entry((m.sequence.clone(), m.template.clone(), variant))
                .or_default() += 1;
        }
    }
    if counts.is_empty() {
        return;
    }
    println!(
        "{:<16} {:<30} {:<10} {:>9}",
        "sequence", "template", "variant", "messages"
    );
    for ((sequence, template, variant), n) in counts {
        println!("{sequence:<16} {template:<30} {variant:<10} {n:>9}");
    }
}

async fn experiments(config: Config, args: ExperimentsArgs) -> Result<()> {
    let store = open_store(&config).await?;
    let counts = store.experiment_counts().await?;
    let order = config.nurture.sequences.0.experiments();
    let reports = leadflow::core::nurture::experiments::report(&counts, &order);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!(
            "no experiments: no sequence in {} has variants",
            config.nurture.sequences.0.origin
        );
    }
    let pct = |r: f64| format!("{:.2}%", 100.0 * r);
    let lift = |l: Option<f64>| {
        l.map(|l| format!("{:+.1}%", 100.0 * l))
            .unwrap_or_else(|| "-".into())
    };
    let p = |p: Option<f64>| p.map(|p| format!("{p:.4}")).unwrap_or_else(|| "-".into());
    for report in reports {
        println!("experiment {}", report.experiment);
        let names: Vec<String> = report
            .variants
            .iter()
            .map(|v| match v.control {
                true => format!("{} (control)", v.variant),
                false => v.variant.clone(),
            })
            .collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(7);
        println!(
            "  {:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
            "variant", "enrolled", "replied", "rate", "lift", "p", "won", "rate", "lift", "p"
        );
        for (name, v) in names.iter().zip(&report.variants) {
            println!(
                "  {:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
                name,
                v.enrolled,
                v.replied,
                pct(v.reply.rate),
                lift(v.reply.lift),
                p(v.reply.p_value),
                v.converted,
                pct(v.conversion.rate),
                lift(v.conversion.lift),
                p(v.conversion.p_value),
            );
        }
    }
    Ok(())
}

async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::connect(&config.database.url, config.database.max_connections)
        .await
        .with_context(|| format!("connecting to {}", config.database.url))?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

fn codec(config: &Config) -> Result<Codec> {
    let registry = match config.schema_registry.url.as_str() {
        "" => None,
        url => Some(RegistryClient::new(
            url,
            Duration::from_millis(config.schema_registry.timeout_ms),
        )?),
    };
    Ok(Codec::new(registry))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received; finishing the batch in hand"),
        _ = term.recv() => info!("SIGTERM received; finishing the batch in hand"),
    }
}

async fn notify(config: Config, args: NotifyArgs) -> Result<()> {
    config.notify.check().context("configuration")?;
    let store = Arc::new(open_store(&config).await?);
    let codec = Arc::new(codec(&config)?);
    let metrics = Arc::new(Metrics::new());
    let http = api::serve(
        &config.notify.http_listen,
        HttpState {
            metrics: metrics.clone(),
        },
    )
    .await
    .with_context(|| format!("binding notify.http_listen {}", config.notify.http_listen))?;
    info!(
        database = %config.database.url,
        brokers = %config.kafka.bootstrap_servers,
        group = %config.notify.group_id,
        metrics = %format!("http://{http}/metrics"),
        "delivery worker starting"
    );
    let worker = NotifyWorker::new(config, store, codec, metrics)?;
    let summary = worker
        .run(
            args.exit_when_idle.map(Duration::from_secs),
            shutdown_signal(),
        )
        .await?;
    println!(
        "consumed {} messages: {} sent, {} failed, {} bounced, {} dropped, {} already handled, {} dead-lettered",
        summary.consumed,
        summary.sent,
        summary.failed,
        summary.bounced,
        summary.dropped,
        summary.duplicates,
        summary.dead_lettered
    );
    Ok(())
}

async fn run(config: Config, args: RunArgs) -> Result<()> {
    let store = Arc::new(open_store(&config).await?);
    if let Some(path) = &args.from_file {
        let events =
            simulate::read_stream(path).with_context(|| format!("reading {}", path.display()))?;
        let started = std::time::Instant::now();
        let (summary, outputs) = replay::replay(&config, store.as_ref(), events).await?;
        let topics = replay::write_outputs(&config, &args.output_dir, &outputs)?;
        println!(
            "replayed {} events in {:.1} s: {} applied, {} duplicates skipped; {} outputs written to {} ({})",
            summary.consumed,
            started.elapsed().as_secs_f64(),
            summary.applied,
            summary.duplicates,
            outputs.len(),
            args.output_dir.display(),
            topics.join(", ")
        );
        print_message_counts(&outputs);
        return Ok(());
    }
    let codec = Arc::new(codec(&config)?);
    let metrics = Arc::new(Metrics::new());
    let http = api::serve(
        &config.http.listen,
        HttpState {
            metrics: metrics.clone(),
        },
    )
    .await
    .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    info!(
        database = %config.database.url,
        brokers = %config.kafka.bootstrap_servers,
        group = %config.kafka.group_id,
        metrics = %format!("http://{http}/metrics"),
        "processor starting"
    );
    let pipeline = Pipeline::new(config, store.clone(), codec, metrics)?;
    let options = RunOptions {
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs),
    };
    let summary = pipeline.run(options, shutdown_signal()).await?;
    println!(
        "consumed {} messages: {} events applied, {} duplicates skipped, {} dead-lettered, {} outputs; {} leads stored",
        summary.consumed,
        summary.applied,
        summary.duplicates,
        summary.dead_lettered,
        summary.outputs,
        store.lead_count().await?
    );
    Ok(())
}

fn parse_start(raw: &str) -> Result<i64> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    timestamp::parse_rfc3339(raw)
        .map_err(|e| anyhow::anyhow!("--start: {e} (use YYYY-MM-DD or RFC 3339)"))
}

async fn simulate(config: Config, args: SimulateArgs) -> Result<()> {
    let start = match &args.start {
        Some(raw) => parse_start(raw)?,
        None => {
            let today = chrono::Utc::now().timestamp_millis() / MILLIS_PER_DAY * MILLIS_PER_DAY;
            today - args.days as i64 * MILLIS_PER_DAY
        }
    };
    let mut source_shares = std::collections::BTreeMap::new();
    for pair in &args.source_mix {
        let (source, weight) = pair
            .split_once('=')
            .with_context(|| format!("--source-mix: `{pair}` is not SOURCE=WEIGHT"))?;
        let weight: f64 = weight.trim().parse().with_context(|| {
            format!("--source-mix: weight `{weight}` of {source} is not a number")
        })?;
        source_shares.insert(source.trim().to_string(), weight);
    }
    let params = SimulationParams {
        source_shares,
        seed: args.seed,
        leads: args.leads,
        days: args.days,
        start,
    };
    if let Err(reason) = params.validate() {
        bail!("simulate: {reason}");
    }
    let events = simulate::generate(&params);
    let count = |f: fn(&InputEvent) -> bool| events.iter().filter(|e| f(e)).count();
    let summary = format!(
        "{} leads over {} days from {}: {} events ({} lead, {} interaction, {} stage change)",
        params.leads,
        params.days,
        timestamp::format(start),
        events.len(),
        count(|e| matches!(e, InputEvent::Lead(_))),
        count(|e| matches!(e, InputEvent::Interaction(_))),
        count(|e| matches!(e, InputEvent::StageChange(_))),
    );
    match &args.output {
        Some(path) => {
            simulate::write_stream(path, &events)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("{summary}; written to {}", path.display());
        }
        None => {
            let codec = codec(&config)?;
            let sent =
                kafka::publish_inputs(&config, &codec, &events, args.format, args.rate).await?;
            println!(
                "{summary}; {sent} published to {}",
                config.kafka.bootstrap_servers
            );
        }
    }
    Ok(())
}

async fn leads(config: Config, command: LeadsCommand) -> Result<()> {
    let store = open_store(&config).await?;
    match command {
        LeadsCommand::Get { lead_ext_id } => match store.get_lead(&lead_ext_id).await? {
            Some(state) => println!("{}", serde_json::to_string_pretty(&state)?),
            None => bail!("no lead {lead_ext_id}"),
        },
        LeadsCommand::List { limit, after } => {
            println!(
                "{:<12} {:<12} {:<8} {:<12} {:<14} {:>6}",
                "lead", "stage", "owner", "source", "segment", "score"
            );
            for l in store.list_leads(&after, limit).await? {
                println!(
                    "{:<12} {:<12} {:<8} {:<12} {:<14} {:>6}",
                    l.lead_ext_id,
                    l.stage,
                    l.owner.unwrap_or_default(),
                    l.source.unwrap_or_default(),
                    l.segment.unwrap_or_default(),
                    l.final_score.map(|s| format!("{s:.1}")).unwrap_or_default()
                );
            }
        }
        LeadsCommand::Count => println!("{}", store.lead_count().await?),
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

async fn model(mut config: Config, command: ModelCommand) -> Result<()> {
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
            println!(
                "model {} ({}) trained on {} rows in {:.2} s; hold-out: the newest {} rows",
                registered.version,
                o.model.model_type(),
                o.train_rows,
                o.seconds,
                o.holdout_rows
            );
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
                let metrics: StoredMetrics = serde_json::from_str(&m.metrics)
                    .with_context(|| format!("metrics of model {}", m.version))?;
                let e = &metrics.evaluation.model;
                println!(
                    "{:>7} {:<18} {:<16} {:<16} {:>8} {:>7.4} {:>8.4} {:>7.4}  {}",
                    m.version,
                    m.model_type,
                    format_millis(m.trained_at),
                    m.reason.chars().take(16).collect::<String>(),
                    m.train_rows,
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
                    let n = d.examples.len();
                    let start = d.holdout_start(config.scoring.training.holdout_fraction);
                    (d, start..n)
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

/// Copies a CSV, adding `conversion_probability` from the model. Feature
/// columns are found by name; a missing column or an unreadable number is a
/// missing value, reported on stderr.
fn score_csv(
    model: &TrainedModel,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<usize> {
    let mut reader =
        csv::Reader::from_path(input).with_context(|| format!("opening {}", input.display()))?;
    let headers = reader.headers()?.clone();
    let columns: Vec<Option<usize>> = model
        .encoder
        .features
        .iter()
        .map(|f| headers.iter().position(|h| h.trim() == f.name))
        .collect();
    for (f, c) in model.encoder.features.iter().zip(&columns) {
        if c.is_none() {
            eprintln!("warning: no column `{}`; scored as missing", f.name);
        }
    }
    let mut writer =
        csv::Writer::from_path(output).with_context(|| format!("creating {}", output.display()))?;
    let mut out_headers = headers.clone();
    out_headers.push_field("conversion_probability");
    writer.write_record(&out_headers)?;
    let mut rows = 0;
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let mut record = record.with_context(|| format!("{} line {line}", input.display()))?;
        let values: Vec<FeatureValue> = model
            .encoder
            .features
            .iter()
            .zip(&columns)
            .map(|(f, c)| {
                let raw = c.and_then(|c| record.get(c)).unwrap_or("").trim();
                match f.kind {
                    ColumnKind::Numeric => FeatureValue::Number(if raw.is_empty() {
                        f64::NAN
                    } else {
                        raw.parse().unwrap_or_else(|_| {
                            eprintln!("warning: line {line}: {} `{raw}` is not a number; scored as missing", f.name);
                            f64::NAN
                        })
                    }),
                    ColumnKind::Categorical => {
                        FeatureValue::Category((!raw.is_empty()).then(|| raw.to_string()))
                    }
                }
            })
            .collect();
        record.push_field(&format!("{:.6}", model.probability(&values)));
        writer.write_record(&record)?;
        rows += 1;
    }
    writer.flush()?;
    Ok(rows)
}

async fn import(config: Config, args: ImportArgs) -> Result<()> {
    let path = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {path}"))?;
    let parsed = leadflow::import::parse_csv(&path, std::io::BufReader::new(file))?;
    for e in &parsed.errors {
        eprintln!("{path} line {}: {}", e.line, e.reason);
    }
    if !parsed.errors.is_empty() && args.on_error == OnError::Refuse {
        bail!(
            "{} of {} rows are invalid; nothing imported (fix them, or pass --on-error skip)",
            parsed.errors.len(),
            parsed.errors.len() + parsed.rows.len()
        );
    }
    let store = open_store(&config).await?;
    let summary = leadflow::import::import_rows(&store, &config, &parsed.rows).await?;
    println!(
        "imported {} leads ({} events applied, {} already imported); {} rows skipped",
        parsed.rows.len(),
        summary.applied,
        summary.duplicates,
        parsed.errors.len()
    );
    Ok(())
}
