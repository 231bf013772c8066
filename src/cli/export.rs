//! `leadflow export`: everything held about a lead (GDPR), as JSON.

use anyhow::Result;
use clap::Args;

use leadflow::config::Config;
use leadflow::core::clock::wall_clock_millis;
use leadflow::gdpr::export_lead;

use super::open_store;

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The lead's id (lead_ext_id).
    lead: String,
}

pub(crate) async fn export(config: Config, args: ExportArgs) -> Result<()> {
    let store = open_store(&config).await?;
    let actor = super::cli_actor();
    let export = export_lead(&store, args.lead.trim(), &actor, wall_clock_millis()).await?;
    println!("{}", serde_json::to_string_pretty(&export)?);
    Ok(())
}
