//! The lead state store: one trait per concern, two backends on sqlx.
//!
//! PostgreSQL is the production store, SQLite the embedded default. Each
//! concern (leads, the batch write, offsets, outbox, timers, experiments,
//! models, deliveries, forecasts, transitions, the analytics history, API keys, the GDPR audit, lead data keys) is one file holding its types, its SQL and one
//! [`store_concern!`] block: every method is written once there, and the
//! macro makes of it the trait, both backends' implementations (the same
//! SQL, so they cannot drift) and the [`Store`] delegate. Only the
//! migrations differ, by column types. [`LeadStore`] is all the concerns
//! together; `tests/store.rs` runs one generic suite against both backends.
//!
//! A new table: its migration per backend, and one file here.

mod analytics;
mod api_keys;
mod batch;
mod deliveries;
mod experiments;
mod forecasts;
mod gdpr;
mod lead_keys;
mod leads;
mod models;
mod offsets;
mod outbox;
mod timers;
mod transitions;

pub use analytics::{AnalyticsRow, History, OpenStage};
pub use api_keys::{ApiKeyRecord, ApiKeys};
pub use batch::{BatchWrite, Batches, ErasureWrite, LeadWrite};
pub use deliveries::{Deliveries, DeliveryClaim, DeliveryOutcome, DeliveryRecord};
pub use experiments::Experiments;
pub use forecasts::{ForecastRecord, Forecasts};
pub use gdpr::{AuditRecord, GdprAudit, ERASED, ERASE_REQUESTED, EXPORTED};
pub use lead_keys::LeadKeys;
pub use leads::{LeadFilter, LeadOrder, LeadSummary, Leads};
pub use models::{ModelDocument, ModelEntry, ModelRecord, Models, NewModel};
pub use offsets::{OffsetAdvance, Offsets, PartitionOffset};
pub use outbox::{NewOutboxRow, Outbox, OutboxEntry};
pub use timers::Timers;
pub use transitions::{new_transitions, TransitionRow, Transitions};

/// Every concern trait, for calling store methods on a concrete store.
pub mod prelude {
    pub use super::{
        ApiKeys, Batches, Deliveries, Experiments, Forecasts, GdprAudit, History, LeadKeys,
        LeadStore, Leads, Migrate, Models, Offsets, Outbox, Timers, Transitions,
    };
}

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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
            metrics.emit(crate::metrics::internal_events::StoreRetry {
                what,
                error: e,
                retry_in: delay,
            })
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

pub(crate) fn decode_state(lead: &str, json: &str) -> Result<LeadState, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        lead: lead.to_string(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode_state(state: &LeadState) -> String {
    serde_json::to_string(state).expect("LeadState is plain data and always serializes")
}

/// Rows fetched per `IN (...)` query; well under SQLite's variable limit.
pub(crate) const LOAD_CHUNK: usize = 500;

pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes one concern's methods once: declares the trait and implements it
/// for both backends (the same body, on each one's pool) and for [`Store`].
macro_rules! store_concern {
    (
        $(#[$trait_doc:meta])*
        pub trait $concern:ident {
            $(
                $(#[$doc:meta])*
                async fn $method:ident(&$self:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
            )*
        }
    ) => {
        $(#[$trait_doc])*
        pub trait $concern: Send + Sync {
            $(
                $(#[$doc])*
                fn $method(&self $(, $arg: $ty)*) -> impl std::future::Future<Output = $ret> + Send;
            )*
        }

        impl $concern for PgStore {
            $(async fn $method(&$self $(, $arg: $ty)*) -> $ret $body)*
        }

        impl $concern for SqliteStore {
            $(async fn $method(&$self $(, $arg: $ty)*) -> $ret $body)*
        }

        impl $concern for Store {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Postgres(store) => store.$method($($arg),*).await,
                        Store::Sqlite(store) => store.$method($($arg),*).await,
                    }
                }
            )*
        }
    };
}
use store_concern;

/// Everything the processor, the delivery worker and the tools need of a
/// store: every concern.
pub trait LeadStore:
    Migrate
    + Leads
    + Batches
    + Offsets
    + Outbox
    + Timers
    + Experiments
    + Models
    + Deliveries
    + Forecasts
    + Transitions
    + History
    + ApiKeys
    + GdprAudit
    + LeadKeys
{
}

impl<T> LeadStore for T where
    T: Migrate
        + Leads
        + Batches
        + Offsets
        + Outbox
        + Timers
        + Experiments
        + Models
        + Deliveries
        + Forecasts
        + Transitions
        + History
        + ApiKeys
        + GdprAudit
        + LeadKeys
{
}

/// Creates or upgrades the schema: each backend has its own migrations.
pub trait Migrate: Send + Sync {
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Migrate for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

impl Migrate for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

impl Migrate for Store {
    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => store.migrate().await,
            Store::Sqlite(store) => store.migrate().await,
        }
    }
}

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
