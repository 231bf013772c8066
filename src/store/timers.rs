//! Nurturing timers through the indexed `next_timer_at` column, and each partition's event-time clock.

use super::*;

store_concern! {
    /// Nurturing timers through the indexed `next_timer_at` column, and each partition's event-time clock.
    pub trait Timers {
        /// Up to `limit` leads of `partitions` whose nurturing timer is due at
        /// `until` or before, earliest first, with the partition of each.
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

        /// The latest event time applied to a lead of `partition`: the
        /// partition's clock when the processor runs on event time.
        async fn partition_stream_time(&self, partition: i32) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT MAX(updated_at) FROM leads WHERE partition_id = $1")
                .bind(partition)
                .fetch_one(&self.pool)
                .await?)
        }
    }
}
