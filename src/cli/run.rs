//! `leadflow run`: the processor, on Kafka or replaying a stream file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use leadflow::config::Config;
use leadflow::core::apply::Output;
use leadflow::pipeline::{replay, Pipeline, RunOptions};
use leadflow::simulate;
use leadflow::store::prelude::*;

use super::{open_store, shutdown_signal, start_service, ServiceKind};

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Stop after this many seconds without a new message (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", conflicts_with = "from_file")]
    pub(crate) exit_when_idle: Option<u64>,
    /// Replay a stream file written by `simulate --output` instead of
    /// consuming Kafka: same core, clock driven by event time.
    #[arg(long, value_name = "FILE")]
    pub(crate) from_file: Option<PathBuf>,
    /// With --from-file: where to write the outputs, one `<topic>.jsonl` per output topic.
    #[arg(
        long,
        value_name = "DIR",
        requires = "from_file",
        default_value = "data/replay"
    )]
    pub(crate) output_dir: PathBuf,
}

pub(crate) async fn run(config: Config, args: RunArgs) -> Result<()> {
    if let Some(path) = &args.from_file {
        let store = open_store(&config).await?;
        let events =
            simulate::read_stream(path).with_context(|| format!("reading {}", path.display()))?;
        let started = std::time::Instant::now();
        let (summary, outputs) = replay::replay(&config, &store, events).await?;
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
    let service = start_service(
        &config,
        "http.listen",
        &config.http.listen,
        &config.kafka.group_id,
        ServiceKind::Processor,
    )
    .await?;
    let store = service.store.clone();
    let pipeline = Pipeline::new(config, service.store, service.codec, service.metrics)?;
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

/// Messages per sequence, template and variant, as a replay produced them.
fn print_message_counts(outputs: &[Output]) {
    let mut counts: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
    for o in outputs {
        if let Output::Message(m) = o {
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
