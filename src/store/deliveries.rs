//! Delivery claims and outcomes: what makes each message go out once.

use super::*;

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

store_concern! {
    /// Delivery claims and outcomes: what makes each message go out once.
    pub trait Deliveries {
        /// Claims a message for sending: creates its record, or takes over a
        /// claim that is this owner's or whose lease ran out, and renews the
        /// lease. Returns the record as it stands after: the claim is held when
        /// its owner is `claim.owner` and its status `sending`.
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

        /// Records the outcome over a claim still held by `outcome.owner`;
        /// false when the claim was lost (its lease ran out and another took it).
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

        /// Notes that the DeliveryEvent of a finished message was published.
        async fn mark_delivery_reported(&self, message_id: &str) -> Result<(), StoreError> {
            sqlx::query("UPDATE deliveries SET reported = TRUE WHERE message_id = $1")
                .bind(message_id)
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        /// Messages sent to a recipient since `since`.
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

        /// The ledger rows of one lead's messages, oldest first.
        async fn lead_deliveries(&self, lead: &str) -> Result<Vec<DeliveryRecord>, StoreError> {
            Ok(sqlx::query_as(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE lead_ext_id = $1
                 ORDER BY updated_at, message_id"
            ))
            .bind(lead)
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
