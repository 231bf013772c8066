//! `leadflow topics`: the Kafka topics leadflow uses.

use anyhow::Result;
use clap::Subcommand;

use leadflow::config::Config;
use leadflow::kafka::{self, TopicOutcome};

#[derive(Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create the input, output and dead-letter topics (existing ones are kept).
    Create,
}

pub(crate) async fn topics(config: Config, command: TopicsCommand) -> Result<()> {
    match command {
        TopicsCommand::Create => {
            for (topic, outcome) in kafka::create_topics(&config).await? {
                let what = match outcome {
                    TopicOutcome::Created => "created",
                    TopicOutcome::AlreadyExists => "exists",
                };
                println!("{what:>8}  {topic}");
            }
            Ok(())
        }
    }
}
