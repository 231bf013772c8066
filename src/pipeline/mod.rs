//! The processing loop: effectively-once with the database as the record of
//! truth.
//!
//! - **Assignment.** The consumer's rebalance callback reads the next offset
//!   of every assigned partition from the database and assigns once with
//!   those offsets (as rust-arroyo does); a partition the database has never
//!   seen starts from the beginning. Kafka's committed offsets are written
//!   too, after each batch, but only for lag monitoring.
//! - **Order.** Each partition group (partition p of the co-partitioned
//!   input topics) is merged by event time ([`merge`]), so a lead's events
//!   are applied in one deterministic order.
//! - **Batches.** The merged events are applied by the pure core; the touched
//!   leads, the output events (outbox) and each partition's offset advance go
//!   into one database transaction. The advance is a compare-and-set: an
//!   instance that lost a partition without noticing is fenced off and stops.
//! - **Outputs.** The [`outbox`] relay publishes committed outputs with an
//!   idempotent producer and deletes them after the broker's ack.
//! - **Timers.** Between batches the loop fires the nurturing timers due by
//!   its clock in its partitions ([`timers`]), in transactions fenced like
//!   batches.
//! - **Bad input.** A message that cannot be decoded goes to the dead-letter
//!   topic with its reason, and its offset is committed with the batch. If
//!   most of a window of messages is bad, the processor stops: that is a bad
//!   deploy, not bad data. Transient failures (database, broker, registry) are
//!   retried with backoff and never dead-lettered.

pub mod merge;
pub mod models;
pub mod outbox;
pub mod replay;
pub mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::CString;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};
use tokio::time::sleep;
use tracing::{error, info, warn};

use crate::codec::{Codec, CodecError};
use crate::config::{ClockMode, Config};
use crate::events::{InputEvent, InputStream, Millis};
use crate::kafka::{client_config, SharedProducer};
use crate::lead::{apply, fire_timers, ApplyContext, LeadState, Output};
use crate::metrics::Metrics;
use crate::nurture::FireClock;
use crate::scoring::ActiveModel;
use crate::store::{BatchWrite, LeadStore, LeadWrite, NewOutboxRow, OffsetAdvance, StoreError};

use merge::{MergeBuffer, Pending};
use models::{ModelSlot, ModelWatcher};
use outbox::OutboxRelay;
use timers::{fire_round, Clock, FiredLead, WallClock};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "{invalid} of the last {window} messages could not be processed (most recent: {last_reason}); \
         stopping, as this looks like a bad deploy or a wrong topic rather than bad data. \
         Raise processor.dead_letter_max_ratio if it is expected"
    )]
    TooManyInvalid {
        invalid: usize,
        window: usize,
        last_reason: String,
    },
    #[error("the processor needs a multi-threaded tokio runtime (the rebalance callback reads the store)")]
    Runtime,
    #[error("partition assignment failed: {0}")]
    Assignment(String),
}

/// A consumed message, detached from the consumer's buffer.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record's Kafka timestamp (create or log-append time), if it has one.
    pub timestamp: Option<Millis>,
}

impl RawMessage {
    /// Detaches a consumed message.
    pub fn from_message<M: Message>(m: &M) -> Self {
        RawMessage {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
        }
    }
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
    /// Present ("true") when the key or value was cut to fit the topic.
    pub const TRUNCATED: &str = "leadflow.dlq.truncated";
    pub const ORIGINAL_KEY_BYTES: &str = "leadflow.original.key.bytes";
    pub const ORIGINAL_VALUE_BYTES: &str = "leadflow.original.value.bytes";
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

/// A lead a batch changed.
pub struct TouchedLead {
    pub partition: i32,
    pub state: LeadState,
    /// The timer the store held when a timer of this lead fired in the batch.
    pub stored_timer: Option<Millis>,
    pub experiments_changed: bool,
}

impl TouchedLead {
    pub fn write(&self) -> LeadWrite<'_> {
        LeadWrite {
            state: &self.state,
            partition: self.partition,
            expect_timer: self.stored_timer,
            experiments_changed: self.experiments_changed,
        }
    }
}

impl From<FiredLead> for TouchedLead {
    fn from(f: FiredLead) -> Self {
        TouchedLead {
            partition: f.partition,
            experiments_changed: f.experiments_changed,
            stored_timer: f.stored_timer,
            state: f.state,
        }
    }
}

/// What applying a batch produced: the new states of the leads it changed
/// and the outputs, each with the partition of the event that caused it.
pub struct AppliedBatch {
    pub leads: Vec<TouchedLead>,
    pub outputs: Vec<(i32, Output)>,
}

/// The clock a batch is applied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchClock {
    /// A live processor at `now` (wall time): a lead's timers due by the
    /// event's time fire before its event; the others fire in ticks.
    Live(Millis),
    /// Event time (a replay, or `processor.clock = "event_time"`): a lead's
    /// timers due by its event's time fire, each at its due time, before the event.
    EventTime,
    /// An import of history: event time, and no nurturing.
    Import,
}

