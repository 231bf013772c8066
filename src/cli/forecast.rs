//! `leadflow forecast`: forecasts on demand, and their backtests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use leadflow::config::Config;
use leadflow::core::clock::wall_clock_millis;
use leadflow::core::state::LeadState;
use leadflow::events::{Millis, MILLIS_PER_DAY};
use leadflow::forecast::lead_generation;
use leadflow::forecast::pipeline_value;
use leadflow::forecast::scheduled::{self, MadeForecast};
use leadflow::forecast::series::DailySeries;
use leadflow::forecast::time_to_close::{self, CloseSummary};
use leadflow::pipeline::forecasts::record_on_demand;
use leadflow::store::prelude::*;
use leadflow::store::Store;

use super::open_store;

/// The levels of the offline CSV's columns (`lower_80` … `upper_95`).
const CSV_LEVELS: [f64; 2] = [0.8, 0.95];

#[derive(Subcommand)]
pub(crate) enum ForecastCommand {
    /// Leads to be created per day over the next days, with 80% and 95%
    /// intervals, as CSV: date,forecast,lower_80,upper_80,lower_95,upper_95.
    LeadGeneration(LeadGenerationArgs),
    /// What the open leads are worth: Σ probability × value, the
    /// historical figure, and intervals, with a breakdown by source, owner
    /// and stage.
    PipelineValue(PipelineValueArgs),
    /// Days from creation (and from entering each stage) to close, won and
    /// lost apart, counting open leads as still running.
    TimeToClose(TimeToCloseArgs),
    /// How the forecasts did at past origins. lead_generation: MASE next to
    /// seasonal naive, and how often the intervals held; pipeline_value:
    /// the value won within the horizon against the interval.
    Backtest(BacktestArgs),
}

#[derive(Args)]
pub(crate) struct AsOfArgs {
    /// The forecast's time (RFC 3339). Without it, the time of the newest
    /// event the store has applied: the processor's clock is event time.
    #[arg(long)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Store the forecast in `lead_forecasts` (once per forecast_id: the
    /// same kind, time and horizon again stores nothing new).
    #[arg(long)]
    record: bool,
}

#[derive(Args)]
pub(crate) struct PipelineValueArgs {
    #[command(flatten)]
    as_of: AsOfArgs,
    /// Days within which the wins are counted for the horizon figures.
    #[arg(long, default_value_t = 30)]
    horizon: u32,
}

