//! `leadflow simulate`: deterministic synthetic traffic, to Kafka or a file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use leadflow::config::Config;
use leadflow::events::{timestamp, InputEvent, MILLIS_PER_DAY};
use leadflow::kafka::{self, InputFormat};
use leadflow::simulate::{self, SimulationParams};

use super::codec;

#[derive(Args)]
pub(crate) struct SimulateArgs {
    /// Seed of the generator; the same arguments always give the same events.
    #[arg(long, default_value_t = 42, allow_negative_numbers = true)]
    pub(crate) seed: u64,
    /// Number of leads to create.
    #[arg(long, default_value_t = 1_000, allow_negative_numbers = true)]
    pub(crate) leads: u32,
    /// Length of the simulated period in days.
    #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
    pub(crate) days: u32,
    /// Most events per second to publish (0: as fast as the broker accepts).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) rate: u32,
    /// First day of the simulated period (YYYY-MM-DD or RFC 3339); default: --days before today.
    #[arg(long)]
    pub(crate) start: Option<String>,
    /// Write the stream to this file (JSON Lines) instead of publishing it.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Wire format of the published events.
    #[arg(long, value_enum, default_value_t = InputFormat::Avro)]
    pub(crate) format: InputFormat,
    /// Replace the built-in source mix, e.g. `social=3,paid_search=1` (relative weights).
    #[arg(long, value_name = "SOURCE=WEIGHT,...", value_delimiter = ',')]
    pub(crate) source_mix: Vec<String>,
    /// How much more often leads arrive on the last day than on the first
    /// (0: evenly; 1: twice as often by the end).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) inflow_growth: f64,
}

pub(crate) async fn simulate(config: Config, args: SimulateArgs) -> Result<()> {
    let start = match &args.start {
        Some(raw) => simulate::parse_start(raw)
            .map_err(|e| anyhow::anyhow!("--start: {e} (use YYYY-MM-DD or RFC 3339)"))?,
        None => {
            let today = chrono::Utc::now().timestamp_millis() / MILLIS_PER_DAY * MILLIS_PER_DAY;
            today - args.days as i64 * MILLIS_PER_DAY
        }
    };
    let source_shares = simulate::parse_source_mix(&args.source_mix)
        .map_err(|e| anyhow::anyhow!("--source-mix: {e}"))?;
    let params = SimulationParams {
        inflow_growth: args.inflow_growth,
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
