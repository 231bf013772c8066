//! `leadflow erase`: a lead's erasure (GDPR) into its input partition.

use anyhow::{Context, Result};
use clap::Args;

use leadflow::config::Config;
use leadflow::core::clock::wall_clock_millis;
use leadflow::gdpr::{request_erasure, ErasureRequest};
use leadflow::kafka::producer;

use super::{codec, open_store};

#[derive(Args)]
pub(crate) struct EraseArgs {
    /// The lead's id (lead_ext_id).
    lead: String,
    /// Why, for the audit (e.g. "data subject request 2026-114").
    #[arg(long)]
    reason: Option<String>,
}

pub(crate) async fn erase(config: Config, args: EraseArgs) -> Result<()> {
    let store = open_store(&config).await?;
    let codec = codec(&config)?;
    let producer = producer(&config.kafka).context("creating the Kafka producer")?;
    let actor = super::cli_actor();
    let request = ErasureRequest {
        lead_ext_id: &args.lead,
        actor: &actor,
        reason: args.reason.as_deref(),
        at: wall_clock_millis(),
        inactive_since: None,
    };
    let requested = request_erasure(&config, &codec, &producer, &store, request).await?;
    println!(
        "erasure of {} requested: event {} on {}/{} at offset {}; the processor that owns the partition applies it",
        args.lead.trim(),
        requested.event_id,
        requested.topic,
        requested.partition,
        requested.offset
    );
    Ok(())
}