#[derive(Args)]
pub(crate) struct TimeToCloseArgs {
    #[command(flatten)]
    as_of: AsOfArgs,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BacktestKind {
    LeadGeneration,
    PipelineValue,
}

#[derive(Args)]
pub(crate) struct BacktestArgs {
    #[command(flatten)]
    series: SeriesArgs,
    /// Only this forecast (lead-generation or pipeline-value); both without
    /// it, or only lead-generation when the series comes from --input.
    #[arg(long)]
    kind: Option<BacktestKind>,
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
        ForecastCommand::PipelineValue(args) => {
            let (store, leads, at) = leads_as_of(&config, &args.as_of).await?;
            let (value, model_version) =
                scheduled::pipeline_value_as_of(&leads, at, args.horizon, &CSV_LEVELS)
                    .map_err(|n| anyhow::anyhow!(n.reason))?;
            if args.as_of.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_pipeline_value(&value, at);
            }
            if args.as_of.record {
                let made = scheduled::made_pipeline_value(&value, model_version, at, CSV_LEVELS[0])
                    .map_err(|n| anyhow::anyhow!(n.reason))?;
                record(&config, &store, made).await?;
            }
        }
        ForecastCommand::TimeToClose(args) => {
            let (store, leads, at) = leads_as_of(&config, &args.as_of).await?;
            let result = time_to_close::time_to_close(&leads, at);
            if args.as_of.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print_time_to_close(&result, at);
            }
            if args.as_of.record {
                let made = scheduled::made_time_to_close(&result, at)
                    .map_err(|n| anyhow::anyhow!("nothing recorded: {}", n.reason))?;
                record(&config, &store, made).await?;
            }
        }
        ForecastCommand::Backtest(args) => {
            let lead_generation = args.kind != Some(BacktestKind::PipelineValue);
            let pipeline_value = match args.kind {
                Some(kind) => kind == BacktestKind::PipelineValue,
                None => args.series.input.is_none(),
            };
            if pipeline_value && args.series.input.is_some() {
                anyhow::bail!(
                    "--input is a daily series, which only lead-generation reads; \
                     the pipeline-value backtest reads the leads in the database"
                );
            }
            let mut json = serde_json::Map::new();
            if lead_generation {
                let series = series(&config, &args.series).await?;
                let result = lead_generation::backtest(
                    &series,
                    args.series.horizon,
                    args.origins,
                    args.step,
                    &CSV_LEVELS,
                )?;
                if args.json {
                    json.insert("lead_generation".into(), serde_json::to_value(&result)?);
                } else {
                    print_lead_generation_backtest(&result);
                }
            }
            if pipeline_value {
                let store = open_store(&config).await?;
                let leads = store.all_lead_states().await?;
                let end = store
                    .newest_update()
                    .await?
                    .context("no leads in the database, so there is nothing to backtest")?;
                let horizon_ms = args.series.horizon as Millis * MILLIS_PER_DAY;
                let origins: Vec<Millis> = (0..args.origins)
                    .rev()
                    .map(|k| end - horizon_ms - (k * args.step) as Millis * MILLIS_PER_DAY)
                    .collect();
                let result = pipeline_value::backtest(
                    &leads,
                    &origins,
                    args.series.horizon as f64,
                    &CSV_LEVELS,
                )?;
                if args.json {
                    json.insert("pipeline_value".into(), serde_json::to_value(&result)?);
                } else {
                    print_pipeline_backtest(&result);
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
        }
    }
    Ok(())
}

fn held(coverage: &[(f64, f64)], level: f64) -> String {
    coverage
        .iter()
        .find(|(l, _)| *l == level)
        .map_or("-".into(), |(_, c)| format!("{:.1}%", 100.0 * c))
}

fn print_lead_generation_backtest(result: &lead_generation::Backtest) {
    println!(
        "lead_generation: {} origins, {} days ahead",
        result.origins, result.horizon
    );
    println!(
        "  {:<16} {:>7} {:>9} {:>9}",
        "", "MASE", "80% held", "95% held"
    );
    println!(
        "  {:<16} {:>7.3} {:>9} {:>9}",
        "leadflow",
        result.mase,
        held(&result.coverage, 0.8),
        held(&result.coverage, 0.95)
    );
    println!(
        "  {:<16} {:>7.3} {:>9} {:>9}",
        "seasonal naive", result.seasonal_naive_mase, "-", "-"
    );
}

fn print_pipeline_backtest(result: &pipeline_value::PipelineBacktest) {
    println!(
        "pipeline_value: {} origins, wins within {} days",
        result.origins.len(),
        result.horizon_days
    );
    println!(
        "  {:<18} {:>6} {:>9} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "origin", "open", "exp. wins", "wins", "forecast", "won", "80% lower", "80% upper"
    );
    for row in &result.origins {
        let interval = row.intervals.iter().find(|i| i.level == 0.8);
        println!(
            "  {:<18} {:>6} {:>9.1} {:>6} {:>12.0} {:>12.0} {:>12} {:>12}",
            format_time(row.origin),
            row.open_leads,
            row.expected_wins,
            row.wins,
            row.forecast,
            row.realised,
            interval.map_or("-".into(), |i| format!("{:.0}", i.within_horizon_lower)),
            interval.map_or("-".into(), |i| format!("{:.0}", i.within_horizon_upper)),
        );
    }
    println!(
        "  held: 80% {}, 95% {}; mean |won - forecast| / mean won {:.3}",
        held(&result.coverage, 0.8),
        held(&result.coverage, 0.95),
        result.relative_error
    );
}