/// Applies a batch of events to their leads, in order, loading each lead once.
pub async fn apply_batch<S: LeadStore>(
    store: &S,
    events: &[(i32, InputEvent)],
    config: &Config,
    model: Option<&ActiveModel>,
    clock: BatchClock,
    summary: &mut RunSummary,
) -> Result<AppliedBatch, StoreError> {
    let mut ids: Vec<&str> = events.iter().map(|(_, e)| e.lead_ext_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states: HashMap<String, LeadState> = store.load_leads(&ids).await?;
    let stored: HashMap<String, (Option<Millis>, ExperimentsDigest)> = states
        .iter()
        .map(|(id, s)| (id.clone(), (s.nurture.timer, experiments_digest(s))))
        .collect();
    let nurture =
        (clock != BatchClock::Import && config.nurture.enabled).then_some(&config.nurture);
    let mut touched: BTreeMap<String, (i32, bool)> = BTreeMap::new();
    let mut outputs = Vec::new();
    for (partition, event) in events {
        let id = event.lead_ext_id();
        let at = event.occurred_at();
        let (now, fire) = match clock {
            BatchClock::Live(now) => (now, FireClock::Live { now, until: at }),
            _ => (at, FireClock::Sweep(at)),
        };
        let mut state = states.remove(id);
        let mut fired = false;
        if let (Some(config), Some(state)) = (nurture, state.as_mut()) {
            if state.nurture.timer.is_some_and(|t| t <= fire.bound()) {
                let messages = fire_timers(state, config, fire);
                summary.outputs += messages.len() as u64;
                outputs.extend(messages.into_iter().map(|o| (*partition, o)));
                fired = true;
            }
        }
        let ctx = ApplyContext {
            scoring: &config.scoring,
            dedup_window: config.processor.dedup_window,
            now,
            model,
            nurture,
        };
        let applied = apply(state, event, &ctx);
        if applied.duplicate {
            summary.duplicates += 1;
        } else {
            summary.applied += 1;
        }
        if fired || !applied.duplicate {
            let entry = touched.entry(id.to_string()).or_insert((*partition, false));
            entry.1 |= fired;
        }
        summary.outputs += applied.outputs.len() as u64;
        outputs.extend(applied.outputs.into_iter().map(|o| (*partition, o)));
        states.insert(id.to_string(), applied.state);
    }
    let leads = touched
        .into_iter()
        .filter_map(|(id, (partition, fired))| {
            let state = states.remove(&id)?;
            let (timer, digest) = stored.get(&id).copied().unwrap_or_default();
            Some(TouchedLead {
                partition,
                // Only a timer the store already held can be raced for.
                stored_timer: if fired { timer } else { None },
                experiments_changed: experiments_digest(&state) != digest,
                state,
            })
        })
        .collect();
    Ok(AppliedBatch { leads, outputs })
}

type ExperimentsDigest = (usize, usize, usize);

/// What can change in a lead's experiment memberships: a membership is
/// never removed and its reply and conversion are set once, so equal counts
/// mean nothing changed.
fn experiments_digest(state: &LeadState) -> ExperimentsDigest {
    let members = state.nurture.experiments.values();
    (
        state.nurture.experiments.len(),
        members.clone().filter(|m| m.replied_at.is_some()).count(),
        members.filter(|m| m.converted_at.is_some()).count(),
    )
}

/// The outbox row for an output: its topic, key and JSON payload.
pub fn outbox_row(config: &Config, partition: i32, output: &Output, now: Millis) -> NewOutboxRow {
    let (topic, key) = match output {
        Output::Score(s) => (&config.topics.scores, &s.lead_ext_id),
        Output::Message(m) => (&config.topics.outbound, &m.lead_ext_id),
    };
    NewOutboxRow {
        output_id: output.id().to_string(),
        topic: topic.clone(),
        key: key.clone(),
        payload: serde_json::to_string(output).expect("outputs are plain data"),
        source_partition: partition,
        created_at: now,
    }
}

/// Retries a store operation while its error is transient, with capped
/// exponential backoff. The loop never skips ahead: it waits.
pub async fn with_store_retry<T, F, Fut>(
    what: &str,
    metrics: &Metrics,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                metrics.store_retries.inc();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}: store unavailable, retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

type TopicPartition = (String, i32);

/// Records one partition group may buffer while it waits for an empty stream.
const MERGE_BUFFER_LIMIT: usize = 100_000;

/// This instance's partitions and where the database says each one stands,
/// shared by the rebalance callback, the loop and the outbox relay.
#[derive(Default)]
pub struct Assignment {
    state: Mutex<AssignmentState>,
}

#[derive(Default, Clone)]
struct AssignmentState {
    /// Bumped by every rebalance: the loop drops what it buffered before.
    generation: u64,
    /// Owned topic-partitions and their stored next offset (`None`: no row yet).
    positions: BTreeMap<TopicPartition, Option<i64>>,
    /// Set when the callback could not read the store; the loop stops on it.
    failure: Option<String>,
}

impl Assignment {
    /// Installs a new assignment (empty on revocation) as a new generation.
    fn replace(&self, positions: BTreeMap<TopicPartition, Option<i64>>, failure: Option<String>) {
        let mut state = self.state.lock().expect("assignment lock");
        state.generation += 1;
        state.positions = positions;
        state.failure = failure;
    }

    fn failure(&self) -> Option<String> {
        self.state.lock().expect("assignment lock").failure.clone()
    }
    fn snapshot(&self) -> AssignmentState {
        self.state.lock().expect("assignment lock").clone()
    }

    fn generation(&self) -> u64 {
        self.state.lock().expect("assignment lock").generation
    }

    /// The input partition numbers owned; the outbox relay publishes their rows.
    pub fn owned_partition_numbers(&self) -> Vec<i32> {
        let state = self.state.lock().expect("assignment lock");
        let set: BTreeSet<i32> = state.positions.keys().map(|(_, p)| *p).collect();
        set.into_iter().collect()
    }
}

/// The consumer context: assigns partitions at the offsets the store holds.
pub struct AssignmentContext<S> {
    store: Arc<S>,
    group: String,
    assignment: Arc<Assignment>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

impl<S: LeadStore + 'static> ClientContext for AssignmentContext<S> {}

impl<S: LeadStore + 'static> ConsumerContext for AssignmentContext<S> {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                info!(partitions = tpl.count(), "partitions revoked");
            } else {
                error!(error = ?err, "rebalance error; unassigning");
            }
            self.assignment.replace(BTreeMap::new(), None);
            self.metrics.assigned_partitions.set(0);
            self.metrics.consumer_lag.reset();
            let _ = base.unassign();
            return;
        }
        // The callback runs inside the consumer's poll on a runtime worker;
        // block_in_place lets the store query run there. The assignment lock
        // is not held meanwhile, so the relay is never blocked on it.
        let stored = tokio::task::block_in_place(|| {
            self.runtime.block_on(with_store_retry(
                "read partition offsets",
                &self.metrics,
                || self.store.partition_offsets(&self.group),
            ))
        });
        let stored = match stored {
            Ok(rows) => rows,
            Err(e) => {
                error!(error = %e, "cannot read partition offsets; assigning nothing");
                self.assignment
                    .replace(BTreeMap::new(), Some(e.to_string()));
                let _ = base.unassign();
                return;
            }
        };
        let by_tp: HashMap<(&str, i32), i64> = stored
            .iter()
            .map(|o| ((o.topic.as_str(), o.partition), o.next_offset))
            .collect();
        let mut assigned = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for elem in tpl.elements() {
            let next = by_tp.get(&(elem.topic(), elem.partition())).copied();
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = assigned.add_partition_offset(elem.topic(), elem.partition(), offset) {
                error!(error = %e, "cannot build the assignment");
            }
            positions.insert((elem.topic().to_string(), elem.partition()), next);
        }
        let failure = base.assign(&assigned).err().map(|e| {
            error!(error = %e, "assign failed");
            e.to_string()
        });
        info!(
            partitions = assigned.count(),
            "partitions assigned at stored offsets"
        );
        self.metrics
            .assigned_partitions
            .set(assigned.count() as i64);
        self.assignment.replace(positions, failure);
    }
}

