//! Replay: the same core over a stream file, with the clock driven by event
//! time. Leads are grouped by the partition the broker would give their key
//! and each group is merged exactly as the live loop merges it, so a replay
//! ends in the same state and the same output ids as a live run of the same
//! events. Outputs go to JSON Lines files, one per output topic, instead of
//! the outbox. The partitions are interleaved by event time and the forecast
//! schedule and the analytics history run on the slowest one's clock, as
//! they do live, so the replay makes the same forecasts and days too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use crate::config::Config;
use crate::core::apply::BatchClock;
use crate::core::apply::Output;
use crate::core::nurture::FireClock;
use crate::events::{InputEvent, Millis};
use crate::kafka::partition_for_key;
use crate::ml::ActiveModel;
use crate::store::{LeadStore, StoreError};

use super::analytics::{store_day, DailyHistory};
use super::commit::{apply_and_commit, outbox_row, prepare, Fence, Sink, Work};
use super::forecasts::{make_slot, Schedule};
use super::merge::{MergeBuffer, Pending};
use super::RunSummary;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("writing outputs: {0}")]
    Io(#[from] std::io::Error),
    #[error("model registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
}

/// Orders a stream as the live loop would: per partition, merged by event time.
pub fn live_order(config: &Config, events: Vec<InputEvent>) -> Vec<(i32, InputEvent)> {
    let partitions = config.kafka.partitions;
    let mut buffers: BTreeMap<i32, MergeBuffer<InputEvent>> = BTreeMap::new();
    let mut offsets: BTreeMap<(i32, usize), i64> = BTreeMap::new();
    for event in events {
        let partition = partition_for_key(event.lead_ext_id().as_bytes(), partitions);
        let stream = event.stream();
        let offset = offsets.entry((partition, stream as usize)).or_insert(0);
        let time = Some(event.occurred_at());
        buffers.entry(partition).or_default().push(
            stream,
            Pending {
                offset: *offset,
                time,
                item: event,
            },
        );
        *offset += 1;
    }
    let mut queues: Vec<std::collections::VecDeque<(i32, InputEvent)>> = buffers
        .into_iter()
        .map(|(partition, mut buffer)| {
            let mut out = Vec::new();
            buffer.drain(|_| true, &mut out);
            out.into_iter().map(|(_, p)| (partition, p.item)).collect()
        })
        .collect();
    // The partitions interleaved by event time (each in its own order), as
    // a live processor reading them all at once moves through them: the
    // forecast schedule's clock is the slowest partition's.
    let mut ordered = Vec::with_capacity(queues.iter().map(|q| q.len()).sum());
    while let Some(next) = queues
        .iter_mut()
        .filter(|q| !q.is_empty())
        .min_by_key(|q| q.front().map(|(p, e)| (e.occurred_at(), *p)))
    {
        ordered.extend(next.pop_front());
    }
    ordered
}

/// Applies `events` to the store in live order and returns the outputs.
pub async fn replay<S: LeadStore>(
    config: &Config,
    store: &S,
    events: Vec<InputEvent>,
) -> Result<(RunSummary, Vec<Output>), ReplayError> {
    let ordered = live_order(config, events);
    // Each partition's clock ends at its latest event, as a live processor
    // on event time leaves it.
    let mut stream_time: BTreeMap<i32, crate::events::Millis> = BTreeMap::new();
    for (partition, event) in ordered.iter().filter(|(_, e)| e.moves_stream_time()) {
        let t = stream_time.entry(*partition).or_insert(event.occurred_at());
        *t = (*t).max(event.occurred_at());
    }
    // A replay scores with the model active when it starts, throughout.
    let model = crate::registry::load_active(store).await?;
    let (mut summary, mut outputs) = apply_in_batches(
        store,
        config,
        model.as_ref(),
        &ordered,
        BatchClock::EventTime,
    )
    .await?;
    for (partition, until) in stream_time {
        let (fired, messages) = sweep_timers(store, config, partition, until).await?;
        summary.batches += fired;
        summary.outputs += messages.len() as u64;
        outputs.extend(messages.into_iter().map(|(_, o)| o));
    }
    Ok((summary, outputs))
}

