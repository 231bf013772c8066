//! The processing loop (first version): consume the three input topics,
//! decode, apply each event to its lead through the pure core, and write the
//! touched leads and the next offsets in one store transaction per batch.
//!
//! What this version guarantees, and what it does not yet:
//! - Kafka offsets are committed only after the batch's transaction, so no
//!   event is lost (at-least-once delivery to the store).
//! - A re-delivered event (after a crash or rebalance) is recognised by its
//!   event_id within the per-lead window of `processor.dedup_window` recent
//!   ids and changes nothing; beyond that window a repeat would count twice.
//! - The database's offsets are written but not yet used to position the
//!   consumer, and the core's outputs (LeadScores) are counted, not
//!   published. Both come with the outbox (issue 3).
//! - A message that cannot be decoded goes to the dead-letter topic with its
//!   reason and does not stop the loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::sleep;
use tracing::{info, warn};

use crate::codec::{Codec, CodecError};
use crate::config::Config;
use crate::events::{InputEvent, InputStream, Millis};
use crate::kafka::{client_config, producer};
use crate::lead::{apply, ApplyContext, LeadState};
use crate::store::{BatchWrite, LeadStore, PartitionOffset, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot write to the dead-letter topic {topic}: {reason}")]
    DeadLetter { topic: String, reason: String },
}

/// A consumed message, detached from the consumer's buffer.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Why a message went to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub kind: &'static str,
    pub message: String,
}

impl From<&CodecError> for Rejection {
    fn from(e: &CodecError) -> Self {
        Rejection {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Dead-letter headers: where the message came from and why it was rejected.
pub mod dlq_headers {
    pub const SOURCE_TOPIC: &str = "leadflow.source.topic";
    pub const SOURCE_PARTITION: &str = "leadflow.source.partition";
    pub const SOURCE_OFFSET: &str = "leadflow.source.offset";
    pub const ERROR_KIND: &str = "leadflow.error.kind";
    pub const ERROR_MESSAGE: &str = "leadflow.error.message";
}

/// Counters of one run, logged on exit and returned to callers and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub consumed: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub outputs: u64,
    pub batches: u64,
}

pub struct RunOptions {
    /// Stop after this long without a new message (for scripts and tests).
    pub exit_when_idle: Option<Duration>,
}

/// Applies a batch of decoded events to their leads, in order, loading each
/// lead once. Pure apart from the store read; returns the new states.
pub async fn apply_batch<S: LeadStore>(
    store: &S,
    events: &[InputEvent],
    ctx: &ApplyContext<'_>,
    summary: &mut RunSummary,
) -> Result<Vec<LeadState>, StoreError> {
    let mut ids: Vec<&str> = events.iter().map(InputEvent::lead_ext_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states: HashMap<String, LeadState> = store.load_leads(&ids).await?;
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for event in events {
        let id = event.lead_ext_id();
        let applied = apply(states.remove(id), event, ctx);
        if applied.duplicate {
            summary.duplicates += 1;
        } else {
            summary.applied += 1;
            touched.insert(id.to_string());
        }
        summary.outputs += applied.outputs.len() as u64;
        states.insert(id.to_string(), applied.state);
    }
    Ok(touched
        .into_iter()
        .filter_map(|id| states.remove(&id))
        .collect())
}

/// Retries a store operation while its error is transient, with capped
/// exponential backoff. The loop never skips ahead: it waits.
pub async fn with_store_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}: store unavailable, retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

pub struct Pipeline<'a, S: LeadStore> {
    config: &'a Config,
    store: &'a S,
    codec: &'a Codec,
    consumer: StreamConsumer,
    dlq: FutureProducer,
}

impl<'a, S: LeadStore> Pipeline<'a, S> {
    pub fn new(config: &'a Config, store: &'a S, codec: &'a Codec) -> Result<Self, PipelineError> {
        let session_timeout = config.kafka.session_timeout_ms.to_string();
        let consumer: StreamConsumer = client_config(
            &config.kafka,
            &[
                ("group.id", config.kafka.group_id.as_str()),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", session_timeout.as_str()),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()?;
        let topics: Vec<&str> = InputStream::ALL
            .iter()
            .map(|s| config.topics.input(*s))
            .collect();
        consumer.subscribe(&topics)?;
        Ok(Pipeline {
            config,
            store,
            codec,
            consumer,
            dlq: producer(&config.kafka)?,
        })
    }

    /// Runs until `shutdown` resolves (or the idle limit passes), finishing
    /// the batch in hand first.
    pub async fn run(
        &self,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        tokio::pin!(shutdown);
        let mut summary = RunSummary::default();
        let mut last_message = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let batch = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                batch = self.next_batch() => batch?,
            };
            if batch.is_empty() {
                if let Some(idle) = options.exit_when_idle {
                    if last_message.elapsed() >= idle {
                        info!(idle_secs = idle.as_secs(), "no new messages; stopping");
                        break;
                    }
                }
                continue;
            }
            last_message = Instant::now();
            self.process_batch(batch, &mut summary).await?;
            if last_report.elapsed() >= Duration::from_secs(10) {
                info!(?summary, "progress");
                last_report = Instant::now();
            }
        }
        info!(?summary, "processor stopped");
        Ok(summary)
    }

