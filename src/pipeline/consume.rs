//! The live loop: receive from the input topics, merge each partition
//! group by event time, hand what is ready to the batch transaction, fire
//! timers between batches, and follow rebalances.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::codec::Codec;
use crate::config::Config;
use crate::core::clock::{Clock, WallClock};
use crate::events::{InputEvent, InputStream, Millis};
use crate::kafka::deadletter::{DeadLetters, RawMessage, Rejection};
use crate::kafka::{client_config, SharedProducer};
use crate::metrics::internal_events::{
    ConsumerError, ConsumerLag, EventReceived, LogDiscontinuity, OutboxDepthRead,
};
use crate::metrics::Metrics;
use crate::store::LeadStore;

use super::assignment::{Assignment, AssignmentContext, TopicPartition};
use super::merge::{MergeBuffer, Pending};
use super::models::{ModelSlot, ModelWatcher};
use super::outbox::OutboxRelay;
use super::{PipelineError, RunOptions, RunSummary};

/// Records one partition group may buffer while it waits for an empty stream.
const MERGE_BUFFER_LIMIT: usize = 100_000;

/// A decoded (or rejected) message waiting in a merge buffer.
// Most buffered records are events; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    Event(InputEvent),
    Rejected(RawMessage, Rejection),
}

/// What the loop holds between fetches.
#[derive(Default)]
pub(super) struct LoopState {
    pub(super) generation: u64,
    pub(super) positions: BTreeMap<TopicPartition, Option<i64>>,
    /// Next offset after the last message received per topic-partition.
    pub(super) received: HashMap<TopicPartition, i64>,
    pub(super) buffers: BTreeMap<i32, MergeBuffer<Decoded>>,
    /// Since when each partition group has been waiting on an empty stream.
    pub(super) waiting_since: HashMap<i32, Instant>,
    /// Latest event time applied per partition (the clock on event time).
    pub(super) stream_time: BTreeMap<i32, Millis>,
    /// The forecast schedule's next slot, once read from the store.
    pub(super) forecast_next: Option<Millis>,
    /// When the schedules were last looked at.
    pub(super) forecast_checked: Option<Instant>,
    /// The analytics history's next day, once read from the store.
    pub(super) history_next: Option<i64>,
    /// When retention last looked for inactive leads.
    pub(super) retention_checked: Option<Instant>,
}

impl LoopState {
    pub(super) fn buffered(&self) -> usize {
        self.buffers.values().map(MergeBuffer::len).sum()
    }
}

pub struct Pipeline<S: LeadStore + 'static> {
    pub(super) config: Config,
    pub(super) store: Arc<S>,
    pub(super) codec: Arc<Codec>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) consumer: StreamConsumer<AssignmentContext<S>>,
    pub(super) producer: Arc<SharedProducer>,
    pub(super) dead_letters: DeadLetters,
    pub(super) assignment: Arc<Assignment>,
    pub(super) models: Arc<ModelSlot>,
    pub(super) clock: Arc<dyn Clock>,
    /// `processor.earliest_event_time`, parsed once.
    pub(super) earliest_event_time: Millis,
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
        let dead_letters = DeadLetters::new(
            producer.clone(),
            &config.topics.dlq,
            config.processor.dead_letter_max_bytes,
            metrics.clone(),
        )
        .with_budget(
            config.processor.dead_letter_window,
            config.processor.dead_letter_max_ratio,
        );
        Ok(Pipeline {
            dead_letters,
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
            self.metrics.emit(OutboxDepthRead { depth });
        }
        let watcher = ModelWatcher {
            store: self.store.clone(),
            scoring: self.config.scoring.clone(),
            slot: self.models.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
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
                master_keys: self.config.gdpr.encryption.master_keys(),
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
                    self.process(rest, &mut state, &mut summary).await?;
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
            if self.erase_inactive(&mut state).await? > 0 {
                last_activity = Instant::now();
            }
            if self.run_schedules(&mut state, &mut summary).await? > 0 {
                wake.notify_one();
                last_activity = Instant::now();
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
                    self.metrics.emit(ConsumerError {
                        consumer: "processor",
                        error: &e,
                    });
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
                Some(stored) if raw.offset != stored => self.metrics.emit(LogDiscontinuity {
                    topic: &raw.topic,
                    partition: raw.partition,
                    stored_next_offset: stored,
                    first_offset: raw.offset,
                }),
                _ => {}
            },
        }
        state.received.insert(tp, raw.offset + 1);
        summary.consumed += 1;
        self.metrics.emit(EventReceived {
            topic: &raw.topic,
            partition: raw.partition,
            offset: raw.offset,
        });
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
            let (positions, received) = (&state.positions, &state.received);
            let caught_up = |stream: InputStream| {
                self.stream_caught_up(positions, received, stream, partition)
                    .unwrap_or(true)
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

    /// Whether `stream`'s part of `partition` is read to the end of the log
    /// as librdkafka last saw it; `None` when this instance does not own it.
    fn stream_caught_up(
        &self,
        positions: &BTreeMap<TopicPartition, Option<i64>>,
        received: &HashMap<TopicPartition, i64>,
        stream: InputStream,
        partition: i32,
    ) -> Option<bool> {
        let topic = self.config.topics.input(stream);
        let tp = (topic.to_string(), partition);
        let position = positions.get(&tp)?;
        let next = received.get(&tp).copied().or(*position).unwrap_or(0);
        Some(matches!(self.cached_high_watermark(topic, partition), Some(high) if next >= high))
    }

    /// Whether this instance owns `partition` and has read all of it.
    pub(super) fn partition_caught_up(&self, state: &LoopState, partition: i32) -> bool {
        InputStream::ALL.iter().all(|s| {
            self.stream_caught_up(&state.positions, &state.received, *s, partition) == Some(true)
        })
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
                self.metrics.emit(ConsumerLag {
                    topic,
                    partition: *partition,
                    lag,
                });
            }
        }
    }
}
