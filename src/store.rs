//! The lead state store: one trait, two implementations on sqlx.
//!
//! PostgreSQL is the production store, SQLite the embedded default. Both run
//! the same SQL (generated from one macro body below, so they cannot drift);
//! only the migrations differ, by column types. `tests/store.rs` runs one
//! generic suite against both.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::core::nurture::experiments::VariantCounts;
use crate::core::state::LeadState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored state of lead {lead} does not decode: {reason}")]
    Corrupt { lead: String, reason: String },
    #[error("database url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("no model version {0} in the registry")]
    ModelNotFound(i64),
    #[error("partition {topic}/{partition} was advanced by another instance (expected next offset {expected:?}); this instance no longer owns it")]
    Fenced {
        topic: String,
        partition: i32,
        expected: Option<i64>,
    },
    #[error("the nurturing timer of lead {lead} was fired by another instance; this instance no longer owns its partition")]
    TimerTaken { lead: String },
}

impl StoreError {
    /// Worth retrying: the database is down, restarting, overloaded or busy.
    /// Anything else is a defect and must stop the processor.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    // Each backend's codes are read by its own rule: a
                    // PostgreSQL SQLSTATE such as 22021 (a NUL in text) is
                    // numeric too, and 22021 & 0xff would pass for BUSY.
                    if db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some()
                    {
                        // Connection exceptions (08), serialization failure
                        // and deadlock (40), insufficient resources (53),
                        // operator intervention such as a restart (57).
                        ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c))
                    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                        // BUSY (5) and LOCKED (6), with extended codes.
                        matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5) | Ok(6))
                    } else {
                        false
                    }
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// The next offset to consume for one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// Moves one partition's stored offset from `from` (`None`: no row yet) to
/// `to`. The write succeeds only if the row still holds `from`: an instance
/// that lost the partition without noticing cannot overwrite its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub topic: String,
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
}

/// An output event to publish, as written by the processor.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutboxRow {
    pub output_id: String,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub source_partition: i32,
    pub created_at: i64,
}

/// An outbox row read back by the relay.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxEntry {
    pub seq: i64,
    pub output_id: String,
    pub topic: String,
    #[sqlx(rename = "message_key")]
    pub key: String,
    pub payload: String,
    pub source_partition: i32,
}

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
}

impl<'a> LeadWrite<'a> {
    pub fn new(state: &'a LeadState, partition: i32) -> Self {
        LeadWrite {
            state,
            partition,
            expect_timer: None,
            experiments_changed: !state.nurture.experiments.is_empty(),
        }
    }
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
}

/// A row of the lead list: the indexed columns, not the whole state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LeadSummary {
    pub lead_ext_id: String,
    pub stage: String,
    pub owner: Option<String>,
    pub source: Option<String>,
    pub segment: Option<String>,
    pub final_score: Option<f64>,
    pub updated_at: i64,
}

/// A model to add to the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    pub model_type: String,
    pub params: String,
    pub features: String,
    pub metrics: String,
    pub reason: String,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub train_rows: i64,
    pub holdout_rows: i64,
    pub trained_at: i64,
    pub training_seconds: f64,
    pub model: String,
    pub profile: Option<String>,
}

/// A registry entry without the (large) serialized model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelRecord {
    pub version: i64,
    pub model_type: String,
    pub params: String,
    pub features: String,
    pub metrics: String,
    pub reason: String,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub train_rows: i64,
    pub holdout_rows: i64,
    pub trained_at: i64,
    pub training_seconds: f64,
    pub active: bool,
    pub activated_at: Option<i64>,
}

/// The serialized model and its drift reference.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelDocument {
    pub version: i64,
    pub model: String,
    pub profile: Option<String>,
}

/// The delivery worker's record of one message_id (table `deliveries`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub message_id: String,
    pub lead_ext_id: String,
    pub channel: String,
    pub template: String,
    /// `sending` while a worker holds the claim; then `sent`, `failed`,
    /// `bounced` or `dropped`.
    pub status: String,
    pub owner: String,
    pub claimed_until: i64,
    pub attempts: i32,
    pub provider_message_id: Option<String>,
    pub reason: Option<String>,
    /// The DeliveryEvent for the outcome was acknowledged by the broker.
    pub reported: bool,
    pub updated_at: i64,
}

