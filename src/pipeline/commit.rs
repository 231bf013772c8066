//! The one commit path. Batches of events, rounds of due timers, forecast
//! slots, days of the analytics history, replays and imports all go through
//! [`apply_and_commit`]: load the leads, apply the work in the pure core (or
//! make the forecasts, or the day's rows), then write the new states, the
//! forecasts, the analytics rows, the outputs (to the outbox, or back to the
//! caller) and the fence in one transaction.
//!
//! The fence is what makes a zombie harmless: a batch moves its partitions'
//! offsets by compare-and-set, a timer round, a forecast slot or a day of
//! the analytics history checks that
//! the partitions it writes for are still where this instance left them,
//! and each fired lead's stored timer must still be the one that fired.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::analytics::history::day_rows;
use crate::config::Config;
use crate::core::apply::{self, ApplyContext, BatchClock, ConversionModel, Output};
use crate::core::nurture::FireClock;
use crate::core::state::LeadState;
use crate::events::{InputEvent, Millis, MILLIS_PER_DAY};
use crate::forecast::scheduled::{forecasts_as_of, ForecastPlan, MadeForecast, NotMade};
use crate::ml::ActiveModel;
use crate::store::{
    AnalyticsRow, BatchWrite, ErasureWrite, ForecastRecord, LeadStore, LeadWrite, NewOutboxRow,
    OffsetAdvance, StoreError,
};

use super::assignment::TopicPartition;
use super::timers::{fire_round, FiredLead};

/// The input partition whose owner makes the scheduled forecasts (their
/// outbox rows carry it, so exactly one relay publishes them) and the days
/// of the analytics history.
pub const FORECAST_PARTITION: i32 = 0;

/// A lead a batch changed.
pub struct TouchedLead {
    pub partition: i32,
    pub state: LeadState,
    /// The timer the store held when a timer of this lead fired in the batch.
    pub stored_timer: Option<Millis>,
    pub experiments_changed: bool,
    /// What the store held of its transitions: its creation, and how many
    /// stage changes (the rest are new rows).
    pub creation_stored: bool,
    pub stored_changes: usize,
    /// The erasure event, when this batch erased the lead.
    pub erased_by: Option<String>,
    /// The lead had been erased and this batch started it anew.
    pub revived: bool,
}

impl TouchedLead {
    pub fn write(&self) -> LeadWrite<'_> {
        LeadWrite {
            state: &self.state,
            partition: self.partition,
            expect_timer: self.stored_timer,
            experiments_changed: self.experiments_changed,
            creation_stored: self.creation_stored,
            stored_changes: self.stored_changes,
        }
    }
}

impl From<FiredLead> for TouchedLead {
    fn from(f: FiredLead) -> Self {
        // A timer changes no stage: every transition is stored already.
        TouchedLead {
            partition: f.partition,
            experiments_changed: f.experiments_changed,
            stored_timer: f.stored_timer,
            creation_stored: f.state.created_at.is_some(),
            stored_changes: f.state.stage_history.len(),
            erased_by: None,
            revived: false,
            state: f.state,
        }
    }
}

/// What one transaction applies.
pub enum Work<'a> {
    /// Events in order, scored by `model`.
    Events {
        events: &'a [(i32, InputEvent)],
        model: Option<&'a ActiveModel>,
        clock: BatchClock,
    },
    /// The due timers of at most `limit` leads of `partitions`.
    Timers {
        partitions: &'a [i32],
        clock: FireClock,
        limit: usize,
    },
    /// Every forecast kind as of `at`, over all leads, for the schedule.
    Forecasts { at: Millis },
    /// The analytics history's rows of one UTC day (days since 1970-01-01).
    Analytics { day: i64 },
}

