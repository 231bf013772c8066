//! Where each consumer group stands in each input partition: the offsets the processor assigns from.

use super::*;

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

store_concern! {
    /// Where each consumer group stands in each input partition: the offsets the processor assigns from.
    pub trait Offsets {
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
    }
}
