//! The GDPR audit: who asked for an erasure or an export of which lead,
//! when and why, and when the processor applied the erasure. The erasure
//! itself is written by the commit path ([`super::batch`]) in the batch
//! that applies it.

use super::*;

/// One line of the audit; no personal data (the lead by its id only).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRecord {
    pub action: String,
    pub lead_ext_id: String,
    pub at: i64,
    pub actor: String,
    pub reason: Option<String>,
    pub event_id: Option<String>,
}

pub const ERASE_REQUESTED: &str = "erase_requested";
pub const ERASED: &str = "erased";
pub const EXPORTED: &str = "exported";

pub(super) const INSERT_AUDIT: &str =
    "INSERT INTO gdpr_audit (action, lead_ext_id, at, actor, reason, event_id)
     VALUES ($1, $2, $3, $4, $5, $6)";

store_concern! {
    /// The GDPR audit (appended to, read by lead) and retention's query.
    pub trait GdprAudit {
        async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
            sqlx::query(INSERT_AUDIT)
                .bind(&record.action)
                .bind(&record.lead_ext_id)
                .bind(record.at)
                .bind(&record.actor)
                .bind(&record.reason)
                .bind(&record.event_id)
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        /// Up to `limit` leads of `partition`, not erased, whose latest
        /// event is before `before`, with that time; least recent first.
        async fn inactive_leads(
            &self,
            partition: i32,
            before: i64,
            limit: i64,
        ) -> Result<Vec<(String, i64)>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT lead_ext_id, updated_at FROM leads
                 WHERE partition_id = $1 AND updated_at < $2 AND erased_at IS NULL
                 ORDER BY updated_at, lead_ext_id LIMIT $3",
            )
            .bind(partition)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        }

        /// A lead's audit lines, oldest first.
        async fn audit_of(&self, lead_ext_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT action, lead_ext_id, at, actor, reason, event_id FROM gdpr_audit
                 WHERE lead_ext_id = $1 ORDER BY at, id",
            )
            .bind(lead_ext_id)
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
