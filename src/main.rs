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
use leadflow::pipeline::{replay, Pipeline, RunOptions};
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
    }
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
    let params = SimulationParams {
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
