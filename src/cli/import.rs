//! `leadflow import`: historical leads with their outcome, from a CSV file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use leadflow::config::Config;

use super::open_store;

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// CSV with a header row: lead_ext_id, created_at, outcome, closed_at, source, ...;
    /// other columns become custom attributes (see docs/MODELS.md).
    pub(crate) file: PathBuf,
    /// What to do when a row is invalid: refuse the whole file, or skip the row.
    #[arg(long, value_enum, default_value_t = OnError::Refuse)]
    pub(crate) on_error: OnError,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnError {
    Refuse,
    Skip,
}

pub(crate) async fn import(config: Config, args: ImportArgs) -> Result<()> {
    let path = args.file.display().to_string();
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {path}"))?;
    let parsed = leadflow::import::parse_csv(&path, std::io::BufReader::new(file))?;
    for e in &parsed.errors {
        eprintln!("{path} line {}: {}", e.line, e.reason);
    }
    if !parsed.errors.is_empty() && args.on_error == OnError::Refuse {
        bail!(
            "{} of {} rows are invalid; nothing imported (fix them, or pass --on-error skip)",
            parsed.errors.len(),
            parsed.errors.len() + parsed.rows.len()
        );
    }
    let store = open_store(&config).await?;
    let summary = leadflow::import::import_rows(&store, &config, &parsed.rows).await?;
    println!(
        "imported {} leads ({} events applied, {} already imported); {} rows skipped",
        parsed.rows.len(),
        summary.applied,
        summary.duplicates,
        parsed.errors.len()
    );
    Ok(())
}
