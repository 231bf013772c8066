//! `leadflow analytics`: reports over the stage transitions.

use anyhow::Result;
use chrono::NaiveDate;
use clap::{Args, Subcommand};

use leadflow::analytics::breakdown::{self, Dimension};
use leadflow::analytics::history::date_of;
use leadflow::analytics::{self, funnel, time_in_stage};
use leadflow::config::Config;
use leadflow::store::prelude::*;

use super::open_store;

#[derive(Subcommand)]
pub(crate) enum AnalyticsCommand {
    /// Of the leads created in the period: how many reached each stage, the
    /// conversion to the next and to closed_won, and how many were lost.
    Funnel(PeriodArgs),
    /// Per open stage, of the entries into it in the period: how long leads
    /// stay (mean, median, p90 days, leads still in it counted as censored).
    TimeInStage(PeriodArgs),
    /// Per owner or source, of the leads created in the period: leads,
    /// contacted, won, lost, win rate, won value, median days to close.
    Breakdown {
        /// owner or source.
        #[arg(long)]
        by: Dimension,
        #[command(flatten)]
        period: PeriodArgs,
    },
    /// Per day: leads created, entered contacted, won, lost, value won.
    Daily(PeriodArgs),
    /// The daily history the processor stored in lead_analytics: per day,
    /// metric and dimension (all, owner, source, stage).
    History {
        /// Only this metric (created, contacted, won, lost, won_value,
        /// entered, open_leads, open_value).
        #[arg(long, default_value = "")]
        metric: String,
        /// Only this dimension: all, owner, source or stage.
        #[arg(long, default_value = "")]
        by: String,
        #[command(flatten)]
        period: PeriodArgs,
    },
    /// Open leads and their value per current stage.
    Pipeline {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct PeriodArgs {
    /// First day counted (UTC, YYYY-MM-DD): of creation for the funnel, of
    /// entry into the stage for time in stage; default: the first.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last day counted (UTC, YYYY-MM-DD, inclusive); default: the last.
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl PeriodArgs {
    /// `[from, until)` in epoch milliseconds.
    fn range(&self) -> Result<(i64, i64)> {
        analytics::period(self.from, self.to).map_err(|e| anyhow::anyhow!("--from/--to: {e}"))
    }
}

/// Prints `report` as JSON, or as the table `table` writes.
fn emit<R: serde::Serialize>(json: bool, report: &R, table: impl FnOnce(&R)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        table(report);
    }
    Ok(())
}

fn pct(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r))
}

fn days(d: Option<f64>) -> String {
    d.map_or("-".into(), |d| format!("{d:.1}"))
}

pub(crate) async fn analytics(config: Config, command: AnalyticsCommand) -> Result<()> {
    let store = open_store(&config).await?;
    match command {
        AnalyticsCommand::Funnel(period) => {
            let (from, until) = period.range()?;
            let report = funnel::funnel(&store.furthest_stages(from, until).await?);
            emit(period.json, &report, |report| {
                println!("{} leads created, {} lost", report.created, report.lost);
                println!(
                    "  {:<12} {:>9} {:>9} {:>9}",
                    "stage", "reached", "to next", "to won"
                );
                for step in &report.steps {
                    println!(
                        "  {:<12} {:>9} {:>9} {:>9}",
                        step.stage.as_str(),
                        step.reached,
                        pct(step.to_next),
                        pct(step.to_won)
                    );
                }
            })
        }
        AnalyticsCommand::TimeInStage(period) => {
            let (from, until) = period.range()?;
            let rows = store.transitions(None).await?;
            let report = time_in_stage::time_in_stage(&rows, from, until);
            emit(period.json, &report, |report| {
                println!(
                    "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
                    "stage", "entered", "left", "still in", "mean d", "median d", "p90 d"
                );
                for s in report {
                    println!(
                        "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
                        s.stage.as_str(),
                        s.entered,
                        s.left,
                        s.still_in,
                        days(s.mean_days),
                        days(s.median_days),
                        days(s.p90_days)
                    );
                }
            })
        }
        AnalyticsCommand::Breakdown { by, period } => {
            let (from, until) = period.range()?;
            let rows = store.transitions(None).await?;
            let report = breakdown::breakdown(&rows, by, from, until);
            emit(period.json, &report, |report| {
                println!(
                    "  {:<20} {:>7} {:>9} {:>6} {:>6} {:>8} {:>14} {:>9}",
                    by.as_str(),
                    "leads",
                    "contacted",
                    "won",
                    "lost",
                    "win rate",
                    "won value",
                    "median d"
                );
                for g in report {
                    println!(
                        "  {:<20} {:>7} {:>9} {:>6} {:>6} {:>8} {:>14.2} {:>9}",
                        g.value,
                        g.leads,
                        g.contacted,
                        g.won,
                        g.lost,
                        pct(g.win_rate),
                        g.won_value,
                        days(g.median_days_to_close)
                    );
                }
            })
        }
        AnalyticsCommand::Daily(period) => {
            let (from, until) = period.range()?;
            let rows = store.transitions(None).await?;
            let report = breakdown::daily(&rows, from, until);
            emit(period.json, &report, |report| {
                println!(
                    "  {:<10} {:>8} {:>9} {:>6} {:>6} {:>14}",
                    "date", "created", "contacted", "won", "lost", "won value"
                );
                for d in report {
                    println!(
                        "  {:<10} {:>8} {:>9} {:>6} {:>6} {:>14.2}",
                        d.date, d.created, d.contacted, d.won, d.lost, d.won_value
                    );
                }
            })
        }
        AnalyticsCommand::History { metric, by, period } => {
            if !["", "all", "owner", "source", "stage"].contains(&by.as_str()) {
                anyhow::bail!("--by {by}: the dimensions are all, owner, source and stage");
            }
            let (from, until) = analytics::period_days(period.range()?);
            let rows = store.analytics_history(from, until, &metric, &by).await?;
            emit(period.json, &rows, |rows| {
                println!(
                    "  {:<10} {:<12} {:<10} {:<20} {:>14}",
                    "date", "metric", "dimension", "value of", "value"
                );
                for r in rows {
                    println!(
                        "  {:<10} {:<12} {:<10} {:<20} {:>14.2}",
                        date_of(r.day),
                        r.metric,
                        r.dimension,
                        r.dimension_value,
                        r.value
                    );
                }
            })
        }
        AnalyticsCommand::Pipeline { json } => {
            let report = breakdown::pipeline_by_stage(&store.transitions(None).await?);
            emit(json, &report, |report| {
                println!("  {:<12} {:>8} {:>16}", "stage", "leads", "value");
                for s in report {
                    println!(
                        "  {:<12} {:>8} {:>16.2}",
                        s.stage.as_str(),
                        s.leads,
                        s.value
                    );
                }
            })
        }
    }
}
