//! The delivery loop. Each consumed OutboundMessage becomes a task; tasks
//! run concurrently (up to `notify.max_in_flight`), so a message waiting
//! for a retry never holds up the others, on its partition or any other.
//! A partition's committed offset only passes messages whose outcome is
//! recorded in the store (arroyo's rule: hand back an offset only when the
//! work is durable).
//!
//! Never twice: before calling the provider a task claims the message_id
//! in the store (`deliveries`); after the provider's answer it records the
//! outcome over the claim, then publishes the DeliveryEvent. A redelivered
//! message finds the record and is skipped (its DeliveryEvent re-published
//! if that had not been acknowledged). The one window left: a crash after
//! the provider accepted and before the outcome is recorded; the claim's
//! lease then runs out and the message is sent again.
//!
//! One file past 600 lines on purpose: one message's life (claim, send,
//! retry, record, report, commit) reads top to bottom here; split by step,
//! the lease and offset rules that tie the steps together would be apart.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::codec::{Codec, CodecError};
use crate::config::Config;
use crate::core::clock::{Clock, WallClock};
use crate::events::{Channel, DeliveryEvent, DeliveryStatus, OutboundMessage};
use crate::gdpr::shredding::{decrypt_message, is_encrypted, MasterKeys, ShreddingError};
use crate::kafka::deadletter::{DeadLetters, RawMessage, Rejection};
use crate::kafka::{client_config, SharedProducer};
use crate::metrics::internal_events::{
    AssignedPartitionsObserved, ConsumerError, DeliveryDuplicate, MessageHandled, MessageShredded,
    ProviderResponded, ProviderRetry, RateLimitWaited,
};
use crate::metrics::Metrics;
use crate::retry::{retry_transient, Backoff};
use crate::store::with_store_retry;
use crate::store::{DeliveryClaim, DeliveryOutcome, DeliveryRecord, LeadStore, StoreError};

use super::limiter::RateLimiter;
use super::providers::{Receipt, SendError, SendGrid, Twilio, SENDGRID, TWILIO};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What one run did, logged at exit and returned to tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NotifySummary {
    pub consumed: u64,
    pub sent: u64,
    pub failed: u64,
    pub bounced: u64,
    pub dropped: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
}

/// How one message ended for this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Sent,
    Failed {
        dead_lettered: bool,
    },
    Bounced,
    Dropped,
    Duplicate,
    /// Another worker holds the claim and finished it, or took it over.
    ClaimLost,
    Invalid,
}

/// See `NotifyWorker::new`: the rate limit's window is one second plus this.
const RATE_GUARD_MS: u64 = 20;

struct Shared<S> {
    config: Config,
    store: Arc<S>,
    codec: Arc<Codec>,
    producer: Arc<SharedProducer>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    sendgrid: SendGrid,
    twilio: Twilio,
    email_limit: Mutex<RateLimiter>,
    sms_limit: Mutex<RateLimiter>,
    origin: Instant,
    /// This process (a restarted worker is a new one); each claim is
    /// `owner:n`, so two copies of a message in one process exclude each
    /// other as two processes do.
    owner: String,
    claims: std::sync::atomic::AtomicU64,
    /// Claim leases, outcome times and the recipient cap's window.
    clock: Arc<dyn Clock>,
    /// Set when `gdpr.encryption` is on: opens encrypted messages.
    master_keys: Option<MasterKeys>,
}

pub struct NotifyWorker<S> {
    shared: Arc<Shared<S>>,
}

/// Offsets of one partition: those in flight, and the next to arrive.
#[derive(Debug, Default)]
struct Progress {
    in_flight: BTreeSet<i64>,
    next: i64,
    committed: Option<i64>,
}

