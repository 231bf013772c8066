//! `leadflow analytics`: reports over the stage transitions.

use anyhow::Result;
use chrono::NaiveDate;
use clap::{Args, Subcommand};

use leadflow::analytics::funnel;
use leadflow::config::Config;
use leadflow::store::prelude::*;

use super::open_store;

#[derive(Subcommand)]
pub(crate) enum AnalyticsCommand {
    /// Of the leads created in the period: how many reached each stage, the
    /// conversion to the next and to closed_won, and how many were lost.
    Funnel(PeriodArgs),
}

#[derive(Args)]
pub(crate) struct PeriodArgs {
    /// First day of creation counted (UTC, YYYY-MM-DD); default: the first.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last day of creation counted (UTC, YYYY-MM-DD, inclusive); default: the last.
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl PeriodArgs {
    /// `[from, until)` in epoch milliseconds.
    fn range(&self) -> Result<(i64, i64)> {
        let start = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_millis()
        };
        let from = self.from.map_or(i64::MIN, start);
        let until = match self.to {
            Some(d) => start(
                d.succ_opt()
                    .ok_or_else(|| anyhow::anyhow!("--to {d} has no next day"))?,
            ),
            None => i64::MAX,
        };
        if from >= until {
            anyhow::bail!("--from is after --to: the period is empty");
        }
        Ok((from, until))
    }
}

pub(crate) async fn analytics(config: Config, command: AnalyticsCommand) -> Result<()> {
    let store = open_store(&config).await?;
    match command {
        AnalyticsCommand::Funnel(period) => {
            let (from, until) = period.range()?;
            let report = funnel::funnel(&store.furthest_stages(from, until).await?);
            if period.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let pct = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r));
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
            Ok(())
        }
    }
}