/// Fires every nurturing timer of `partition` due by `until`, each at its
/// due time, in transactions of `nurture.timers_per_tick` leads. Returns the
/// number of transactions and the messages.
pub async fn sweep_timers<S: LeadStore>(
    store: &S,
    config: &Config,
    partition: i32,
    until: crate::events::Millis,
) -> Result<(u64, Vec<(i32, Output)>), StoreError> {
    let mut outputs = Vec::new();
    let mut rounds = 0;
    if !config.nurture.enabled {
        return Ok((0, outputs));
    }
    loop {
        let work = Work::Timers {
            partitions: &[partition],
            clock: FireClock::Sweep(until),
            limit: config.nurture.timers_per_tick,
        };
        let fired = prepare(store, config, work).await?;
        if fired.leads.is_empty() {
            break;
        }
        // A sweep moves every timer it fires past `until` (or ends it); one
        // still due after firing would be fetched forever.
        if let Some(stuck) = fired
            .leads
            .iter()
            .find(|l| l.state.nurture.timer.is_some_and(|t| t <= until))
        {
            tracing::error!(lead = %stuck.state.lead_ext_id, timer = ?stuck.state.nurture.timer, "a nurturing timer does not advance; stopping the sweep");
            break;
        }
        fired
            .commit(store, config, Fence::None, Sink::Caller)
            .await?;
        rounds += 1;
        outputs.extend(fired.outputs);
    }
    Ok((rounds, outputs))
}

/// Applies already ordered events in transactions of `processor.batch_size`,
/// with event time as the clock (`clock` is `EventTime` or `Import`); no
/// offsets are written (the input is not a topic) and the outputs are
/// returned, not put in the outbox. On event time the forecast schedule
/// and the analytics history run between transactions on the live
/// processor's clock: the latest event time of the partition furthest
/// behind.
pub async fn apply_in_batches<S: LeadStore>(
    store: &S,
    config: &Config,
    model: Option<&ActiveModel>,
    ordered: &[(i32, InputEvent)],
    clock: BatchClock,
) -> Result<(RunSummary, Vec<Output>), StoreError> {
    let mut summary = RunSummary::default();
    let mut outputs = Vec::new();
    let on_event_time = clock == BatchClock::EventTime;
    let schedule = Schedule::new(config).filter(|_| on_event_time);
    let history = DailyHistory::new(config).filter(|_| on_event_time);
    let partitions: BTreeSet<i32> = ordered.iter().map(|(p, _)| *p).collect();
    let mut stream_time: BTreeMap<i32, Millis> = BTreeMap::new();
    let mut next_slot = None;
    let mut next_day = None;
    for chunk in ordered.chunks(config.processor.batch_size.max(1)) {
        let work = Work::Events {
            events: chunk,
            model,
            clock,
        };
        let applied = apply_and_commit(store, config, work, Fence::None, Sink::Caller).await?;
        summary.applied += applied.applied;
        summary.duplicates += applied.duplicates;
        summary.dropped_after_erasure += applied.dropped_after_erasure;
        summary.outputs += applied.outputs.len() as u64;
        summary.consumed += chunk.len() as u64;
        summary.batches += 1;
        outputs.extend(applied.outputs.into_iter().map(|(_, o)| o));
        if schedule.is_none() && history.is_none() {
            continue;
        }
        for (partition, event) in chunk.iter().filter(|(_, e)| e.moves_stream_time()) {
            let t = stream_time.entry(*partition).or_insert(event.occurred_at());
            *t = (*t).max(event.occurred_at());
        }
        if stream_time.len() < partitions.len() {
            continue;
        }
        let slowest = *stream_time.values().min().expect("some partition");
        if let Some(schedule) = &schedule {
            if next_slot.is_none() {
                next_slot = schedule.next_slot(store).await?;
            }
            if let Some(next) = next_slot {
                let (due, _) = schedule.due(next, slowest);
                for slot in due {
                    let made = make_slot(store, config, slot, Fence::None, Sink::Caller).await?;
                    summary.outputs += made.outputs.len() as u64;
                    outputs.extend(made.outputs.into_iter().map(|(_, o)| o));
                    next_slot = Some(slot + schedule.slots.every());
                }
            }
        }
        if let Some(history) = &history {
            if next_day.is_none() {
                next_day = history.next_day(store).await?;
            }
            if let Some(next) = next_day {
                for day in history.due(next, slowest) {
                    store_day(store, config, day, Fence::None).await?;
                    next_day = Some(day + 1);
                }
            }
        }
    }
    Ok((summary, outputs))
}

/// Writes outputs as `<dir>/<topic>.jsonl`, each line the output's outbox payload.
pub fn write_outputs(
    config: &Config,
    dir: &Path,
    outputs: &[Output],
) -> Result<Vec<String>, ReplayError> {
    std::fs::create_dir_all(dir)?;
    let mut files: BTreeMap<String, std::io::BufWriter<std::fs::File>> = BTreeMap::new();
    for output in outputs {
        let row = outbox_row(config, 0, output, 0);
        let file = match files.get_mut(&row.topic) {
            Some(f) => f,
            None => {
                let f = std::fs::File::create(dir.join(format!("{}.jsonl", row.topic)))?;
                files
                    .entry(row.topic.clone())
                    .or_insert(std::io::BufWriter::new(f))
            }
        };
        writeln!(file, "{}", row.payload)?;
    }
    let mut written = Vec::new();
    for (topic, mut file) in files {
        file.flush()?;
        written.push(topic);
    }
    Ok(written)
}