impl Progress {
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

impl<S: LeadStore + 'static> NotifyWorker<S> {
    pub fn new(
        config: Config,
        store: Arc<S>,
        codec: Arc<Codec>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, NotifyError> {
        let timeout = Duration::from_millis(config.notify.request_timeout_ms);
        // Providers count requests by arrival; a small guard on the window
        // keeps network jitter from pushing two paced requests into one
        // provider second.
        let second = Duration::from_millis(1_000 + RATE_GUARD_MS);
        let producer = Arc::new(SharedProducer::new(
            &config.kafka,
            config.processor.dead_letter_max_bytes,
        )?);
        let shared = Shared {
            dead_letters: DeadLetters::new(
                producer.clone(),
                &config.topics.dlq,
                config.processor.dead_letter_max_bytes,
                metrics.clone(),
            ),
            producer,
            sendgrid: SendGrid::new(config.notify.sendgrid.clone(), timeout)?,
            twilio: Twilio::new(config.notify.twilio.clone(), timeout)?,
            email_limit: Mutex::new(RateLimiter::new(
                config.notify.sendgrid.rate_per_second,
                second,
            )),
            sms_limit: Mutex::new(RateLimiter::new(
                config.notify.twilio.rate_per_second,
                second,
            )),
            origin: Instant::now(),
            owner: {
                let bytes: [u8; 16] = rand::rng().random();
                uuid::Uuid::from_bytes(bytes).to_string()
            },
            claims: Default::default(),
            clock: Arc::new(WallClock),
            master_keys: config.gdpr.encryption.master_keys(),
            config,
            store,
            codec,
            metrics,
        };
        Ok(NotifyWorker {
            shared: Arc::new(shared),
        })
    }

    /// Replaces the wall clock (tests drive claim leases with their own).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("the worker is not running yet")
            .clock = clock;
        self
    }