/// A worker's claim on a message before it calls the provider.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryClaim<'a> {
    pub message_id: &'a str,
    pub lead_ext_id: &'a str,
    pub channel: &'a str,
    pub template: &'a str,
    pub recipient_hash: &'a str,
    pub owner: &'a str,
    pub now: i64,
    pub lease_ms: i64,
}

/// The outcome a worker records over its claim.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOutcome<'a> {
    pub message_id: &'a str,
    pub owner: &'a str,
    pub status: &'a str,
    pub provider_message_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub attempts: i32,
    pub now: i64,
}

const DELIVERY_COLUMNS: &str = "message_id, lead_ext_id, channel, template, status, owner,
    claimed_until, attempts, provider_message_id, reason, reported, updated_at";

const MODEL_COLUMNS: &str = "version, model_type, params, features, metrics, reason, window_start,
    window_end, train_rows, holdout_rows, trained_at, training_seconds, active, activated_at";

pub trait LeadStore: Send + Sync {
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The states of those of `ids` that exist.
    fn load_leads(
        &self,
        ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, LeadState>, StoreError>> + Send;

    fn get_lead(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<LeadState>, StoreError>> + Send;

    /// Writes the leads, offsets and outbox rows of a batch atomically: all or
    /// nothing. Fails with [`StoreError::Fenced`] if an offset moved meanwhile.
    fn commit_batch(
        &self,
        batch: &BatchWrite<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn partition_offsets(
        &self,
        consumer_group: &str,
    ) -> impl Future<Output = Result<Vec<PartitionOffset>, StoreError>> + Send;

    fn lead_count(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Leads ordered by id, `limit` from `after` (exclusive; "" for the start).
    fn list_leads(
        &self,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<LeadSummary>, StoreError>> + Send;

    /// The oldest unpublished outputs of the given source partitions, in order.
    fn outbox_pending(
        &self,
        partitions: &[i32],
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Up to `limit` leads of `partitions` whose nurturing timer is due at
    /// `until` or before, earliest first, with the partition of each.
    fn due_timers(
        &self,
        partitions: &[i32],
        until: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(i32, LeadState)>, StoreError>> + Send;

    /// The latest event time applied to a lead of `partition`: the
    /// partition's clock when the processor runs on event time.
    fn partition_stream_time(
        &self,
        partition: i32,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Per experiment and variant: leads enrolled, replied and converted.
    fn experiment_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<VariantCounts>, StoreError>> + Send;

    /// Removes published outputs.
    fn outbox_delete(&self, seqs: &[i64]) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn outbox_depth(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Closed leads whose close (stage_entered_at) is at or after `since`.
    fn closed_leads(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<Vec<LeadState>, StoreError>> + Send;

    /// The time of the newest close, if any lead is closed.
    fn newest_close(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Up to `limit` leads updated at or after `since`, newest first.
    fn recent_leads(
        &self,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<LeadState>, StoreError>> + Send;

    fn newest_update(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Adds a model (inactive) and returns its version.
    fn insert_model(
        &self,
        model: &NewModel,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Every registry entry, oldest first.
    fn list_models(&self) -> impl Future<Output = Result<Vec<ModelRecord>, StoreError>> + Send;

    fn model_record(
        &self,
        version: i64,
    ) -> impl Future<Output = Result<Option<ModelRecord>, StoreError>> + Send;

    fn model_document(
        &self,
        version: i64,
    ) -> impl Future<Output = Result<Option<ModelDocument>, StoreError>> + Send;

    fn active_model_version(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Makes `version` the only active model.
    fn activate_model(
        &self,
        version: i64,
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims a message for sending: creates its record, or takes over a
    /// claim that is this owner's or whose lease ran out, and renews the
    /// lease. Returns the record as it stands after: the claim is held when
    /// its owner is `claim.owner` and its status `sending`.
    fn claim_delivery(
        &self,
        claim: &DeliveryClaim<'_>,
    ) -> impl Future<Output = Result<DeliveryRecord, StoreError>> + Send;

    /// Records the outcome over a claim still held by `outcome.owner`;
    /// false when the claim was lost (its lease ran out and another took it).
    fn finish_delivery(
        &self,
        outcome: &DeliveryOutcome<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn delivery_record(
        &self,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<DeliveryRecord>, StoreError>> + Send;

    /// Notes that the DeliveryEvent of a finished message was published.
    fn mark_delivery_reported(
        &self,
        message_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Messages sent to a recipient since `since`.
    fn recipient_sends(
        &self,
        recipient_hash: &str,
        since: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// Retries a store operation while its error is transient, with capped
/// exponential backoff. The loop never skips ahead: it waits.
pub async fn with_store_retry<T, F, Fut>(
    what: &str,
    metrics: &crate::metrics::Metrics,
    op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    crate::retry::retry_transient(
        crate::retry::Backoff::outage(),
        StoreError::is_transient,
        |e, delay| {
            metrics.store_retries.inc();
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}: store unavailable, retrying");
        },
        op,
    )
    .await
}

pub struct PgStore {
    pool: PgPool,
}

pub struct SqliteStore {
    pool: SqlitePool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let url_error = |reason: String| StoreError::Url {
            url: url.to_string(),
            reason,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| url_error(e.to_string()))?
            .create_if_missing(true)
            // WAL with synchronous=NORMAL survives a process crash (what the
            // processor's guarantees are about); only an OS crash or power
            // loss can lose the last transactions. Use PostgreSQL for more.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !Path::new(dir).exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| url_error(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn decode_state(lead: &str, json: &str) -> Result<LeadState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        lead: lead.to_string(),
        reason: e.to_string(),
    })
}

fn encode_state(state: &LeadState) -> String {
    serde_json::to_string(state).expect("LeadState is plain data and always serializes")
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const UPSERT_LEAD: &str = "INSERT INTO leads
    (lead_ext_id, state, email, source, owner, stage, stage_entered_at, segment, final_score,
     created_at, updated_at, partition_id, next_timer_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    ON CONFLICT (lead_ext_id) DO UPDATE SET
        state = excluded.state, email = excluded.email, source = excluded.source,
        owner = excluded.owner, stage = excluded.stage, stage_entered_at = excluded.stage_entered_at,
        segment = excluded.segment, final_score = excluded.final_score,
        created_at = excluded.created_at, updated_at = excluded.updated_at,
        partition_id = excluded.partition_id, next_timer_at = excluded.next_timer_at";

/// The write of a lead whose timer fired: only over the timer that was read.
const UPDATE_FIRED_LEAD: &str = "UPDATE leads SET
        state = $2, email = $3, source = $4, owner = $5, stage = $6, stage_entered_at = $7,
        segment = $8, final_score = $9, created_at = $10, updated_at = $11,
        partition_id = $12, next_timer_at = $13
    WHERE lead_ext_id = $1 AND next_timer_at = $14";

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

const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (output_id, topic, message_key, payload, source_partition, created_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (output_id) DO NOTHING";

/// Rows fetched per `IN (...)` query; well under SQLite's variable limit.
const LOAD_CHUNK: usize = 500;

macro_rules! impl_sql_store {
    ($store:ty, $migrations:literal) => {
        impl LeadStore for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                sqlx::migrate!($migrations).run(&self.pool).await?;
                Ok(())
            }

            async fn load_leads(
                &self,
                ids: &[&str],
            ) -> Result<HashMap<String, LeadState>, StoreError> {
                let mut out = HashMap::with_capacity(ids.len());
                for chunk in ids.chunks(LOAD_CHUNK) {
                    let sql = format!(
                        "SELECT lead_ext_id, state FROM leads WHERE lead_ext_id IN ({})",
                        placeholders(chunk.len())
                    );
                    let mut query = sqlx::query_as::<_, (String, String)>(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    for (id, json) in query.fetch_all(&self.pool).await? {
                        let state = decode_state(&id, &json)?;
                        out.insert(id, state);
                    }
                }
                Ok(out)
            }

            async fn get_lead(&self, id: &str) -> Result<Option<LeadState>, StoreError> {
                let row: Option<String> =
                    sqlx::query_scalar("SELECT state FROM leads WHERE lead_ext_id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(|json| decode_state(id, &json)).transpose()
            }

            async fn commit_batch(&self, batch: &BatchWrite<'_>) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                for write in &batch.leads {
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
                    .bind(lead.nurture.timer);
                    let written = match write.expect_timer {
                        None => query.execute(&mut *tx).await?,
                        Some(fired) => query.bind(fired).execute(&mut *tx).await?,
                    };
                    if written.rows_affected() != 1 {
                        return Err(StoreError::TimerTaken {
                            lead: lead.lead_ext_id.clone(),
                        });
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
                        // Dropping the transaction rolls it back.
                        return Err(StoreError::Fenced {
                            topic: offset.topic.clone(),
                            partition: offset.partition,
                            expected: offset.from,
                        });
                    }
                }
                for row in &batch.outbox {
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
                tx.commit().await?;
                Ok(())
            }

            async fn partition_offsets(
                &self,
                consumer_group: &str,
            ) -> Result<Vec<PartitionOffset>, StoreError> {
                let rows: Vec<(String, i32, i64)> = sqlx::query_as(
                    "SELECT topic, partition_id, next_offset FROM partition_offsets
                     WHERE consumer_group = $1 ORDER BY topic, partition_id",
                )
                .bind(consumer_group)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(topic, partition, next_offset)| PartitionOffset {
                        topic,
                        partition,
                        next_offset,
                    })
                    .collect())
            }

            async fn lead_count(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM leads")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn list_leads(
                &self,
                after: &str,
                limit: i64,
            ) -> Result<Vec<LeadSummary>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT lead_ext_id, stage, owner, source, segment, final_score, updated_at
                     FROM leads WHERE lead_ext_id > $1 ORDER BY lead_ext_id LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn outbox_pending(&self, partitions: &[i32], limit: i64) -> Result<Vec<OutboxEntry>, StoreError> {
                if partitions.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT seq, output_id, topic, message_key, payload, source_partition FROM outbox
                     WHERE source_partition IN ({}) ORDER BY seq LIMIT ${}",
                    placeholders(partitions.len()),
                    partitions.len() + 1
                );
                let mut query = sqlx::query_as::<_, OutboxEntry>(&sql);
                for p in partitions {
                    query = query.bind(*p);
                }
                Ok(query.bind(limit).fetch_all(&self.pool).await?)
            }

            async fn due_timers(
                &self,
                partitions: &[i32],
                until: i64,
                limit: i64,
            ) -> Result<Vec<(i32, LeadState)>, StoreError> {
                if partitions.is_empty() {
                    return Ok(Vec::new());
                }
                let n = partitions.len();
                let sql = format!(
                    "SELECT lead_ext_id, state, partition_id FROM leads
                     WHERE partition_id IN ({}) AND next_timer_at IS NOT NULL AND next_timer_at <= ${}
                     ORDER BY next_timer_at, lead_ext_id LIMIT ${}",
                    placeholders(n),
                    n + 1,
                    n + 2
                );
                let mut query = sqlx::query_as::<_, (String, String, i32)>(&sql);
                for p in partitions {
                    query = query.bind(*p);
                }
                let rows = query.bind(until).bind(limit).fetch_all(&self.pool).await?;
                rows.into_iter()
                    .map(|(id, json, partition)| Ok((partition, decode_state(&id, &json)?)))
                    .collect()
            }

            async fn partition_stream_time(&self, partition: i32) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar("SELECT MAX(updated_at) FROM leads WHERE partition_id = $1")
                    .bind(partition)
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn experiment_counts(&self) -> Result<Vec<VariantCounts>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT experiment, variant, COUNT(*) AS enrolled,
                        COUNT(replied_at) AS replied, COUNT(converted_at) AS converted
                     FROM experiment_members GROUP BY experiment, variant
                     ORDER BY experiment, variant",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
                for chunk in seqs.chunks(LOAD_CHUNK) {
                    let sql = format!("DELETE FROM outbox WHERE seq IN ({})", placeholders(chunk.len()));
                    let mut query = sqlx::query(&sql);
                    for seq in chunk {
                        query = query.bind(*seq);
                    }
                    query.execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn outbox_depth(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&self.pool).await?)
            }

            async fn closed_leads(&self, since: i64) -> Result<Vec<LeadState>, StoreError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT lead_ext_id, state FROM leads
                     WHERE stage IN ('closed_won', 'closed_lost') AND stage_entered_at >= $1
                     ORDER BY lead_ext_id",
                )
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|(id, json)| decode_state(id, json)).collect()
            }

            async fn newest_close(&self) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT MAX(stage_entered_at) FROM leads WHERE stage IN ('closed_won', 'closed_lost')",
                )
                .fetch_one(&self.pool)
                .await?)
            }

            async fn recent_leads(&self, since: i64, limit: i64) -> Result<Vec<LeadState>, StoreError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT lead_ext_id, state FROM leads WHERE updated_at >= $1
                     ORDER BY updated_at DESC, lead_ext_id LIMIT $2",
                )
                .bind(since)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|(id, json)| decode_state(id, json)).collect()
            }

            async fn newest_update(&self) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar("SELECT MAX(updated_at) FROM leads")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn insert_model(&self, m: &NewModel) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO models (model_type, params, features, metrics, reason, window_start,
                        window_end, train_rows, holdout_rows, trained_at, training_seconds, model, profile)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     RETURNING version",
                )
                .bind(&m.model_type)
                .bind(&m.params)
                .bind(&m.features)
                .bind(&m.metrics)
                .bind(&m.reason)
                .bind(m.window_start)
                .bind(m.window_end)
                .bind(m.train_rows)
                .bind(m.holdout_rows)
                .bind(m.trained_at)
                .bind(m.training_seconds)
                .bind(&m.model)
                .bind(&m.profile)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn list_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY version"))
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn model_record(&self, version: i64) -> Result<Option<ModelRecord>, StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE version = $1"))
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn model_document(&self, version: i64) -> Result<Option<ModelDocument>, StoreError> {
                Ok(sqlx::query_as("SELECT version, model, profile FROM models WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn active_model_version(&self) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar("SELECT version FROM models WHERE active")
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn activate_model(&self, version: i64, at: i64) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE models SET active = FALSE WHERE active AND version <> $1")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                let updated = sqlx::query(
                    "UPDATE models SET active = TRUE, activated_at = $2 WHERE version = $1 AND NOT active",
                )
                .bind(version)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT version FROM models WHERE version = $1")
                            .bind(version)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_none() {
                        return Err(StoreError::ModelNotFound(version));
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_delivery(
                &self,
                claim: &DeliveryClaim<'_>,
            ) -> Result<DeliveryRecord, StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO deliveries (message_id, lead_ext_id, channel, template,
                        recipient_hash, status, owner, claimed_until, attempts, reported, updated_at)
                     VALUES ($1, $2, $3, $4, $5, 'sending', $6, $7, 0, FALSE, $8)
                     ON CONFLICT (message_id) DO UPDATE SET
                        owner = excluded.owner, claimed_until = excluded.claimed_until,
                        updated_at = excluded.updated_at
                     WHERE deliveries.status = 'sending'
                        AND (deliveries.owner = excluded.owner OR deliveries.claimed_until < $8)",
                )
                .bind(claim.message_id)
                .bind(claim.lead_ext_id)
                .bind(claim.channel)
                .bind(claim.template)
                .bind(claim.recipient_hash)
                .bind(claim.owner)
                .bind(claim.now + claim.lease_ms)
                .bind(claim.now)
                .execute(&mut *tx)
                .await?;
                let record = sqlx::query_as(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = $1"
                ))
                .bind(claim.message_id)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn finish_delivery(
                &self,
                outcome: &DeliveryOutcome<'_>,
            ) -> Result<bool, StoreError> {
                let updated = sqlx::query(
                    "UPDATE deliveries SET status = $3, provider_message_id = $4, reason = $5,
                        attempts = $6, updated_at = $7
                     WHERE message_id = $1 AND owner = $2 AND status = 'sending'",
                )
                .bind(outcome.message_id)
                .bind(outcome.owner)
                .bind(outcome.status)
                .bind(outcome.provider_message_id)
                .bind(outcome.reason)
                .bind(outcome.attempts)
                .bind(outcome.now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn delivery_record(
                &self,
                message_id: &str,
            ) -> Result<Option<DeliveryRecord>, StoreError> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = $1"
                ))
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn mark_delivery_reported(&self, message_id: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE deliveries SET reported = TRUE WHERE message_id = $1")
                    .bind(message_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn recipient_sends(
                &self,
                recipient_hash: &str,
                since: i64,
            ) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM deliveries
                     WHERE recipient_hash = $1 AND updated_at >= $2 AND status = 'sent'",
                )
                .bind(recipient_hash)
                .bind(since)
                .fetch_one(&self.pool)
                .await?)
            }
        }
    };
}

impl_sql_store!(PgStore, "./migrations/postgres");
impl_sql_store!(SqliteStore, "./migrations/sqlite");

/// The store chosen by `database.url` at start-up.
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(
                PgStore::connect(url, max_connections).await?,
            ))
        } else if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(
                SqliteStore::connect(url, max_connections).await?,
            ))
        } else {
            Err(StoreError::Url {
                url: url.to_string(),
                reason: "expected sqlite://... or postgres://...".into(),
            })
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call.await,
            Store::Sqlite($store) => $call.await,
        }
    };
}

impl LeadStore for Store {
    async fn migrate(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.migrate())
    }