/// A decoded (or rejected) message waiting in a merge buffer.
// Most buffered records are events; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    Event(InputEvent),
    Rejected(RawMessage, Rejection),
}

/// Counts invalid messages over a sliding window of messages.
struct DeadLetterBudget {
    window: usize,
    max_invalid: usize,
    recent: VecDeque<bool>,
    invalid: usize,
}

impl DeadLetterBudget {
    fn new(window: usize, max_ratio: f64) -> Self {
        DeadLetterBudget {
            window,
            max_invalid: (window as f64 * max_ratio).floor() as usize,
            recent: VecDeque::with_capacity(window),
            invalid: 0,
        }
    }

    /// Records one message; returns the invalid count when it passes the bound.
    fn record(&mut self, invalid: bool) -> Option<usize> {
        self.recent.push_back(invalid);
        self.invalid += invalid as usize;
        if self.recent.len() > self.window && self.recent.pop_front() == Some(true) {
            self.invalid -= 1;
        }
        (self.invalid > self.max_invalid).then_some(self.invalid)
    }
}

/// What the loop holds between fetches.
#[derive(Default)]
struct LoopState {
    generation: u64,
    positions: BTreeMap<TopicPartition, Option<i64>>,
    /// Next offset after the last message received per topic-partition.
    received: HashMap<TopicPartition, i64>,
    buffers: BTreeMap<i32, MergeBuffer<Decoded>>,
    /// Since when each partition group has been waiting on an empty stream.
    waiting_since: HashMap<i32, Instant>,
    /// Latest event time applied per partition (the clock on event time).
    stream_time: BTreeMap<i32, Millis>,
}

impl LoopState {
    fn buffered(&self) -> usize {
        self.buffers.values().map(MergeBuffer::len).sum()
    }
}

pub struct Pipeline<S: LeadStore + 'static> {
    config: Config,
    store: Arc<S>,
    codec: Arc<Codec>,
    metrics: Arc<Metrics>,
    consumer: StreamConsumer<AssignmentContext<S>>,
    producer: Arc<SharedProducer>,
    assignment: Arc<Assignment>,
    models: Arc<ModelSlot>,
    clock: Arc<dyn Clock>,
    /// `processor.earliest_event_time`, parsed once.
    earliest_event_time: Millis,
}