    /// Up to `batch_size` messages: waits up to a second for the first, then
    /// at most `batch_linger_ms` for the rest.
    async fn next_batch(&self) -> Result<Vec<RawMessage>, PipelineError> {
        let p = &self.config.processor;
        let mut batch = Vec::new();
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < p.batch_size {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if batch.is_empty() {
                deadline = tokio::time::Instant::now() + Duration::from_millis(p.batch_linger_ms);
            }
            batch.push(RawMessage {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            });
        }
        Ok(batch)
    }

    async fn process_batch(
        &self,
        batch: Vec<RawMessage>,
        summary: &mut RunSummary,
    ) -> Result<(), PipelineError> {
        summary.consumed += batch.len() as u64;
        summary.batches += 1;
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            let next = next_offsets
                .entry((message.topic.clone(), message.partition))
                .or_insert(0);
            *next = (*next).max(message.offset + 1);
            match self.decode(message).await {
                Ok(event) => events.push(event),
                Err(rejection) => {
                    self.dead_letter(message, &rejection).await?;
                    summary.dead_lettered += 1;
                }
            }
        }
        let ctx = ApplyContext {
            scoring: &self.config.scoring,
            dedup_window: self.config.processor.dedup_window,
            now: wall_clock_millis(),
        };
        let offsets: Vec<PartitionOffset> = next_offsets
            .iter()
            .map(|((topic, partition), next)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                next_offset: *next,
            })
            .collect();
        let before = summary.clone();
        *summary = with_store_retry("commit batch", || async {
            // Re-applied from the stored state on every attempt, so a retry
            // after a failed transaction starts from what was committed.
            let mut attempt = before.clone();
            let leads = apply_batch(self.store, &events, &ctx, &mut attempt).await?;
            self.store
                .commit_batch(&BatchWrite {
                    consumer_group: &self.config.kafka.group_id,
                    leads: leads.iter().collect(),
                    offsets: offsets.clone(),
                })
                .await?;
            Ok(attempt)
        })
        .await?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &next_offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            // The state is already durable; a failed commit only means these
            // messages are delivered again and skipped as duplicates.
            warn!(error = %e, "offset commit failed");
        }
        Ok(())
    }

    async fn decode(&self, message: &RawMessage) -> Result<InputEvent, Rejection> {
        let stream = self
            .config
            .topics
            .stream_of(&message.topic)
            .ok_or_else(|| Rejection {
                kind: "unknown_topic",
                message: format!("{} is not an input topic", message.topic),
            })?;
        let payload = message.payload.as_deref().ok_or_else(|| Rejection {
            kind: "empty",
            message: "message has no value".into(),
        })?;
        let key = message.key.as_deref().ok_or_else(|| Rejection {
            kind: "missing_key",
            message: "message has no key; input topics are keyed by lead_ext_id".into(),
        })?;
        let mut delay = Duration::from_millis(200);
        let event = loop {
            match self.codec.decode_input(stream, payload).await {
                Ok(event) => break event,
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "decode: transient failure, retrying");
                    sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(Rejection::from(&e)),
            }
        };
        if key != event.lead_ext_id().as_bytes() {
            return Err(Rejection {
                kind: "key_mismatch",
                message: format!(
                    "key `{}` differs from lead_ext_id `{}`; the lead's events would be split across partitions",
                    String::from_utf8_lossy(key),
                    event.lead_ext_id()
                ),
            });
        }
        Ok(event)
    }

    async fn dead_letter(
        &self,
        message: &RawMessage,
        rejection: &Rejection,
    ) -> Result<(), PipelineError> {
        warn!(
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            kind = rejection.kind,
            error = %rejection.message,
            "dead-lettering message"
        );
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(header(dlq_headers::SOURCE_TOPIC, &message.topic))
            .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
            .insert(header(dlq_headers::SOURCE_OFFSET, &offset))
            .insert(header(dlq_headers::ERROR_KIND, rejection.kind))
            .insert(header(dlq_headers::ERROR_MESSAGE, &rejection.message));
        let topic = &self.config.topics.dlq;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &message.payload {
            record = record.payload(payload.as_slice());
        }
        self.dlq
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| PipelineError::DeadLetter {
                topic: topic.clone(),
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

fn header<'h>(key: &'h str, value: &'h str) -> Header<'h, &'h str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Reads a header as text, for tests and tools that inspect dead letters.
pub fn header_value(headers: &impl Headers, key: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn wall_clock_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