    async fn load_leads(&self, ids: &[&str]) -> Result<HashMap<String, LeadState>, StoreError> {
        delegate!(self, s => s.load_leads(ids))
    }

    async fn get_lead(&self, id: &str) -> Result<Option<LeadState>, StoreError> {
        delegate!(self, s => s.get_lead(id))
    }

    async fn commit_batch(&self, batch: &BatchWrite<'_>) -> Result<(), StoreError> {
        delegate!(self, s => s.commit_batch(batch))
    }

    async fn partition_offsets(
        &self,
        consumer_group: &str,
    ) -> Result<Vec<PartitionOffset>, StoreError> {
        delegate!(self, s => s.partition_offsets(consumer_group))
    }

    async fn lead_count(&self) -> Result<i64, StoreError> {
        delegate!(self, s => s.lead_count())
    }

    async fn list_leads(&self, after: &str, limit: i64) -> Result<Vec<LeadSummary>, StoreError> {
        delegate!(self, s => s.list_leads(after, limit))
    }

    async fn outbox_pending(
        &self,
        partitions: &[i32],
        limit: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        delegate!(self, s => s.outbox_pending(partitions, limit))
    }

    async fn outbox_delete(&self, seqs: &[i64]) -> Result<(), StoreError> {
        delegate!(self, s => s.outbox_delete(seqs))
    }

