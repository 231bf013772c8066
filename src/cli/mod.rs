//! The command line: one file per subcommand, each parsing its arguments
//! and calling the library. Errors end here, as `anyhow` reports them.

mod analytics;
mod apikey;
mod erase;
mod experiments;
mod export;
mod forecast;
mod import;
mod leads;
mod model;
mod notify;
mod run;
mod simulate;
mod topics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::info;

use leadflow::api::{self, ApiState, HttpState};
use leadflow::codec::{Codec, RegistryClient};
use leadflow::config::Config;
use leadflow::metrics::Metrics;
use leadflow::store::prelude::*;
use leadflow::store::Store;

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
    Run(run::RunArgs),
    /// Run the delivery worker: send outbound messages through SendGrid and
    /// Twilio, once each, and report on message-deliveries.
    Notify(notify::NotifyArgs),
    /// Generate deterministic synthetic traffic to the input topics or to a file.
    Simulate(simulate::SimulateArgs),
    /// Manage the Kafka topics leadflow uses.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Create or upgrade the database schema (also done by `run` at start-up).
    Migrate,
    /// Look at stored lead state.
    #[command(subcommand)]
    Leads(leads::LeadsCommand),
    /// Train, inspect and activate conversion models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Import historical leads (with their outcome) from a CSV file.
    Import(import::ImportArgs),
    /// A/B tests of nurturing sequences: per variant, leads enrolled, replies
    /// and closed_won, with lift and a two-proportion test against the control.
    Experiments(experiments::ExperimentsArgs),
    /// Forecasts on demand (lead generation per day) and their backtests.
    #[command(subcommand)]
    Forecast(forecast::ForecastCommand),
    /// Reports over the stage transitions (funnel, time in stage, per owner
    /// and source, per day, pipeline) and the stored daily history.
    #[command(subcommand)]
    Analytics(analytics::AnalyticsCommand),
    /// Keys of the REST API (/api/v1): create (printed once), list, revoke.
    #[command(subcommand)]
    Apikey(apikey::ApiKeyCommand),
    /// Erase a lead's personal data (GDPR): the erasure goes to the lead's
    /// partition of the leads topic and the processor applies it everywhere.
    Erase(erase::EraseArgs),
    /// Everything held about a lead (GDPR), as one JSON document.
    Export(export::ExportArgs),
}

/// Parses the command line, loads the configuration and runs the command.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(dispatch(cli.command, config))
}

async fn dispatch(command: Command, config: Config) -> Result<()> {
    match command {
        Command::Run(args) => run::run(config, args).await,
        Command::Notify(args) => notify::notify(config, args).await,
        Command::Simulate(args) => simulate::simulate(config, args).await,
        Command::Topics(command) => topics::topics(config, command).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("database schema is up to date ({})", store.backend());
            Ok(())
        }
        Command::Leads(command) => leads::leads(config, command).await,
        Command::Model(command) => model::model(config, command).await,
        Command::Import(args) => import::import(config, args).await,
        Command::Experiments(args) => experiments::experiments(config, args).await,
        Command::Forecast(command) => forecast::forecast(config, command).await,
        Command::Analytics(command) => analytics::analytics(config, command).await,
        Command::Apikey(command) => apikey::apikey(config, command).await,
        Command::Erase(args) => erase::erase(config, args).await,
        Command::Export(args) => export::export(config, args).await,
    }
}

/// What the processor and the delivery worker both start with: the store,
/// the codec, and the metrics served on `listen` (`key` names the setting).
pub(crate) struct Service {
    pub(crate) store: Arc<Store>,
    pub(crate) codec: Arc<Codec>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Which service starts: the processor serves the REST API too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceKind {
    Processor,
    DeliveryWorker,
}

pub(crate) async fn start_service(
    config: &Config,
    key: &str,
    listen: &str,
    group: &str,
    kind: ServiceKind,
) -> Result<Service> {
    let what = match kind {
        ServiceKind::Processor => "processor",
        ServiceKind::DeliveryWorker => "delivery worker",
    };
    let store = Arc::new(open_store(config).await?);
    let codec = Arc::new(codec(config)?);
    let metrics = Arc::new(Metrics::new());
    let api = match kind {
        ServiceKind::Processor if config.api.enabled => {
            let producer = leadflow::kafka::producer(&config.kafka)
                .context("the REST API's producer (POST /events)")?;
            Some(Arc::new(ApiState::new(
                config.clone(),
                store.clone(),
                codec.clone(),
                metrics.clone(),
                producer,
            )))
        }
        _ => None,
    };
    let http = api::serve(
        listen,
        HttpState {
            metrics: metrics.clone(),
            api,
        },
    )
    .await
    .with_context(|| format!("binding {key} {listen}"))?;
    info!(
        database = %config.database.url,
        brokers = %config.kafka.bootstrap_servers,
        group = %group,
        metrics = %format!("http://{http}/metrics"),
        "{what} starting"
    );
    Ok(Service {
        store,
        codec,
        metrics,
    })
}

pub(crate) async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::connect(&config.database.url, config.database.max_connections)
        .await
        .with_context(|| format!("connecting to {}", config.database.url))?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

/// Who a GDPR request from the command line is audited as.
pub(crate) fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

pub(crate) fn codec(config: &Config) -> Result<Codec> {
    let registry = match config.schema_registry.url.as_str() {
        "" => None,
        url => Some(RegistryClient::new(
            url,
            Duration::from_millis(config.schema_registry.timeout_ms),
        )?),
    };
    Ok(Codec::new(registry))
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received; finishing the batch in hand"),
        _ = term.recv() => info!("SIGTERM received; finishing the batch in hand"),
    }
}
