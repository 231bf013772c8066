//! The one write of the commit path: leads, their stage transitions (with
//! their places in the funnel and the funnel's day counts), their
//! experiment memberships, offsets, forecasts, analytics days, outbox
//! rows and erasures in one transaction.

use std::collections::HashMap;

use super::analytics::INSERT_ANALYTICS;
use super::transitions::{
    select_funnel_places, ADD_TO_FUNNEL_DAY, FUNNEL_PLACES_PER_READ, INSERT_TRANSITION,
    UPSERT_FUNNEL,
};
use super::*;
use crate::analytics::funnel::{bucket_changes, FunnelPlace};

/// A lead's new state and where it belongs.
#[derive(Debug, Clone, Copy)]
pub struct LeadWrite<'a> {
    pub state: &'a LeadState,
    /// The input partition that owns the lead (its timers fire there).
    pub partition: i32,
    /// Set when a timer the store held fired: the write succeeds only if the
    /// stored timer is still this one, so two instances never both fire it.
    pub expect_timer: Option<i64>,
    /// The lead's experiment memberships changed and must be rewritten.
    pub experiments_changed: bool,
    /// Whether the store holds the lead's creation row, and how many of its
    /// stage changes; the rest are written to `lead_transitions`.
    pub creation_stored: bool,
    pub stored_changes: usize,
}

/// What one processed batch changes, written in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite<'a> {
    pub consumer_group: &'a str,
    pub leads: Vec<LeadWrite<'a>>,
    /// Offset moves; one with `from == to` only checks that this instance
    /// still owns the partition (timer commits advance no offset).
    pub offsets: Vec<OffsetAdvance>,
    pub outbox: Vec<NewOutboxRow>,
    /// Forecasts made. One already stored is not stored again, and its
    /// outbox row (same id) is dropped: it was published when it was new.
    pub forecasts: Vec<ForecastRecord>,
    /// Days of the analytics history; a row already stored stays as it was.
    pub analytics: Vec<AnalyticsRow>,
    /// Leads erased by this batch (their tombstones are among `leads`).
    pub erasures: Vec<ErasureWrite<'a>>,
    /// Erased leads this batch started anew: their shredded key goes, so
    /// that their next message gets a new one.
    pub revived: Vec<&'a str>,
}

/// What an erasure removes besides the lead's state: its outputs not yet
/// published, the personal traces in the delivery ledger, its data key
/// (crypto-shredding). Its audit line is written with it.
#[derive(Debug, Clone, Copy)]
pub struct ErasureWrite<'a> {
    pub lead_ext_id: &'a str,
    pub at: i64,
    pub event_id: &'a str,
    /// The topics whose outbox rows for the lead are dropped (scores and
    /// outbound messages; a forecast is not the lead's). The tombstone
    /// itself is among this batch's outbox rows, written after the drop.
    pub outbox_topics: [&'a str; 2],
}

impl<'a> LeadWrite<'a> {
    pub fn new(state: &'a LeadState, partition: i32) -> Self {
        LeadWrite {
            state,
            partition,
            expect_timer: None,
            experiments_changed: !state.nurture.experiments.is_empty(),
            creation_stored: false,
            stored_changes: 0,
        }
    }
}