fn print_pipeline_value(value: &pipeline_value::PipelineValue, at: Millis) {
    println!(
        "pipeline_value at {}: {} open leads ({} scored by the model, {} by historical rates)",
        format_time(at),
        value.open_leads,
        value.from_model,
        value.from_history
    );
    println!(
        "  current pipeline value    {:>14.0}",
        value.current_pipeline_value
    );
    println!(
        "  forecasted value (Σ p·v)  {:>14.0}",
        value.forecasted_value
    );
    println!(
        "  within {:>3} days          {:>14.0}",
        value.horizon_days, value.forecasted_within_horizon
    );
    println!(
        "  historical estimate       {:>14.0}  (conversion {:.1}% × avg deal {:.0} × open leads; {} won, {} lost)",
        value.historical_estimate,
        100.0 * value.conversion_rate,
        value.avg_deal_value,
        value.closed_won,
        value.closed_lost
    );
    for interval in &value.intervals {
        println!(
            "  {:>4.0}% interval {:>12.0} – {:<12.0} within the horizon {:.0} – {:.0}",
            100.0 * interval.level,
            interval.lower,
            interval.upper,
            interval.within_horizon_lower,
            interval.within_horizon_upper
        );
    }
    for (title, groups) in [
        ("source", &value.by_source),
        ("owner", &value.by_owner),
        ("stage", &value.by_stage),
    ] {
        println!(
            "  {:<20} {:>6} {:>14} {:>14} {:>14}",
            format!("by {title}"),
            "open",
            "current",
            "expected",
            "in horizon"
        );
        for (name, group) in groups {
            println!(
                "  {:<20} {:>6} {:>14.0} {:>14.0} {:>14.0}",
                name,
                group.open_leads,
                group.current_value,
                group.expected_value,
                group.expected_within_horizon
            );
        }
    }
}

fn print_time_to_close(result: &time_to_close::TimeToClose, at: Millis) {
    println!(
        "time_to_close at {} (days; open leads counted as still running; - where too few have closed)",
        format_time(at)
    );
    println!(
        "  {:<22} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "", "leads", "won", "lost", "open", "p25", "median", "p75", "p90"
    );
    let days = |d: Option<f64>| d.map_or("-".into(), |d| format!("{d:.1}"));
    let row = |name: &str, what: &str, s: &CloseSummary| {
        let q = match what {
            "won" => &s.to_win,
            "lost" => &s.to_loss,
            _ => &s.any_close,
        };
        println!(
            "  {:<22} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7}",
            format!("{name} {what}"),
            s.observations,
            s.won,
            s.lost,
            s.open,
            days(q.p25),
            days(q.median),
            days(q.p75),
            days(q.p90)
        );
    };
    for what in ["any", "won", "lost"] {
        row("all", what, &result.overall);
    }
    for (source, summary) in &result.by_source {
        for what in ["won", "lost"] {
            row(&format!("source {source}"), what, summary);
        }
    }
    for (stage, summary) in &result.from_stage {
        row(&format!("from {stage}"), "any", summary);
    }
}

/// Stores the forecast with its inputs summarised and puts it in the
/// outbox (partition 0's owner publishes it); says on stderr whether it was new.
async fn record(config: &Config, store: &Store, made: MadeForecast) -> Result<()> {
    let id = made.event.forecast_id.clone();
    let new = record_on_demand(store, config, &[made], wall_clock_millis()).await?;
    eprintln!(
        "forecast {id} {}",
        if new.is_empty() {
            "was already recorded; nothing stored"
        } else {
            "recorded in lead_forecasts and queued for lead-forecasts"
        }
    );
    Ok(())
}

fn format_time(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map_or(at.to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// The store, every lead state (the forecasts need each lead's history)
/// and the forecast's time.
async fn leads_as_of(config: &Config, args: &AsOfArgs) -> Result<(Store, Vec<LeadState>, Millis)> {
    let store = open_store(config).await?;
    let leads = store.all_lead_states().await?;
    let at = match args.at {
        Some(at) => at.timestamp_millis(),
        None => store
            .newest_update()
            .await?
            .context("no leads in the database, so there is nothing to forecast")?,
    };
    Ok((store, leads, at))
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
