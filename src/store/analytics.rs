//! The daily analytics history (`lead_analytics`): what a day's rows are
//! made from, and the rows. They are written by the commit path
//! (`batch.rs`), fenced like a forecast.

use super::*;

pub use crate::analytics::history::{AnalyticsRow, OpenStage};

pub(super) const INSERT_ANALYTICS: &str = "INSERT INTO lead_analytics
    (day, metric, dimension, dimension_value, value) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (day, metric, dimension, dimension_value) DO NOTHING";

store_concern! {
    /// The daily analytics history: its inputs and its rows.
    pub trait History {
        /// The transitions with `at` in `[from, until)`, by time.
        async fn transitions_between(&self, from: i64, until: i64) -> Result<Vec<TransitionRow>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT lead_ext_id, seq, from_stage, to_stage, at, owner, source, value, event_id
                 FROM lead_transitions WHERE at >= $1 AND at < $2
                 ORDER BY at, lead_ext_id, seq",
            )
            .bind(from)
            .bind(until)
            .fetch_all(&self.pool)
            .await?)
        }

        /// Open leads per stage just before `until`: each lead in the stage
        /// of its latest transition before then, with that transition's value.
        async fn open_by_stage(&self, until: i64) -> Result<Vec<OpenStage>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT t.to_stage AS stage, COUNT(*) AS leads, SUM(t.value) AS value
                 FROM lead_transitions t
                 WHERE t.at < $1 AND t.to_stage NOT IN ('closed_won', 'closed_lost')
                   AND NOT EXISTS (SELECT 1 FROM lead_transitions n
                       WHERE n.lead_ext_id = t.lead_ext_id AND n.seq > t.seq AND n.at < $1)
                 GROUP BY t.to_stage ORDER BY t.to_stage",
            )
            .bind(until)
            .fetch_all(&self.pool)
            .await?)
        }

        /// The latest day with stored rows.
        async fn last_analytics_day(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT MAX(day) FROM lead_analytics")
                .fetch_one(&self.pool)
                .await?)
        }

        /// The stored rows of days `[from, until)`, of one metric and one
        /// dimension when given (`""`: any), by day, metric, dimension, value.
        async fn analytics_history(
            &self,
            from: i64,
            until: i64,
            metric: &str,
            dimension: &str,
        ) -> Result<Vec<AnalyticsRow>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT day, metric, dimension, dimension_value, value FROM lead_analytics
                 WHERE day >= $1 AND day < $2 AND ($3 = '' OR metric = $3)
                   AND ($4 = '' OR dimension = $4)
                 ORDER BY day, metric, dimension, dimension_value",
            )
            .bind(from)
            .bind(until)
            .bind(metric)
            .bind(dimension)
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