    /// Consumes `outbound-messages` until `shutdown` resolves (or, with
    /// `exit_when_idle`, until nothing arrived and nothing is in flight for
    /// that long), then finishes the messages in flight and commits.
    pub async fn run(
        self,
        exit_when_idle: Option<Duration>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<NotifySummary, NotifyError> {
        let config = &self.shared.config;
        let session_timeout = config.kafka.session_timeout_ms.to_string();
        let consumer: StreamConsumer = client_config(
            &config.kafka,
            &[
                ("group.id", config.notify.group_id.as_str()),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", session_timeout.as_str()),
            ],
        )
        .create()?;
        consumer.subscribe(&[&config.topics.outbound])?;
        info!(topic = %config.topics.outbound, group = %config.notify.group_id, owner = %self.shared.owner, "delivery worker started");

        let semaphore = Arc::new(Semaphore::new(config.notify.max_in_flight));
        let mut tasks: JoinSet<(i32, i64, Result<Handled, StoreError>)> = JoinSet::new();
        let mut progress: HashMap<i32, Progress> = HashMap::new();
        let mut summary = NotifySummary::default();
        let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_activity = Instant::now();
        // A store error that is not transient (a defect, not an outage):
        // the worker stops, its message stays uncommitted for the next run.
        let mut defect: Option<StoreError> = None;
        tokio::pin!(shutdown);
        while defect.is_none() {
            tokio::select! {
                _ = &mut shutdown => break,
                received = consumer.recv(), if semaphore.available_permits() > 0 => {
                    let m = match received {
                        Ok(m) => m,
                        Err(e) => {
                            self.shared.metrics.emit(ConsumerError { consumer: "notify", error: &e });
                            continue;
                        }
                    };
                    last_activity = Instant::now();
                    summary.consumed += 1;
                    let raw = RawMessage::from_message(&m);
                    let p = progress.entry(raw.partition).or_default();
                    p.in_flight.insert(raw.offset);
                    p.next = p.next.max(raw.offset + 1);
                    let permit = semaphore.clone().acquire_owned().await.expect("never closed");
                    let shared = self.shared.clone();
                    tasks.spawn(async move {
                        let handled = shared.handle(&raw).await;
                        drop(permit);
                        (raw.partition, raw.offset, handled)
                    });
                }
                Some(done) = tasks.join_next() => {
                    last_activity = Instant::now();
                    finish(done.expect("delivery tasks do not panic"), &mut progress, &mut summary, &mut defect);
                }
                _ = commit_tick.tick() => {
                    let assigned = consumer.assignment().map(|t| t.count()).unwrap_or(0);
                    self.shared.metrics.emit(AssignedPartitionsObserved { partitions: assigned });
                    commit(&consumer, &config.topics.outbound, &mut progress, CommitMode::Async);
                    if exit_when_idle.is_some_and(|idle| tasks.is_empty() && last_activity.elapsed() >= idle) {
                        break;
                    }
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            finish(
                done.expect("delivery tasks do not panic"),
                &mut progress,
                &mut summary,
                &mut defect,
            );
        }
        commit(
            &consumer,
            &config.topics.outbound,
            &mut progress,
            CommitMode::Sync,
        );
        if let Some(e) = defect {
            error!(error = %e, ?summary, "delivery worker stopped by a store error");
            return Err(NotifyError::Store(e));
        }
        info!(?summary, "delivery worker stopped");
        Ok(summary)
    }
}

/// Books a finished delivery task. A message whose handling hit a store
/// defect stays in flight, so no commit passes it.
fn finish(
    (partition, offset, handled): (i32, i64, Result<Handled, StoreError>),
    progress: &mut HashMap<i32, Progress>,
    summary: &mut NotifySummary,
    defect: &mut Option<StoreError>,
) {
    match handled {
        Ok(handled) => {
            if let Some(p) = progress.get_mut(&partition) {
                p.in_flight.remove(&offset);
            }
            count(summary, handled);
        }
        Err(e) => {
            warn!(error = %e, partition, offset, "delivery stopped by a store error");
            defect.get_or_insert(e);
        }
    }
}

fn count(summary: &mut NotifySummary, handled: Handled) {
    match handled {
        Handled::Sent => summary.sent += 1,
        Handled::Failed { dead_lettered } => {
            summary.failed += 1;
            summary.dead_lettered += dead_lettered as u64;
        }
        Handled::Bounced => {
            summary.bounced += 1;
            summary.dead_lettered += 1;
        }
        Handled::Dropped => summary.dropped += 1,
        Handled::Duplicate | Handled::ClaimLost => summary.duplicates += 1,
        Handled::Invalid => summary.dead_lettered += 1,
    }
}

/// Commits, per partition still assigned, the offset below which every
/// message is done. Partitions that left (a rebalance) are forgotten once
/// their tasks are done; committing for them would fail anyway.
fn commit(
    consumer: &StreamConsumer,
    topic: &str,
    progress: &mut HashMap<i32, Progress>,
    mode: CommitMode,
) {
    let assigned: BTreeSet<i32> = consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    progress.retain(|p, prog| assigned.contains(p) || !prog.in_flight.is_empty());
    let mut tpl = TopicPartitionList::new();
    let mut moved = Vec::new();
    for (partition, p) in progress.iter() {
        let offset = p.committable();
        if assigned.contains(partition)
            && p.committed != Some(offset)
            && tpl
                .add_partition_offset(topic, *partition, Offset::Offset(offset))
                .is_ok()
        {
            moved.push((*partition, offset));
        }
    }
    if moved.is_empty() {
        return;
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            for (partition, offset) in moved {
                if let Some(p) = progress.get_mut(&partition) {
                    p.committed = Some(offset);
                }
            }
        }
        Err(e) => warn!(error = %e, "offset commit failed; the next one covers it"),
    }
}

impl<S: LeadStore + 'static> Shared<S> {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn handle(&self, raw: &RawMessage) -> Result<Handled, StoreError> {
        let message = match self.decode(raw).await {
            Ok(m) => m,
            Err(reason) => {
                self.dead_letters
                    .send(
                        raw,
                        &Rejection {
                            kind: "invalid_message",
                            message: reason,
                        },
                    )
                    .await;
                return Ok(Handled::Invalid);
            }
        };
        let (message, shredded) = match self.open(message).await? {
            Ok(opened) => opened,
            Err(reason) => {
                self.dead_letters
                    .send(
                        raw,
                        &Rejection {
                            kind: "undecryptable",
                            message: reason,
                        },
                    )
                    .await;
                return Ok(Handled::Invalid);
            }
        };
        let hash = crate::core::ids::recipient_hash(message.channel.as_str(), &message.to);
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = format!("{}:{n}", self.owner);
        let record = loop {
            let record = self
                .claim(
                    &message,
                    &hash,
                    &owner,
                    self.config.notify.claim_lease_ms as i64,
                )
                .await?;
            if record.status != "sending" || record.owner == owner {
                break record;
            }
            // Another worker is on it (a rebalance moved the partition
            // while it was sending, or a repeat of the message is in
            // flight here): wait for its outcome or its lease.
            let wait = (record.claimed_until - self.clock.now()).clamp(100, 1_000);
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        };
        if record.status != "sending" {
            self.metrics.emit(DeliveryDuplicate {
                message_id: &message.message_id,
            });
            // A copy handled in this process reports its own outcome (it is
            // publishing it now, or about to): reporting here too would
            // publish the event twice. One another or an earlier process
            // recorded and did not report (it died between the two) is
            // reported here.
            let ours = record
                .owner
                .strip_prefix(self.owner.as_str())
                .is_some_and(|claim| claim.starts_with(':'));
            if !record.reported && !ours {
                self.report(&message, &record).await?;
            }
            return Ok(Handled::Duplicate);
        }
        let blocked = if shredded {
            self.metrics.emit(MessageShredded {
                message_id: &message.message_id,
            });
            Some("the lead's data key was shredded (erased, GDPR)".to_string())
        } else {
            self.blocked(&message, &hash).await?
        };
        let (status, receipt, reason, attempts) = match blocked {
            Some(reason) => ("dropped", None, Some(reason), 0),
            None => match self.send_with_retries(&message, &hash, &owner).await? {
                Ok((receipt, attempts)) => ("sent", Some(receipt), None, attempts),
                Err((
                    SendError::Rejected {
                        reason,
                        bounce: true,
                    },
                    n,
                )) => ("bounced", None, Some(reason), n),
                Err((SendError::Rejected { reason, .. }, n)) => ("failed", None, Some(reason), n),
                Err((e, n)) => (
                    "failed",
                    None,
                    Some(format!("gave up after {n} attempts: {e}")),
                    n,
                ),
            },
        };
        let provider_message_id = receipt.as_ref().and_then(|r| r.provider_message_id.clone());
        let outcome = DeliveryOutcome {
            message_id: &message.message_id,
            owner: &owner,
            status,
            provider_message_id: provider_message_id.as_deref(),
            reason: reason.as_deref(),
            attempts: attempts as i32,
            now: self.clock.now(),
        };
        let kept = self
            .retry_store("record", || self.store.finish_delivery(&outcome))
            .await?;
        if !kept {
            warn!(message_id = %message.message_id, "claim lost to another worker before the outcome was recorded");
            return Ok(Handled::ClaimLost);
        }
        self.metrics.emit(MessageHandled {
            message_id: &message.message_id,
            channel: message.channel.as_str(),
            template: &message.template,
            outcome: status,
        });
        let record = DeliveryRecord {
            message_id: message.message_id.clone(),
            lead_ext_id: message.lead_ext_id.clone(),
            channel: message.channel.as_str().into(),
            template: message.template.clone(),
            status: status.into(),
            owner: owner.clone(),
            claimed_until: 0,
            attempts: attempts as i32,
            provider_message_id: provider_message_id.clone(),
            reason: reason.clone(),
            reported: false,
            updated_at: outcome.now,
        };
        self.report(&message, &record).await?;
        Ok(match status {
            "sent" => Handled::Sent,
            "dropped" => Handled::Dropped,
            _ => {
                self.dead_letters
                    .send(
                        raw,
                        &Rejection {
                            kind: "delivery_failed",
                            message: reason.unwrap_or_default(),
                        },
                    )
                    .await;
                match status {
                    "bounced" => Handled::Bounced,
                    _ => Handled::Failed {
                        dead_lettered: true,
                    },
                }
            }
        })
    }