impl<S: LeadStore + 'static> Pipeline<S> {
    pub fn new(
        config: Config,
        store: Arc<S>,
        codec: Arc<Codec>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PipelineError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PipelineError::Runtime)?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(PipelineError::Runtime);
        }
        let assignment = Arc::new(Assignment::default());
        let context = AssignmentContext {
            store: store.clone(),
            group: config.kafka.group_id.clone(),
            assignment: assignment.clone(),
            metrics: metrics.clone(),
            runtime,
        };
        let session_timeout = config.kafka.session_timeout_ms.to_string();
        let consumer: StreamConsumer<AssignmentContext<S>> = client_config(
            &config.kafka,
            &[
                ("group.id", config.kafka.group_id.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", session_timeout.as_str()),
                ("enable.partition.eof", "false"),
            ],
        )
        .create_with_context(context)?;
        let topics: Vec<&str> = InputStream::ALL
            .iter()
            .map(|s| config.topics.input(*s))
            .collect();
        consumer.subscribe(&topics)?;
        let producer = Arc::new(SharedProducer::new(
            &config.kafka,
            config.processor.dead_letter_max_bytes,
        )?);
        Ok(Pipeline {
            store,
            codec,
            metrics,
            consumer,
            producer,
            assignment,
            models: Arc::new(ModelSlot::default()),
            clock: Arc::new(WallClock),
            earliest_event_time: config.processor.earliest_event_time_millis(),
            config,
        })
    }

    /// Replaces the wall clock (tests drive nurturing timers with their own).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `shutdown` resolves (or the idle limit passes): finishes the
    /// batch in hand, flushes the outbox, then leaves the group.
    pub async fn run(
        &self,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, PipelineError> {
        let (stop_relay, relay_stop) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        if let Ok(depth) = self.store.outbox_depth().await {
            self.metrics.outbox_depth.set(depth);
        }
        let watcher = ModelWatcher {
            store: self.store.clone(),
            scoring: self.config.scoring.clone(),
            slot: self.models.clone(),
            metrics: self.metrics.clone(),
        };
        // The first batch is scored by the active model, not by rules alone.
        if let Err(e) = watcher.refresh().await {
            warn!(error = %e, "could not load the active model; scoring with rules until it loads");
        }
        let watcher = tokio::spawn(watcher.run(relay_stop.clone()));
        let relay = tokio::spawn(
            OutboxRelay {
                store: self.store.clone(),
                codec: self.codec.clone(),
                producer: self.producer.clone(),
                assignment: self.assignment.clone(),
                wake: wake.clone(),
                metrics: self.metrics.clone(),
            }
            .run(relay_stop),
        );
        let result = self.consume(options, shutdown, &wake).await;
        // Flush what the batches committed before leaving the group.
        let _ = stop_relay.send(true);
        if let Err(e) = relay.await {
            warn!(error = %e, "outbox relay ended abnormally");
        }
        if let Err(e) = watcher.await {
            warn!(error = %e, "model watcher ended abnormally");
        }
        self.consumer.unsubscribe();
        match &result {
            Ok(summary) => info!(?summary, "processor stopped"),
            Err(e) => error!(error = %e, "processor failed"),
        }
        result
    }

    async fn consume(
        &self,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
        wake: &Notify,
    ) -> Result<RunSummary, PipelineError> {
        tokio::pin!(shutdown);
        let mut summary = RunSummary::default();
        let mut state = LoopState::default();
        let mut budget = DeadLetterBudget::new(
            self.config.processor.dead_letter_window,
            self.config.processor.dead_letter_max_ratio,
        );
        let mut last_activity = Instant::now();
        let mut last_report = Instant::now();
        let tick_interval = Duration::from_millis(self.config.nurture.tick_interval_ms);
        let mut last_tick = Instant::now();
        loop {
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                received = self.receive(&mut state, &mut summary) => received?,
            };
            if let Some(failure) = self.assignment.failure() {
                return Err(PipelineError::Assignment(failure));
            }
            self.sync_assignment(&mut state);
            if received > 0 {
                // While messages keep arriving, what a group waits for may be
                // queued locally behind them: only rounds that bring nothing
                // count as waiting (Kafka Streams counts task idle time so).
                state.waiting_since.clear();
            }
            let ready = self.drain_ready(&mut state);
            // Idle time counts only while this instance owns partitions: an
            // instance waiting for its assignment is not idle.
            if received > 0 || !ready.is_empty() || state.positions.is_empty() {
                last_activity = Instant::now();
            }
            if !ready.is_empty() {
                // One merge drain can release more than a batch; each
                // transaction stays within processor.batch_size.
                let mut rest = ready;
                while !rest.is_empty() {
                    let tail = rest.split_off(rest.len().min(self.config.processor.batch_size));
                    self.process(rest, &mut state, &mut summary, &mut budget)
                        .await?;
                    rest = tail;
                }
                wake.notify_one();
            } else if let Some(idle) = options.exit_when_idle {
                if state.buffered() == 0 && last_activity.elapsed() >= idle {
                    info!(idle_secs = idle.as_secs(), "no new messages; stopping");
                    break;
                }
            }
            if self.config.nurture.enabled
                && !state.positions.is_empty()
                && last_tick.elapsed() >= tick_interval
            {
                let fired = self.fire_timers(&mut state, &mut summary).await?;
                if fired > 0 {
                    wake.notify_one();
                    last_activity = Instant::now();
                }
                last_tick = Instant::now();
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                self.update_lag(&state);
                info!(?summary, buffered = state.buffered(), "progress");
                last_report = Instant::now();
            }
        }
        self.update_lag(&state);
        Ok(summary)
    }

    /// After a rebalance, forget everything buffered: the new assignment
    /// restarts every partition at its stored offset.
    fn sync_assignment(&self, state: &mut LoopState) {
        let generation = self.assignment.generation();
        if generation != state.generation {
            let snapshot = self.assignment.snapshot();
            *state = LoopState {
                generation: snapshot.generation,
                positions: snapshot.positions,
                ..LoopState::default()
            };
        }
    }

    /// Receives up to `batch_size` messages into the merge buffers: waits up
    /// to a second for the first, then at most `batch_linger_ms` for the rest.
    async fn receive(
        &self,
        state: &mut LoopState,
        summary: &mut RunSummary,
    ) -> Result<usize, PipelineError> {
        let p = &self.config.processor;
        let first_wait = if state.buffered() > 0 {
            Duration::from_millis(p.batch_linger_ms.max(10))
        } else if self.config.nurture.enabled {
            // An idle processor still has timers to fire.
            Duration::from_millis(self.config.nurture.tick_interval_ms).min(Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        let mut deadline = tokio::time::Instant::now() + first_wait;
        let mut received = 0;
        while received < p.batch_size {
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if received == 0 {
                deadline = tokio::time::Instant::now() + Duration::from_millis(p.batch_linger_ms);
            }
            received += 1;
            self.sync_assignment(state);
            let raw = RawMessage::from_message(&message);
            drop(message);
            self.buffer(raw, state, summary).await;
        }
        Ok(received)
    }

    async fn buffer(&self, raw: RawMessage, state: &mut LoopState, summary: &mut RunSummary) {
        let tp = (raw.topic.clone(), raw.partition);
        let Some(position) = state.positions.get(&tp).copied() else {
            // A message fetched for a partition this instance no longer owns.
            return;
        };
        let Some(stream) = self.config.topics.stream_of(&raw.topic) else {
            return;
        };
        match state.received.get(&tp) {
            // Fetched again within this assignment: already buffered.
            Some(next) if raw.offset < *next => return,
            Some(_) => {}
            // The partition was assigned at the stored offset, so its first
            // message lies elsewhere only if the log no longer holds that
            // offset: the topic was recreated (or a broker lost its data) and
            // the consumer was reset, or retention deleted unread records.
            // The log is the input: go on from here, loudly; event ids still
            // guard against applying a repeated event twice.
            None => match position {
                Some(stored) if raw.offset != stored => warn!(
                    topic = %raw.topic,
                    partition = raw.partition,
                    stored_next_offset = stored,
                    first_offset = raw.offset,
                    "the log does not continue where the store left off (topic recreated, data lost or expired); applying from here"
                ),
                _ => {}
            },
        }
        state.received.insert(tp, raw.offset + 1);
        summary.consumed += 1;
        self.metrics
            .events_consumed
            .with_label_values(&[&raw.topic])
            .inc();
        let offset = raw.offset;
        let partition = raw.partition;
        let (time, item) = match self.decode(stream, &raw).await {
            Ok(event) => (Some(event.occurred_at()), Decoded::Event(event)),
            Err(rejection) => (None, Decoded::Rejected(raw, rejection)),
        };
        state
            .buffers
            .entry(partition)
            .or_default()
            .push(stream, Pending { offset, time, item });
    }

    /// The records whose place in the merged order is certain, per group.
    fn drain_ready(&self, state: &mut LoopState) -> Vec<(i32, InputStream, Pending<Decoded>)> {
        let max_wait = Duration::from_millis(self.config.processor.max_merge_wait_ms);
        let mut ready = Vec::new();
        let partitions: Vec<i32> = state.buffers.keys().copied().collect();
        for partition in partitions {
            let waited_enough = state
                .waiting_since
                .get(&partition)
                .is_some_and(|since| since.elapsed() >= max_wait);
            let caught_up = |stream: InputStream| {
                let topic = self.config.topics.input(stream);
                let tp = (topic.to_string(), partition);
                let Some(position) = state.positions.get(&tp) else {
                    return true;
                };
                let next = state.received.get(&tp).copied().or(*position).unwrap_or(0);
                matches!(self.cached_high_watermark(topic, partition), Some(high) if next >= high)
            };
            let mut out = Vec::new();
            let buffer = state.buffers.get_mut(&partition).expect("listed partition");
            // A stream that never delivers must not make the others buffer
            // without bound.
            let overfull = buffer.len() >= MERGE_BUFFER_LIMIT;
            buffer.drain(|s| waited_enough || overfull || caught_up(s), &mut out);
            if buffer.is_empty() {
                state.waiting_since.remove(&partition);
            } else if out.is_empty() {
                state
                    .waiting_since
                    .entry(partition)
                    .or_insert_with(Instant::now);
            } else {
                state.waiting_since.insert(partition, Instant::now());
            }
            ready.extend(out.into_iter().map(|(s, p)| (partition, s, p)));
        }
        ready
    }

    /// librdkafka's high watermark from its last fetch response (no request).
    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid for the consumer's lifetime and
        // the function only reads librdkafka's cached partition state.
        let err = unsafe {
            rdsys::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
    }

    fn update_lag(&self, state: &LoopState) {
        for ((topic, partition), position) in &state.positions {
            if let Some(high) = self.cached_high_watermark(topic, *partition) {
                let lag = (high - position.unwrap_or(0)).max(0);
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic, &partition.to_string()])
                    .set(lag);
            }
        }
    }

    async fn process(
        &self,
        ready: Vec<(i32, InputStream, Pending<Decoded>)>,
        state: &mut LoopState,
        summary: &mut RunSummary,
        budget: &mut DeadLetterBudget,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let mut advances: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut events: Vec<(i32, InputEvent)> = Vec::with_capacity(ready.len());
        for (partition, stream, pending) in ready {
            let tp = (self.config.topics.input(stream).to_string(), partition);
            let next = advances.entry(tp).or_insert(0);
            *next = (*next).max(pending.offset + 1);
            match pending.item {
                Decoded::Event(event) => {
                    budget.record(false);
                    events.push((partition, event));
                }
                Decoded::Rejected(raw, rejection) => {
                    self.dead_letter(&raw, &rejection).await;
                    summary.dead_lettered += 1;
                    self.metrics
                        .dead_letters
                        .with_label_values(&[rejection.kind])
                        .inc();
                    if let Some(invalid) = budget.record(true) {
                        return Err(PipelineError::TooManyInvalid {
                            invalid,
                            window: budget.window,
                            last_reason: format!("{}: {}", rejection.kind, rejection.message),
                        });
                    }
                }
            }
        }
        let offsets: Vec<OffsetAdvance> = advances
            .iter()
            .map(|(tp, to)| OffsetAdvance {
                topic: tp.0.clone(),
                partition: tp.1,
                from: state.positions.get(tp).copied().flatten(),
                to: *to,
            })
            .collect();
        let now = self.clock.now();
        let batch_clock = match self.config.processor.clock {
            ClockMode::Wall => BatchClock::Live(now),
            ClockMode::EventTime => BatchClock::EventTime,
        };
        let model = self.models.current();
        let before = summary.clone();
        // A commit whose acknowledgement was lost (the connection dropped
        // after the database committed) looks like a fenced advance on the
        // retry. If the stored offsets are exactly where this batch put them,
        // it is this batch's own commit: keep the first attempt's result.
        let failed_attempt: Mutex<Option<(RunSummary, usize)>> = Mutex::new(None);
        let (after, outputs) = with_store_retry("commit batch", &self.metrics, || async {
            // Re-applied from the stored state on every attempt, so a retry
            // after a failed transaction starts from what was committed.
            let mut attempt = before.clone();
            let applied = apply_batch(
                self.store.as_ref(),
                &events,
                &self.config,
                model.as_deref(),
                batch_clock,
                &mut attempt,
            )
            .await?;
            let outbox: Vec<NewOutboxRow> = applied
                .outputs
                .iter()
                .map(|(partition, output)| outbox_row(&self.config, *partition, output, now))
                .collect();
            let written = outbox.len();
            let committed = self
                .store
                .commit_batch(&BatchWrite {
                    consumer_group: &self.config.kafka.group_id,
                    leads: applied.leads.iter().map(TouchedLead::write).collect(),
                    offsets: offsets.clone(),
                    outbox,
                })
                .await;
            match committed {
                Ok(()) => Ok((attempt, written)),
                Err(StoreError::Fenced { .. })
                    if failed_attempt.lock().expect("attempt lock").is_some() =>
                {
                    if self.offsets_stored(&offsets).await? {
                        Ok(failed_attempt
                            .lock()
                            .expect("attempt lock")
                            .take()
                            .expect("checked"))
                    } else {
                        committed.map(|()| (attempt, written))
                    }
                }
                Err(e) => {
                    failed_attempt
                        .lock()
                        .expect("attempt lock")
                        .get_or_insert((attempt, written));
                    Err(e)
                }
            }
        })
        .await?;
        self.metrics
            .events_applied
            .inc_by(after.applied - before.applied);
        self.metrics
            .events_duplicate
            .inc_by(after.duplicates - before.duplicates);
        self.metrics.outputs_written.inc_by(outputs as u64);
        self.metrics.outbox_depth.add(outputs as i64);
        self.metrics
            .batch_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_events.observe(events.len() as f64);
        *summary = after;
        summary.batches += 1;
        for (partition, event) in &events {
            let t = state
                .stream_time
                .entry(*partition)
                .or_insert(event.occurred_at());
            *t = (*t).max(event.occurred_at());
        }

        let mut tpl = TopicPartitionList::new();
        for advance in &offsets {
            state
                .positions
                .insert((advance.topic.clone(), advance.partition), Some(advance.to));
            tpl.add_partition_offset(
                &advance.topic,
                advance.partition,
                Offset::Offset(advance.to),
            )?;
        }
        // Kafka's committed offsets only serve lag monitoring; the store's
        // are the ones the consumer starts from.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(error = %e, "kafka offset commit failed (lag monitoring only)");
        }
        Ok(())
    }

    /// Fires the nurturing timers due by the clock in the owned partitions,
    /// a few rounds of `nurture.timers_per_tick` leads (the rest wait for the
    /// next tick, so input events are not held up). Each round is one
    /// transaction, fenced like a batch. Returns the leads fired.
    async fn fire_timers(
        &self,
        state: &mut LoopState,
        summary: &mut RunSummary,
    ) -> Result<usize, PipelineError> {
        let owned: BTreeSet<i32> = state.positions.keys().map(|(_, p)| *p).collect();
        let jobs: Vec<(Vec<i32>, FireClock)> = match self.config.processor.clock {
            ClockMode::Wall => vec![(
                owned.into_iter().collect(),
                FireClock::live(self.clock.now()),
            )],
            ClockMode::EventTime => {
                let mut jobs = Vec::new();
                for partition in owned {
                    let known = state.stream_time.get(&partition).copied();
                    let clock = match known {
                        Some(t) => Some(t),
                        // After an assignment: where this partition's clock stood.
                        None => with_store_retry("read stream time", &self.metrics, || {
                            self.store.partition_stream_time(partition)
                        })
                        .await?
                        .inspect(|t| {
                            state.stream_time.insert(partition, *t);
                        }),
                    };
                    if let Some(t) = clock {
                        jobs.push((vec![partition], FireClock::Sweep(t)));
                    }
                }
                jobs
            }
        };
        let mut total = 0;
        for (partitions, clock) in jobs {
            total += self
                .fire_timer_rounds(state, &partitions, clock, summary)
                .await?;
        }
        Ok(total)
    }

    async fn fire_timer_rounds(
        &self,
        state: &LoopState,
        partitions: &[i32],
        clock: FireClock,
        summary: &mut RunSummary,
    ) -> Result<usize, PipelineError> {
        const ROUNDS_PER_TICK: usize = 4;
        let limit = self.config.nurture.timers_per_tick;
        let mut total = 0;
        for _ in 0..ROUNDS_PER_TICK {
            let now = self.clock.now();
            let (leads, outputs) = with_store_retry("fire timers", &self.metrics, || async {
                let (leads, outputs) =
                    fire_round(self.store.as_ref(), &self.config, partitions, clock, limit).await?;
                if leads.is_empty() {
                    return Ok((0, 0));
                }
                let fired: BTreeSet<i32> = leads.iter().map(|l| l.partition).collect();
                // Advancing nothing, these only check that the partitions are
                // still this instance's: a zombie must not fire timers.
                let fences: Vec<OffsetAdvance> = state
                    .positions
                    .iter()
                    .filter(|((_, p), _)| fired.contains(p))
                    .filter_map(|((topic, partition), next)| {
                        next.map(|n| OffsetAdvance {
                            topic: topic.clone(),
                            partition: *partition,
                            from: Some(n),
                            to: n,
                        })
                    })
                    .collect();
                let touched: Vec<TouchedLead> = leads.into_iter().map(TouchedLead::from).collect();
                let outbox: Vec<NewOutboxRow> = outputs
                    .iter()
                    .map(|(p, o)| outbox_row(&self.config, *p, o, now))
                    .collect();
                self.store
                    .commit_batch(&BatchWrite {
                        consumer_group: &self.config.kafka.group_id,
                        leads: touched.iter().map(TouchedLead::write).collect(),
                        offsets: fences,
                        outbox,
                    })
                    .await?;
                Ok((touched.len(), outputs.len()))
            })
            .await?;
            total += leads;
            summary.outputs += outputs as u64;
            self.metrics.timers_fired.inc_by(leads as u64);
            self.metrics.outputs_written.inc_by(outputs as u64);
            self.metrics.outbox_depth.add(outputs as i64);
            if leads < limit {
                break;
            }
        }
        Ok(total)
    }

    /// Whether the store's offsets are exactly the ones `advances` lead to.
    async fn offsets_stored(&self, advances: &[OffsetAdvance]) -> Result<bool, StoreError> {
        let stored = self
            .store
            .partition_offsets(&self.config.kafka.group_id)
            .await?;
        Ok(advances.iter().all(|a| {
            stored
                .iter()
                .any(|o| o.topic == a.topic && o.partition == a.partition && o.next_offset == a.to)
        }))
    }

    async fn decode(
        &self,
        stream: InputStream,
        message: &RawMessage,
    ) -> Result<InputEvent, Rejection> {
        let payload = message.payload.as_deref().ok_or_else(|| Rejection {
            kind: "empty",
            message: "message has no value".into(),
        })?;
        let limit = self.config.processor.max_message_bytes;
        if payload.len() > limit {
            return Err(Rejection {
                kind: "too_large",
                message: format!(
                    "value is {} bytes, more than processor.max_message_bytes = {limit}",
                    payload.len()
                ),
            });
        }
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
                    shorten(&String::from_utf8_lossy(key), 200),
                    event.lead_ext_id()
                ),
            });
        }
        check_event_time(
            &self.config.processor,
            self.earliest_event_time,
            &event,
            message.timestamp,
        )?;
        Ok(event)
    }

    async fn dead_letter(&self, message: &RawMessage, rejection: &Rejection) {
        dead_letter(
            &self.producer,
            &self.config.topics.dlq,
            self.config.processor.dead_letter_max_bytes,
            message,
            rejection,
        )
        .await
    }
}