    async fn due_timers(
        &self,
        partitions: &[i32],
        until: i64,
        limit: i64,
    ) -> Result<Vec<(i32, LeadState)>, StoreError> {
        delegate!(self, s => s.due_timers(partitions, until, limit))
    }

    async fn partition_stream_time(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.partition_stream_time(partition))
    }

    async fn experiment_counts(&self) -> Result<Vec<VariantCounts>, StoreError> {
        delegate!(self, s => s.experiment_counts())
    }

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        delegate!(self, s => s.outbox_depth())
    }

    async fn closed_leads(&self, since: i64) -> Result<Vec<LeadState>, StoreError> {
        delegate!(self, s => s.closed_leads(since))
    }

    async fn newest_close(&self) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.newest_close())
    }

    async fn recent_leads(&self, since: i64, limit: i64) -> Result<Vec<LeadState>, StoreError> {
        delegate!(self, s => s.recent_leads(since, limit))
    }

    async fn newest_update(&self) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.newest_update())
    }

    async fn insert_model(&self, model: &NewModel) -> Result<i64, StoreError> {
        delegate!(self, s => s.insert_model(model))
    }

    async fn list_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        delegate!(self, s => s.list_models())
    }

    async fn model_record(&self, version: i64) -> Result<Option<ModelRecord>, StoreError> {
        delegate!(self, s => s.model_record(version))
    }

    async fn model_document(&self, version: i64) -> Result<Option<ModelDocument>, StoreError> {
        delegate!(self, s => s.model_document(version))
    }

    async fn active_model_version(&self) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.active_model_version())
    }

    async fn activate_model(&self, version: i64, at: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.activate_model(version, at))
    }

    async fn claim_delivery(
        &self,
        claim: &DeliveryClaim<'_>,
    ) -> Result<DeliveryRecord, StoreError> {
        delegate!(self, s => s.claim_delivery(claim))
    }

    async fn finish_delivery(&self, outcome: &DeliveryOutcome<'_>) -> Result<bool, StoreError> {
        delegate!(self, s => s.finish_delivery(outcome))
    }

    async fn delivery_record(
        &self,
        message_id: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        delegate!(self, s => s.delivery_record(message_id))
    }

    async fn mark_delivery_reported(&self, message_id: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.mark_delivery_reported(message_id))
    }

    async fn recipient_sends(&self, recipient_hash: &str, since: i64) -> Result<i64, StoreError> {
        delegate!(self, s => s.recipient_sends(recipient_hash, since))
    }
}