    /// Takes or renews `owner`'s claim on the message for `lease_ms` and
    /// returns the record as it stands after (see `LeadStore::claim_delivery`).
    async fn claim(
        &self,
        message: &OutboundMessage,
        hash: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<DeliveryRecord, StoreError> {
        let claim = DeliveryClaim {
            message_id: &message.message_id,
            lead_ext_id: &message.lead_ext_id,
            channel: message.channel.as_str(),
            template: &message.template,
            recipient_hash: hash,
            owner,
            now: self.clock.now(),
            lease_ms,
        };
        self.retry_store("claim", || self.store.claim_delivery(&claim))
            .await
    }

    /// The message, or why it cannot be sent: the same bounds as the
    /// processor's input (size, well-formed Avro, text without NULs and
    /// within its limits), checked before anything is claimed or stored.
    async fn decode(&self, raw: &RawMessage) -> Result<OutboundMessage, String> {
        let payload = raw.payload.as_deref().ok_or("empty payload")?;
        let limit = self.config.processor.max_message_bytes;
        if payload.len() > limit {
            return Err(format!(
                "value is {} bytes, more than processor.max_message_bytes = {limit}",
                payload.len()
            ));
        }
        let message: OutboundMessage = retry_transient(
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            CodecError::is_transient,
            |e, _| warn!(error = %e, "decode: transient failure, retrying"),
            || self.codec.decode(payload),
        )
        .await
        .map_err(|e| format!("not an OutboundMessage: {e}"))?;
        message.validate()?;
        if message.to.trim().is_empty() {
            return Err("`to` is empty".into());
        }
        Ok(message)
    }

    /// The message with its personal fields decrypted (`gdpr::shredding`),
    /// and whether its lead's key was shredded (the message then as it
    /// came, to be dropped); `Err` with the reason when it cannot be read
    /// here at all.
    async fn open(
        &self,
        message: OutboundMessage,
    ) -> Result<Result<(OutboundMessage, bool), String>, StoreError> {
        if !is_encrypted(&message) {
            return Ok(Ok((message, false)));
        }
        let Some(master) = &self.master_keys else {
            return Ok(Err(
                "the message is encrypted (gdpr.encryption) but this worker has no master key"
                    .into(),
            ));
        };
        let lead = message.lead_ext_id.as_str();
        let leads = [lead];
        let keys = self
            .retry_store("data key", || self.store.lead_keys(&leads))
            .await?;
        let key = match keys.get(lead) {
            Some(Some(wrapped)) => match master.unwrap(wrapped) {
                Ok(key) => Some(key),
                Err(e) => return Ok(Err(format!("the lead's data key: {e}"))),
            },
            _ => None,
        };
        Ok(match decrypt_message(&message, key.as_ref()) {
            Ok(opened) => Ok((opened, false)),
            Err(ShreddingError::KeyErased) => Ok((message, true)),
            Err(e) => Err(format!("cannot decrypt: {e}")),
        })
    }

    /// Why the message must not be sent now, if it must not: the lead was
    /// erased, its consent or channel is gone (since the message was
    /// made), or the recipient had its share for the window.
    async fn blocked(
        &self,
        message: &OutboundMessage,
        hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let lead = self
            .retry_store("lead lookup", || self.store.get_lead(&message.lead_ext_id))
            .await?;
        let Some(lead) = lead else {
            return Ok(Some("lead not found".into()));
        };
        // A message published before its lead's erasure is still on the topic.
        if lead.erased_at.is_some() {
            return Ok(Some("lead erased (GDPR)".into()));
        }
        if let Some(reason) = crate::core::nurture::channel_blocked(&lead, message.channel) {
            return Ok(Some(reason));
        }
        let cap = &self.config.notify.recipient_cap;
        let since = self.clock.now() - cap.window_hours as i64 * 3_600_000;
        let sent = self
            .retry_store("recipient count", || {
                self.store.recipient_sends(hash, since)
            })
            .await?;
        if sent >= cap.max_messages as i64 {
            return Ok(Some(format!(
                "recipient cap: {sent} messages in the last {} h (notify.recipient_cap)",
                cap.window_hours
            )));
        }
        Ok(None)
    }

    /// Sends, retrying 429s (after their Retry-After), 5xx and timeouts
    /// with exponential backoff and full jitter, up to `max_attempts`. The
    /// outer error is the store's (renewing the claim), the inner the
    /// provider's with the attempts made.
    async fn send_with_retries(
        &self,
        message: &OutboundMessage,
        hash: &str,
        owner: &str,
    ) -> Result<Result<(Receipt, u32), (SendError, u32)>, StoreError> {
        let retry = &self.config.notify.retry;
        let channel = message.channel.as_str();
        let limiter = match message.channel {
            Channel::Email => &self.email_limit,
            Channel::Sms => &self.sms_limit,
        };
        let rate = match message.channel {
            Channel::Email => self.config.notify.sendgrid.rate_per_second,
            Channel::Sms => self.config.notify.twilio.rate_per_second,
        };
        // The longest this message can queue for its slot: every other
        // message in flight ahead of it.
        let queue_ms = self.config.notify.max_in_flight as i64 * (1_000 + RATE_GUARD_MS) as i64
            / rate.max(1) as i64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Renew the claim before each request: a backoff must not let
            // the lease run out. (Before the limiter's slot, so that the
            // request leaves at its slot.)
            let held = self
                .claim(
                    message,
                    hash,
                    owner,
                    self.config.notify.claim_lease_ms as i64 + queue_ms,
                )
                .await?;
            if held.owner != owner || held.status != "sending" {
                return Ok(Err((
                    SendError::Transient("the claim passed to another worker".into()),
                    attempt - 1,
                )));
            }
            let now = self.now();
            let slot = limiter.lock().expect("limiter lock").reserve(now);
            if slot > now {
                self.metrics.emit(RateLimitWaited {
                    channel,
                    wait: slot - now,
                });
                tokio::time::sleep_until(self.origin + slot).await;
            }
            let (provider, started) = match message.channel {
                Channel::Email => (SENDGRID, std::time::Instant::now()),
                Channel::Sms => (TWILIO, std::time::Instant::now()),
            };
            let result = match message.channel {
                Channel::Email => self.sendgrid.send(message).await,
                Channel::Sms => self.twilio.send(message).await,
            };
            let class = match &result {
                Ok(_) => "2xx",
                Err(SendError::RateLimited { .. }) => "429",
                Err(SendError::Rejected { .. }) => "4xx",
                Err(SendError::Transient(_)) => "error",
            };
            self.metrics.emit(ProviderResponded {
                provider,
                status: class,
                duration: started.elapsed(),
            });
            let error = match result {
                Ok(receipt) => return Ok(Ok((receipt, attempt))),
                Err(e @ SendError::Rejected { .. }) => return Ok(Err((e, attempt))),
                Err(e) => e,
            };
            if attempt >= retry.max_attempts {
                return Ok(Err((error, attempt)));
            }
            let backoff = {
                let exp = retry
                    .initial_backoff_ms
                    .saturating_mul(1u64 << (attempt - 1).min(20))
                    .min(retry.max_backoff_ms);
                // Full jitter in [exp/2, exp]: retries of many messages
                // after one outage do not arrive together.
                Duration::from_millis(rand::rng().random_range(exp / 2..=exp.max(1)))
            };
            let wait = match &error {
                SendError::RateLimited {
                    retry_after: Some(after),
                    ..
                } => {
                    limiter
                        .lock()
                        .expect("limiter lock")
                        .hold_until(self.now() + *after);
                    *after
                }
                _ => backoff,
            };
            self.metrics.emit(ProviderRetry {
                message_id: &message.message_id,
                channel,
                template: &message.template,
                attempt,
                error: &error,
                retry_in: wait,
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// Publishes the DeliveryEvent of a finished message (retrying until
    /// the broker acknowledges it) and notes that it did.
    async fn report(
        &self,
        message: &OutboundMessage,
        record: &DeliveryRecord,
    ) -> Result<(), StoreError> {
        let (status, reason) = match record.status.as_str() {
            "sent" => (DeliveryStatus::Sent, None),
            "bounced" => (DeliveryStatus::Bounced, record.reason.clone()),
            "dropped" => (
                DeliveryStatus::Failed,
                Some(format!(
                    "dropped: {}",
                    record.reason.as_deref().unwrap_or("")
                )),
            ),
            _ => (DeliveryStatus::Failed, record.reason.clone()),
        };
        let event = DeliveryEvent {
            event_id: crate::core::ids::output_id(
                &message.lead_ext_id,
                "delivery",
                &format!("{}\u{1f}{}", message.message_id, status.as_str()),
            ),
            message_id: message.message_id.clone(),
            lead_ext_id: message.lead_ext_id.clone(),
            channel: message.channel,
            status,
            occurred_at: record.updated_at,
            provider: Some(
                match message.channel {
                    Channel::Email => SENDGRID,
                    Channel::Sms => TWILIO,
                }
                .to_string(),
            ),
            provider_message_id: record.provider_message_id.clone(),
            reason,
        };
        let topic = &self.config.topics.deliveries;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let sent = match self.codec.encode(topic, &event).await {
                Ok(payload) => self
                    .producer
                    .get()
                    .send(
                        FutureRecord::to(topic)
                            .key(&event.lead_ext_id)
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => break,
                Err(e) => {
                    self.producer.renew_if_failed();
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "publishing a DeliveryEvent failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.retry_store("reported", || {
            self.store.mark_delivery_reported(&message.message_id)
        })
        .await
    }

    /// A store call retried while the database is unavailable: a delivery
    /// must not be skipped or repeated because the database blinked. Any
    /// other store error is a defect and stops the worker.
    async fn retry_store<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        with_store_retry(what, &self.metrics, op).await
    }
}