/// Writes a rejected message to the dead-letter topic with headers naming
/// its source and the reason, retrying until the broker acknowledges it: a
/// dead letter is never dropped.
///
/// A dead letter larger than `max_bytes` (or than the broker then accepts:
/// `MessageSizeTooLarge` halves the budget) is written with its key and
/// value cut to fit and headers saying so and giving the original sizes;
/// the whole message stays in its source partition at the offset the
/// headers name. Without that, one message just under the input limit
/// would stall its partition for good.
pub async fn dead_letter(
    producer: &SharedProducer,
    topic: &str,
    max_bytes: usize,
    message: &RawMessage,
    rejection: &Rejection,
) {
    let error_message = shorten(&rejection.message, MAX_ERROR_HEADER_BYTES);
    warn!(
        topic = %message.topic,
        partition = message.partition,
        offset = message.offset,
        kind = rejection.kind,
        error = %error_message,
        "dead-lettering message"
    );
    let partition = message.partition.to_string();
    let offset = message.offset.to_string();
    let key = message.key.as_deref();
    let payload = message.payload.as_deref();
    let key_len = key.map_or(0, <[u8]>::len).to_string();
    let payload_len = payload.map_or(0, <[u8]>::len).to_string();
    let mut budget = max_bytes;
    let mut delay = Duration::from_millis(200);
    loop {
        let (key_part, payload_part) = fit_dead_letter(key, payload, budget);
        let truncated = key_part.map(<[u8]>::len) != key.map(<[u8]>::len)
            || payload_part.map(<[u8]>::len) != payload.map(<[u8]>::len);
        let mut headers = OwnedHeaders::new()
            .insert(header(dlq_headers::SOURCE_TOPIC, &message.topic))
            .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
            .insert(header(dlq_headers::SOURCE_OFFSET, &offset))
            .insert(header(dlq_headers::ERROR_KIND, rejection.kind))
            .insert(header(dlq_headers::ERROR_MESSAGE, &error_message));
        if truncated {
            headers = headers
                .insert(header(dlq_headers::TRUNCATED, "true"))
                .insert(header(dlq_headers::ORIGINAL_KEY_BYTES, &key_len))
                .insert(header(dlq_headers::ORIGINAL_VALUE_BYTES, &payload_len));
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key_part {
            record = record.key(key);
        }
        if let Some(payload) = payload_part {
            record = record.payload(payload);
        }
        match producer.get().send(record, Duration::from_secs(30)).await {
            Ok(_) => return,
            Err((KafkaError::MessageProduction(code), _)) if is_too_large(code) && budget > 0 => {
                budget /= 2;
                warn!(error = %code, topic = %topic, budget, "dead letter too large for the broker; cutting it down");
            }
            Err((e, _)) => {
                producer.renew_if_failed();
                warn!(error = %e, topic = %topic, retry_in_ms = delay.as_millis() as u64, "dead-letter write failed, retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Longest error text a dead letter's header carries.
const MAX_ERROR_HEADER_BYTES: usize = 1_000;

/// Room kept in a dead letter's budget for its headers and record framing.
const DEAD_LETTER_OVERHEAD_BYTES: usize = 2_048;

fn is_too_large(code: rdkafka::error::RDKafkaErrorCode) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge
    )
}

/// The key and value a dead letter carries within `budget` bytes: whole
/// when they fit, otherwise the key cut to at most a quarter of the budget
/// and the value to what is left.
pub fn fit_dead_letter<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    budget: usize,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let room = budget.saturating_sub(DEAD_LETTER_OVERHEAD_BYTES);
    let key_len = key.map_or(0, <[u8]>::len);
    let payload_len = payload.map_or(0, <[u8]>::len);
    if key_len + payload_len <= room {
        return (key, payload);
    }
    let key_room = key_len.min(room / 4);
    let payload_room = payload_len.min(room - key_room);
    (
        key.map(|k| &k[..key_room]),
        payload.map(|p| &p[..payload_room]),
    )
}

/// Refuses an event dated before `processor.earliest_event_time`, or more
/// than `processor.max_event_time_ahead_ms` after the moment its record
/// entered the log (its Kafka timestamp; the wall clock for a record
/// without one). Both bounds follow from the log itself, so a replay of the
/// log decides the same: a microsecond or seconds timestamp, or a date in
/// year 9999, never joins the merge, where it would hold its partition's
/// other events back.
/// `earliest` is `processor.earliest_event_time` as millis, parsed once by
/// the caller rather than per event.
pub fn check_event_time(
    processor: &crate::config::ProcessorConfig,
    earliest: Millis,
    event: &InputEvent,
    record_time: Option<Millis>,
) -> Result<(), Rejection> {
    let at = event.occurred_at();
    if at < earliest {
        return Err(Rejection {
            kind: "event_time_out_of_range",
            message: format!(
                "occurred_at {at} ({}) is before processor.earliest_event_time {} (seconds instead of milliseconds?)",
                crate::events::timestamp::format(at),
                processor.earliest_event_time
            ),
        });
    }
    let reference = record_time.unwrap_or_else(wall_clock_millis);
    let ahead = at.saturating_sub(reference);
    if ahead > processor.max_event_time_ahead_ms as i64 {
        return Err(Rejection {
            kind: "event_time_out_of_range",
            message: format!(
                "occurred_at {at} ({}) is {} ms after the record was written ({}), more than processor.max_event_time_ahead_ms = {} (microseconds instead of milliseconds?)",
                crate::events::timestamp::format(at),
                ahead,
                crate::events::timestamp::format(reference),
                processor.max_event_time_ahead_ms
            ),
        });
    }
    Ok(())
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn header<'h>(key: &'h str, value: &'h str) -> Header<'h, &'h str> {
    Header {
        key,
        value: Some(value),
    }
}

pub fn wall_clock_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::DeadLetterBudget;

    #[test]
    fn dead_letter_budget_trips_only_when_most_of_the_window_is_bad() {
        let mut budget = DeadLetterBudget::new(10, 0.5);
        // Scattered bad messages never trip it.
        for i in 0..100 {
            assert_eq!(budget.record(i % 3 == 0), None, "message {i}");
        }
        let mut budget = DeadLetterBudget::new(10, 0.5);
        for _ in 0..5 {
            assert_eq!(budget.record(true), None);
        }
        assert_eq!(budget.record(true), Some(6));
    }

    #[test]
    fn the_window_slides() {
        let mut budget = DeadLetterBudget::new(4, 0.5);
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(false), None);
        assert_eq!(budget.record(false), None);
        // Bad messages leave the window as new ones enter: [F, F, T, T].
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(true), None);
        // [F, T, T, T]
        assert_eq!(budget.record(true), Some(3));
    }
}
