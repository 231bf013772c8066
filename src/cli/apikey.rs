//! `leadflow apikey`: the REST API's keys.

use anyhow::Result;
use clap::Subcommand;

use leadflow::api::keys::{create_key, Scope};
use leadflow::config::Config;
use leadflow::core::clock::wall_clock_millis;
use leadflow::events::timestamp::format as rfc3339;
use leadflow::store::prelude::*;

use super::open_store;

#[derive(Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Make a key and print it, once: only its hash is stored.
    Create {
        /// Who or what uses it.
        #[arg(long)]
        name: String,
        /// read (GET routes), write (also POST /events) or admin (also models and forecast runs).
        #[arg(long)]
        scope: Scope,
    },
    /// Every key: id, name, scope, created, revoked.
    List,
    /// Revoke a key by its id or name; requests with it get 401 from then on.
    Revoke { key: String },
}

pub(crate) async fn apikey(config: Config, command: ApiKeyCommand) -> Result<()> {
    let store = open_store(&config).await?;
    match command {
        ApiKeyCommand::Create { name, scope } => {
            if name.trim().is_empty() {
                anyhow::bail!("--name is empty: name the key for whoever uses it");
            }
            let (record, key) = create_key(&store, &name, scope, wall_clock_millis()).await?;
            eprintln!(
                "key {} ({}, scope {}): shown once, keep it now",
                record.key_id, record.name, record.scope
            );
            println!("{key}");
        }
        ApiKeyCommand::List => {
            println!(
                "  {:<14} {:<24} {:<6} {:<25} {:<25}",
                "id", "name", "scope", "created", "revoked"
            );
            for k in store.api_keys().await? {
                println!(
                    "  {:<14} {:<24} {:<6} {:<25} {:<25}",
                    k.key_id,
                    k.name,
                    k.scope,
                    rfc3339(k.created_at),
                    k.revoked_at.map_or("-".into(), rfc3339)
                );
            }
        }
        ApiKeyCommand::Revoke { key } => {
            let revoked = store.revoke_api_key(&key, wall_clock_millis()).await?;
            if revoked == 0 {
                anyhow::bail!("no active key with id or name `{key}`");
            }
            println!("revoked {revoked} key(s) `{key}`");
        }
    }
    Ok(())
}
