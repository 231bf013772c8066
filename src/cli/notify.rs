//! `leadflow notify`: the delivery worker.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use leadflow::config::Config;
use leadflow::notify::worker::NotifyWorker;

use super::{shutdown_signal, start_service, ServiceKind};

#[derive(Args)]
pub(crate) struct NotifyArgs {
    /// Stop after this many seconds with nothing received and nothing in
    /// flight (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) exit_when_idle: Option<u64>,
}

pub(crate) async fn notify(config: Config, args: NotifyArgs) -> Result<()> {
    config.notify.check().context("configuration")?;
    let service = start_service(
        &config,
        "notify.http_listen",
        &config.notify.http_listen,
        &config.notify.group_id,
        ServiceKind::DeliveryWorker,
    )
    .await?;
    let worker = NotifyWorker::new(config, service.store, service.codec, service.metrics)?;
    let summary = worker
        .run(
            args.exit_when_idle.map(Duration::from_secs),
            shutdown_signal(),
        )
        .await?;
    println!(
        "consumed {} messages: {} sent, {} failed, {} bounced, {} dropped, {} already handled, {} dead-lettered",
        summary.consumed,
        summary.sent,
        summary.failed,
        summary.bounced,
        summary.dropped,
        summary.duplicates,
        summary.dead_lettered
    );
    Ok(())
}