/// What the transaction checks to be this instance's to write.
pub enum Fence<'a> {
    /// Nothing: a replay or an import has the store to itself.
    None,
    /// Moves these partitions' offsets, each by compare-and-set.
    Advance(&'a [OffsetAdvance]),
    /// The partitions of the leads written must still stand at these offsets.
    Hold(&'a BTreeMap<TopicPartition, Option<i64>>),
}

/// Where a transaction's outputs go.
#[derive(Debug, Clone, Copy)]
pub enum Sink {
    /// Into the outbox, in the transaction, stamped `at`; the relay publishes them.
    Outbox { at: Millis },
    /// Back to the caller only (a replay writes them to files).
    Caller,
}

/// Work applied and ready to commit.
#[derive(Default)]
pub struct Prepared {
    pub leads: Vec<TouchedLead>,
    pub outputs: Vec<(i32, Output)>,
    pub applied: u64,
    pub duplicates: u64,
    /// Events dropped because their lead had been erased.
    pub dropped_after_erasure: u64,
    /// Forecasts to store with their outputs.
    pub forecasts: Vec<ForecastRecord>,
    /// Forecast kinds the data did not allow.
    pub not_made: Vec<NotMade>,
    /// Rows of the analytics history to store.
    pub analytics: Vec<AnalyticsRow>,
}

/// Loads the leads `work` needs and applies it in the core.
pub async fn prepare<S: LeadStore>(
    store: &S,
    config: &Config,
    work: Work<'_>,
) -> Result<Prepared, StoreError> {
    match work {
        Work::Events {
            events,
            model,
            clock,
        } => load_and_apply(store, events, config, model, clock).await,
        Work::Timers {
            partitions,
            clock,
            limit,
        } => {
            let (leads, outputs) = fire_round(store, config, partitions, clock, limit).await?;
            Ok(Prepared {
                leads: leads.into_iter().map(TouchedLead::from).collect(),
                outputs,
                ..Prepared::default()
            })
        }
        Work::Forecasts { at } => {
            let leads = store.all_lead_states().await?;
            let f = &config.forecast;
            let plan = ForecastPlan {
                horizon_days: f.horizon_days,
                lead_generation_days: f.lead_generation_days,
                levels: &f.levels,
            };
            let (made, not_made) = forecasts_as_of(&leads, at, &plan);
            Ok(Prepared::forecasts(&made, true, not_made))
        }
        Work::Analytics { day } => {
            let (start, end) = (day * MILLIS_PER_DAY, (day + 1) * MILLIS_PER_DAY);
            let of_day = store.transitions_between(start, end).await?;
            let open = store.open_by_stage(end).await?;
            Ok(Prepared {
                analytics: day_rows(day, &of_day, &open),
                ..Prepared::default()
            })
        }
    }
}

impl Prepared {
    /// Forecasts to commit, published through the outbox of partition 0
    /// (its owner makes the schedule's forecasts and relays them).
    pub fn forecasts(made: &[MadeForecast], scheduled: bool, not_made: Vec<NotMade>) -> Prepared {
        Prepared {
            outputs: made
                .iter()
                .map(|m| (FORECAST_PARTITION, Output::Forecast(m.event.clone())))
                .collect(),
            forecasts: made
                .iter()
                .map(|m| ForecastRecord::new(m, scheduled))
                .collect(),
            not_made,
            ..Prepared::default()
        }
    }

    /// Writes the states, the outputs and the fence in one transaction
    /// (nothing at all when there is nothing to write).
    pub async fn commit<S: LeadStore>(
        &self,
        store: &S,
        config: &Config,
        fence: Fence<'_>,
        sink: Sink,
    ) -> Result<(), StoreError> {
        let offsets: Vec<OffsetAdvance> = match fence {
            Fence::None => Vec::new(),
            Fence::Advance(advances) => advances.to_vec(),
            Fence::Hold(positions) => {
                let written: BTreeSet<i32> = self
                    .leads
                    .iter()
                    .map(|l| l.partition)
                    .chain(self.outputs.iter().map(|(p, _)| *p))
                    .chain((!self.analytics.is_empty()).then_some(FORECAST_PARTITION))
                    .collect();
                // Advancing nothing, these only check that the partitions are
                // still this instance's: a zombie must not fire timers.
                positions
                    .iter()
                    .filter(|((_, p), _)| written.contains(p))
                    .filter_map(|((topic, partition), next)| {
                        next.map(|n| OffsetAdvance {
                            topic: topic.clone(),
                            partition: *partition,
                            from: Some(n),
                            to: n,
                        })
                    })
                    .collect()
            }
        };
        let outbox: Vec<NewOutboxRow> = match sink {
            Sink::Outbox { at } => self
                .outputs
                .iter()
                .map(|(partition, output)| outbox_row(config, *partition, output, at))
                .collect(),
            Sink::Caller => Vec::new(),
        };
        if self.leads.is_empty()
            && offsets.is_empty()
            && outbox.is_empty()
            && self.forecasts.is_empty()
            && self.analytics.is_empty()
        {
            return Ok(());
        }
        store
            .commit_batch(&BatchWrite {
                consumer_group: &config.kafka.group_id,
                leads: self.leads.iter().map(TouchedLead::write).collect(),
                offsets,
                outbox,
                forecasts: self.forecasts.clone(),
                analytics: self.analytics.clone(),
                erasures: self
                    .leads
                    .iter()
                    .filter_map(|l| {
                        Some(ErasureWrite {
                            lead_ext_id: &l.state.lead_ext_id,
                            at: l.state.erased_at?,
                            event_id: l.erased_by.as_deref()?,
                            outbox_topics: [&config.topics.scores, &config.topics.outbound],
                        })
                    })
                    .collect(),
                revived: self
                    .leads
                    .iter()
                    .filter(|l| l.revived)
                    .map(|l| l.state.lead_ext_id.as_str())
                    .collect(),
            })
            .await
    }
}

/// [`prepare`] then [`Prepared::commit`]: what every path but the live
/// batch (which keeps a failed attempt's result, see `batch.rs`) calls.
pub async fn apply_and_commit<S: LeadStore>(
    store: &S,
    config: &Config,
    work: Work<'_>,
    fence: Fence<'_>,
    sink: Sink,
) -> Result<Prepared, StoreError> {
    let prepared = prepare(store, config, work).await?;
    prepared.commit(store, config, fence, sink).await?;
    Ok(prepared)
}

/// Loads the leads of a batch, applies the batch in the core and says
/// which leads changed, with what the store held for them.
async fn load_and_apply<S: LeadStore>(
    store: &S,
    events: &[(i32, InputEvent)],
    config: &Config,
    model: Option<&ActiveModel>,
    clock: BatchClock,
) -> Result<Prepared, StoreError> {
    let mut ids: Vec<&str> = events.iter().map(|(_, e)| e.lead_ext_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states: HashMap<String, LeadState> = store.load_leads(&ids).await?;
    let stored: HashMap<String, StoredLead> = states
        .iter()
        .map(|(id, s)| {
            let stored = StoredLead {
                timer: s.nurture.timer,
                digest: experiments_digest(s),
                creation: s.created_at.is_some(),
                changes: s.stage_history.len(),
                erased: s.erased_at.is_some(),
            };
            (id.clone(), stored)
        })
        .collect();
    let ctx = ApplyContext {
        score: config.scoring.policy(),
        dedup_window: config.processor.dedup_window,
        model: model.map(|m| m as &dyn ConversionModel),
        nurture: config.nurture.enabled.then_some(&config.nurture),
        forecast_slots: config.forecast.enabled_slots(),
        recreate_after_erasure: config.gdpr.recreate_after_erasure,
    };
    let outcome = apply::apply_batch(&mut states, events, &ctx, clock);
    let leads = outcome
        .touched
        .into_iter()
        .filter_map(|(id, (partition, fired))| {
            let state = states.remove(&id)?;
            let before = stored.get(&id).copied().unwrap_or_default();
            Some(TouchedLead {
                partition,
                // Only a timer the store already held can be raced for.
                stored_timer: if fired { before.timer } else { None },
                experiments_changed: experiments_digest(&state) != before.digest,
                creation_stored: before.creation,
                stored_changes: before.changes,
                // Events after the erasure were dropped, not remembered: the
                // newest id the tombstone remembers is the erasure's.
                erased_by: (state.erased_at.is_some() && !before.erased)
                    .then(|| state.recent_event_ids.back().cloned().unwrap_or_default()),
                revived: before.erased && state.erased_at.is_none(),
                state,
            })
        })
        .collect();
    Ok(Prepared {
        leads,
        outputs: outcome.outputs,
        applied: outcome.applied,
        duplicates: outcome.duplicates,
        dropped_after_erasure: outcome.dropped_after_erasure,
        ..Prepared::default()
    })
}

/// What the store held of a lead before the batch.
#[derive(Debug, Clone, Copy, Default)]
struct StoredLead {
    timer: Option<Millis>,
    digest: ExperimentsDigest,
    creation: bool,
    changes: usize,
    erased: bool,
}

pub(super) type ExperimentsDigest = (usize, usize, usize);

/// What can change in a lead's experiment memberships: a membership is
/// never removed and its reply and conversion are set once, so equal counts
/// mean nothing changed.
pub(super) fn experiments_digest(state: &LeadState) -> ExperimentsDigest {
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
        Output::Forecast(f) => (&config.topics.forecasts, &f.kind.to_string()),
        Output::Tombstone { lead_ext_id, .. } => (&config.topics.scores, lead_ext_id),
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
