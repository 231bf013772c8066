//! Outputs committed with their batch and not yet acknowledged by the broker.

use super::*;

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

store_concern! {
    /// Outputs committed with their batch and not yet acknowledged by the broker.
    pub trait Outbox {
        /// The oldest unpublished outputs of the given source partitions, in order.
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

        /// Removes published outputs.
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
    }
}
