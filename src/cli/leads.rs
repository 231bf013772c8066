//! `leadflow leads`: stored lead state.

use anyhow::{bail, Result};
use clap::Subcommand;

use leadflow::config::Config;
use leadflow::store::prelude::*;

use super::open_store;

#[derive(Subcommand)]
pub(crate) enum LeadsCommand {
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

pub(crate) async fn leads(config: Config, command: LeadsCommand) -> Result<()> {
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
