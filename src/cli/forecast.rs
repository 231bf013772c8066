//! `leadflow forecast`: forecasts on demand, and their backtests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use leadflow::config::Config;
use leadflow::forecast::lead_generation;
use leadflow::forecast::series::DailySeries;
use leadflow::store::prelude::*;

use super::open_store;

/// The levels of the offline CSV's columns (`lower_80` … `upper_95`).
const CSV_LEVELS: [f64; 2] = [0.8, 0.95];

#[derive(Subcommand)]
pub(crate) enum ForecastCommand {
    /// Leads to be created per day over the next days, with 80% and 95%
    /// intervals, as CSV: date,forecast,lower_80,upper_80,lower_95,upper_95.
    LeadGeneration(LeadGenerationArgs),
    /// How the lead-generation forecast did at past origins: MASE next to
    /// seasonal naive, and how often the intervals held.
    Backtest(BacktestArgs),
}

#[derive(Args)]
pub(crate) struct SeriesArgs {
    /// A CSV with the header `date,count`, one row per day (ISO dates; a
    /// missing day is a day without leads). Without it, leads created per
    /// UTC day are counted in the database.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Days to forecast.
    #[arg(long, default_value_t = 14)]
    horizon: usize,
}

#[derive(Args)]
pub(crate) struct LeadGenerationArgs {
    #[command(flatten)]
    series: SeriesArgs,
    /// Where the CSV goes; standard output without it.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct BacktestArgs {
    #[command(flatten)]
    series: SeriesArgs,
    /// Past origins to forecast from, the newest `horizon` days before the end.
    #[arg(long, default_value_t = 8)]
    origins: usize,
    /// Days between origins.
    #[arg(long, default_value_t = 7)]
    step: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn forecast(config: Config, command: ForecastCommand) -> Result<()> {
    match command {
        ForecastCommand::LeadGeneration(args) => {
            let series = series(&config, &args.series).await?;
            let result = lead_generation::forecast(&series, args.series.horizon, &CSV_LEVELS)?;
            match &args.output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    result.write_csv(file)?;
                }
                None => result.write_csv(std::io::stdout().lock())?,
            }
            let tried: Vec<String> = result
                .candidates
                .iter()
                .map(|c| format!("{} {:.3}", c.method, c.mase))
                .collect();
            eprintln!(
                "{} days of history to {}; method {} (MASE over {} past origins: {}); {:.1} leads expected in {} days",
                series.counts.len(),
                series.end(),
                result.method,
                result.origins,
                tried.join(", "),
                result.expected_total(),
                args.series.horizon
            );
        }
        ForecastCommand::Backtest(args) => {
            let series = series(&config, &args.series).await?;
            let result = lead_generation::backtest(
                &series,
                args.series.horizon,
                args.origins,
                args.step,
                &CSV_LEVELS,
            )?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(());
            }
            println!(
                "lead_generation: {} origins, {} days ahead",
                result.origins, result.horizon
            );
            println!("  {:<16} {:>7} {:>9} {:>9}", "", "MASE", "80% held", "95% held");
            let held = |level: f64| {
                result
                    .coverage
                    .iter()
                    .find(|(l, _)| *l == level)
                    .map_or("-".into(), |(_, c)| format!("{:.1}%", 100.0 * c))
            };
            println!(
                "  {:<16} {:>7.3} {:>9} {:>9}",
                "leadflow",
                result.mase,
                held(0.8),
                held(0.95)
            );
            println!(
                "  {:<16} {:>7.3} {:>9} {:>9}",
                "seasonal naive", result.seasonal_naive_mase, "-", "-"
            );
        }
    }
    Ok(())
}

async fn series(config: &Config, args: &SeriesArgs) -> Result<DailySeries> {
    match &args.input {
        Some(path) => read_series(path),
        None => {
            let store = open_store(config).await?;
            let days = store.leads_created_per_day().await?;
            DailySeries::from_epoch_days(&days)
                .context("no leads in the database, so there is no series to forecast")
        }
    }
}

fn read_series(path: &Path) -> Result<DailySeries> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    DailySeries::from_csv(file).with_context(|| format!("reading {}", path.display()))
}
