//! The live loop's transactions: a batch of merged events (dead letters
//! first, then one fenced commit of states, outbox and offsets), and the
//! rounds of due nurturing timers between batches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::config::ClockMode;
use crate::core::apply::BatchClock;
use crate::core::nurture::FireClock;
use crate::events::{InputEvent, InputStream, Millis};
use crate::metrics::internal_events::{BatchCommitted, TimersFired};
use crate::store::{with_store_retry, LeadStore, OffsetAdvance, StoreError};

use super::assignment::TopicPartition;
use super::commit::{apply_and_commit, prepare, Fence, Prepared, Sink, Work};
use super::consume::{Decoded, LoopState, Pipeline};
use super::merge::Pending;
use super::{PipelineError, RunSummary};

impl<S: LeadStore + 'static> Pipeline<S> {
    pub(super) async fn process(
        &self,
        ready: Vec<(i32, InputStream, Pending<Decoded>)>,
        state: &mut LoopState,
        summary: &mut RunSummary,
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
                    self.dead_letters.accepted();
                    events.push((partition, event));
                }
                Decoded::Rejected(raw, rejection) => {
                    let verdict = self.dead_letters.reject(&raw, &rejection).await;
                    summary.dead_lettered += 1;
                    verdict?;
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
        // A commit whose acknowledgement was lost (the connection dropped
        // after the database committed) looks like a fenced advance on the
        // retry. If the stored offsets are exactly where this batch put them,
        // it is this batch's own commit: keep the first attempt's result.
        let failed_attempt: Mutex<Option<Prepared>> = Mutex::new(None);
        let prepared = with_store_retry("commit batch", &self.metrics, || async {
            // Re-applied from the stored state on every attempt, so a retry
            // after a failed transaction starts from what was committed.
            let work = Work::Events {
                events: &events,
                model: model.as_deref(),
                clock: batch_clock,
            };
            let prepared = prepare(self.store.as_ref(), &self.config, work).await?;
            let committed = prepared
                .commit(
                    self.store.as_ref(),
                    &self.config,
                    Fence::Advance(&offsets),
                    Sink::Outbox { at: now },
                )
                .await;
            match committed {
                Ok(()) => Ok(prepared),
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
                        committed.map(|()| prepared)
                    }
                }
                Err(e) => {
                    failed_attempt
                        .lock()
                        .expect("attempt lock")
                        .get_or_insert(prepared);
                    Err(e)
                }
            }
        })
        .await?;
        let outputs = prepared.outputs.len();
        self.metrics.emit(BatchCommitted {
            events: events.len(),
            applied: prepared.applied,
            duplicates: prepared.duplicates,
            dropped_after_erasure: prepared.dropped_after_erasure,
            erased: prepared
                .leads
                .iter()
                .filter(|l| l.erased_by.is_some())
                .count(),
            outputs,
            duration: started.elapsed(),
        });
        summary.applied += prepared.applied;
        summary.duplicates += prepared.duplicates;
        summary.dropped_after_erasure += prepared.dropped_after_erasure;
        summary.outputs += outputs as u64;
        summary.batches += 1;
        for (partition, event) in events.iter().filter(|(_, e)| e.moves_stream_time()) {
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
    pub(super) async fn fire_timers(
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
                    if let Some(t) = self.stream_time(state, partition).await? {
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

    /// An owned partition's event-time clock: its latest event time applied,
    /// read from the store after an assignment; `None` while it has none.
    pub(super) async fn stream_time(
        &self,
        state: &mut LoopState,
        partition: i32,
    ) -> Result<Option<Millis>, PipelineError> {
        if let Some(t) = state.stream_time.get(&partition) {
            return Ok(Some(*t));
        }
        let stored = with_store_retry("read stream time", &self.metrics, || {
            self.store.partition_stream_time(partition)
        })
        .await?;
        if let Some(t) = stored {
            state.stream_time.insert(partition, t);
        }
        Ok(stored)
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
                let work = Work::Timers {
                    partitions,
                    clock,
                    limit,
                };
                let fired = apply_and_commit(
                    self.store.as_ref(),
                    &self.config,
                    work,
                    Fence::Hold(&state.positions),
                    Sink::Outbox { at: now },
                )
                .await?;
                Ok((fired.leads.len(), fired.outputs.len()))
            })
            .await?;
            total += leads;
            summary.outputs += outputs as u64;
            self.metrics.emit(TimersFired { leads, outputs });
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
}
