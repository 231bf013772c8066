//! `leadflow experiments`: the A/B report of nurturing sequences.

use anyhow::Result;
use clap::Args;

use leadflow::config::Config;
use leadflow::store::prelude::*;

use super::open_store;

#[derive(Args)]
pub(crate) struct ExperimentsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn experiments(config: Config, args: ExperimentsArgs) -> Result<()> {
    let store = open_store(&config).await?;
    let counts = store.experiment_counts().await?;
    let order = config.nurture.sequences.0.experiments();
    let reports = leadflow::core::nurture::experiments::report(&counts, &order);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!(
            "no experiments: no sequence in {} has variants",
            config.nurture.sequences.0.origin
        );
    }
    let pct = |r: f64| format!("{:.2}%", 100.0 * r);
    let lift = |l: Option<f64>| {
        l.map(|l| format!("{:+.1}%", 100.0 * l))
            .unwrap_or_else(|| "-".into())
    };
    let p = |p: Option<f64>| p.map(|p| format!("{p:.4}")).unwrap_or_else(|| "-".into());
    for report in reports {
        println!("experiment {}", report.experiment);
        let names: Vec<String> = report
            .variants
            .iter()
            .map(|v| match v.control {
                true => format!("{} (control)", v.variant),
                false => v.variant.clone(),
            })
            .collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(7);
        println!(
            "  {:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
            "variant", "enrolled", "replied", "rate", "lift", "p", "won", "rate", "lift", "p"
        );
        for (name, v) in names.iter().zip(&report.variants) {
            println!(
                "  {:<width$} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8}",
                name,
                v.enrolled,
                v.replied,
                pct(v.reply.rate),
                lift(v.reply.lift),
                p(v.reply.p_value),
                v.converted,
                pct(v.conversion.rate),
                lift(v.conversion.lift),
                p(v.conversion.p_value),
            );
        }
    }
    Ok(())
}