const UPSERT_LEAD: &str = "INSERT INTO leads
    (lead_ext_id, state, email, source, owner, stage, stage_entered_at, segment, final_score,
     created_at, updated_at, partition_id, next_timer_at, erased_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    ON CONFLICT (lead_ext_id) DO UPDATE SET
        state = excluded.state, email = excluded.email, source = excluded.source,
        owner = excluded.owner, stage = excluded.stage, stage_entered_at = excluded.stage_entered_at,
        segment = excluded.segment, final_score = excluded.final_score,
        created_at = excluded.created_at, updated_at = excluded.updated_at,
        partition_id = excluded.partition_id, next_timer_at = excluded.next_timer_at,
        erased_at = excluded.erased_at";

/// The write of a lead whose timer fired: only over the timer that was read.
const UPDATE_FIRED_LEAD: &str = "UPDATE leads SET
        state = $2, email = $3, source = $4, owner = $5, stage = $6, stage_entered_at = $7,
        segment = $8, final_score = $9, created_at = $10, updated_at = $11,
        partition_id = $12, next_timer_at = $13, erased_at = $14
    WHERE lead_ext_id = $1 AND next_timer_at = $15";

/// Memberships are never removed, so an upsert by primary key keeps the
/// table equal to the lead's state without touching other rows.
const UPSERT_MEMBERSHIP: &str = "INSERT INTO experiment_members
    (experiment, lead_ext_id, variant, enrolled_at, replied_at, converted_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (experiment, lead_ext_id) DO UPDATE SET
        variant = excluded.variant, enrolled_at = excluded.enrolled_at,
        replied_at = excluded.replied_at, converted_at = excluded.converted_at";

const INSERT_OFFSET: &str =
    "INSERT INTO partition_offsets (consumer_group, topic, partition_id, next_offset)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (consumer_group, topic, partition_id) DO NOTHING";

const ADVANCE_OFFSET: &str = "UPDATE partition_offsets SET next_offset = $4
    WHERE consumer_group = $1 AND topic = $2 AND partition_id = $3 AND next_offset = $5";

const INSERT_FORECAST: &str = "INSERT INTO lead_forecasts (forecast_id, kind, generated_at,
        horizon_days, confidence, model_version, leads_counted, event, detail, scheduled)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (forecast_id) DO NOTHING";

const DROP_LEAD_OUTBOX: &str = "DELETE FROM outbox WHERE message_key = $1 AND topic IN ($2, $3)";

/// The ledger keeps its rows (a message id is never sent twice) but not the
/// recipient's hash or the provider's text, which may quote the address.
const FORGET_DELIVERIES: &str =
    "UPDATE deliveries SET recipient_hash = 'erased', reason = NULL WHERE lead_ext_id = $1";

const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (output_id, topic, message_key, payload, source_partition, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (output_id) DO NOTHING";

store_concern! {
    /// The one write of the commit path: leads, their stage transitions, their experiment memberships, offsets, forecasts and outbox rows in one transaction.
    pub trait Batches {
        /// Writes the leads, offsets and outbox rows of a batch atomically: all or
        /// nothing. Fails with [`StoreError::Fenced`] if an offset moved meanwhile.
        async fn commit_batch(&self, batch: &BatchWrite<'_>) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            // Rolled back here on any error, before returning: left to the
            // drop, the rollback waits for the connection's return to the
            // pool, and a retry on another connection finds SQLite locked.
            let written: Result<(), StoreError> = async {
                let transitions: Vec<Vec<TransitionRow>> = batch
                    .leads
                    .iter()
                    .map(|w| new_transitions(w.state, w.creation_stored, w.stored_changes))
                    .collect();
                let mut moved: Vec<&str> = batch
                    .leads
                    .iter()
                    .zip(&transitions)
                    .filter(|(_, rows)| !rows.is_empty())
                    .map(|(w, _)| w.state.lead_ext_id.as_str())
                    .collect();
                moved.sort_unstable();
                moved.dedup();
                // The stored places, read once per batch: the day counts move
                // from them, so they stay right whatever wrote the rows before.
                let mut stored: HashMap<String, FunnelPlace> = HashMap::new();
                for leads in moved.chunks(FUNNEL_PLACES_PER_READ) {
                    let sql = select_funnel_places(leads.len());
                    let mut query = sqlx::query_as::<_, (String, Option<i64>, i32, bool)>(&sql);
                    for lead in leads {
                        query = query.bind(*lead);
                    }
                    for (lead, created_at, furthest, lost) in query.fetch_all(&mut *tx).await? {
                        stored.insert(lead, FunnelPlace { created_at, furthest, lost });
                    }
                }
                let mut places = stored.clone();
                for (write, transitions) in batch.leads.iter().zip(&transitions) {
                    let lead = write.state;
                    let query = sqlx::query(match write.expect_timer {
                        None => UPSERT_LEAD,
                        Some(_) => UPDATE_FIRED_LEAD,
                    })
                    .bind(&lead.lead_ext_id)
                    .bind(encode_state(lead))
                    .bind(&lead.email)
                    .bind(&lead.source)
                    .bind(&lead.owner)
                    .bind(lead.stage.as_str())
                    .bind(lead.stage_entered_at)
                    .bind(lead.score.as_ref().map(|s| s.segment.as_str()))
                    .bind(lead.score.as_ref().map(|s| s.final_score))
                    .bind(lead.created_at)
                    .bind(lead.updated_at)
                    .bind(write.partition)
                    .bind(lead.nurture.timer)
                    .bind(lead.erased_at);
                    let written = match write.expect_timer {
                        None => query.execute(&mut *tx).await?,
                        Some(fired) => query.bind(fired).execute(&mut *tx).await?,
                    };
                    if written.rows_affected() != 1 {
                        return Err(StoreError::TimerTaken {
                            lead: lead.lead_ext_id.clone(),
                        });
                    }
                    if !transitions.is_empty() {
                        let place = places
                            .entry(lead.lead_ext_id.clone())
                            .or_insert(FunnelPlace::UNSEEN);
                        *place = place.merge(FunnelPlace::of_rows(transitions));
                        sqlx::query(UPSERT_FUNNEL)
                            .bind(&lead.lead_ext_id)
                            .bind(place.created_at)
                            .bind(place.furthest)
                            .bind(place.lost)
                            .execute(&mut *tx)
                            .await?;
                    }
                    for t in transitions {
                        sqlx::query(INSERT_TRANSITION)
                            .bind(&t.lead_ext_id)
                            .bind(t.seq)
                            .bind(&t.from_stage)
                            .bind(&t.to_stage)
                            .bind(t.at)
                            .bind(&t.owner)
                            .bind(&t.source)
                            .bind(t.value)
                            .bind(&t.event_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if write.experiments_changed {
                        for (experiment, m) in &lead.nurture.experiments {
                            sqlx::query(UPSERT_MEMBERSHIP)
                                .bind(experiment)
                                .bind(&lead.lead_ext_id)
                                .bind(&m.variant)
                                .bind(m.enrolled_at)
                                .bind(m.replied_at)
                                .bind(m.converted_at)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                for offset in &batch.offsets {
                    let query = sqlx::query(match offset.from {
                        None => INSERT_OFFSET,
                        Some(_) => ADVANCE_OFFSET,
                    })
                    .bind(batch.consumer_group)
                    .bind(&offset.topic)
                    .bind(offset.partition)
                    .bind(offset.to);
                    let query = match offset.from {
                        None => query,
                        Some(from) => query.bind(from),
                    };
                    let written = query.execute(&mut *tx).await?.rows_affected();
                    if written != 1 {
                        return Err(StoreError::Fenced {
                            topic: offset.topic.clone(),
                            partition: offset.partition,
                            expected: offset.from,
                        });
                    }
                }
                for erasure in &batch.erasures {
                    sqlx::query(DROP_LEAD_OUTBOX)
                        .bind(erasure.lead_ext_id)
                        .bind(erasure.outbox_topics[0])
                        .bind(erasure.outbox_topics[1])
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(FORGET_DELIVERIES)
                        .bind(erasure.lead_ext_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(super::lead_keys::SHRED_LEAD_KEY)
                        .bind(erasure.lead_ext_id)
                        .bind(erasure.at)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(super::gdpr::INSERT_AUDIT)
                        .bind(super::gdpr::ERASED)
                        .bind(erasure.lead_ext_id)
                        .bind(erasure.at)
                        .bind("processor")
                        .bind(None::<String>)
                        .bind(erasure.event_id)
                        .execute(&mut *tx)
                        .await?;
                }
                for lead in &batch.revived {
                    sqlx::query(super::lead_keys::FORGET_SHREDDED_KEY)
                        .bind(*lead)
                        .execute(&mut *tx)
                        .await?;
                }
                let mut made_before = std::collections::HashSet::new();
                for record in &batch.forecasts {
                    let written = sqlx::query(INSERT_FORECAST)
                        .bind(&record.forecast_id)
                        .bind(&record.kind)
                        .bind(record.generated_at)
                        .bind(record.horizon_days)
                        .bind(record.confidence)
                        .bind(&record.model_version)
                        .bind(record.leads_counted)
                        .bind(&record.event)
                        .bind(&record.detail)
                        .bind(record.scheduled)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if written == 0 {
                        made_before.insert(record.forecast_id.as_str());
                    }
                }
                for row in batch.outbox.iter().filter(|r| !made_before.contains(r.output_id.as_str())) {
                    sqlx::query(INSERT_OUTBOX)
                        .bind(&row.output_id)
                        .bind(&row.topic)
                        .bind(&row.key)
                        .bind(&row.payload)
                        .bind(row.source_partition)
                        .bind(row.created_at)
                        .execute(&mut *tx)
                        .await?;
                }
                // Last, in bucket order: the only rows batches of different
                // partitions share, locked briefly and in one order.
                for ((day, furthest, lost), change) in bucket_changes(&stored, &places) {
                    sqlx::query(ADD_TO_FUNNEL_DAY)
                        .bind(day)
                        .bind(furthest)
                        .bind(lost)
                        .bind(change)
                        .execute(&mut *tx)
                        .await?;
                }
                for row in &batch.analytics {
                    sqlx::query(INSERT_ANALYTICS)
                        .bind(row.day)
                        .bind(&row.metric)
                        .bind(&row.dimension)
                        .bind(&row.dimension_value)
                        .bind(row.value)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(())
            }
            .await;
            match written {
                Ok(()) => Ok(tx.commit().await?),
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
    }
}
