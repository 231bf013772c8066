//! Lead states: read one, many, a page, the closed and the recent ones.

use super::*;

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

/// Lead states per query of [`Leads::all_lead_states`].
const STATE_PAGE: i64 = 5000;

store_concern! {
    /// Lead states: read one, many, a page, the closed and the recent ones.
    pub trait Leads {
        /// The states of those of `ids` that exist.
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

        async fn lead_count(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM leads")
                .fetch_one(&self.pool)
                .await?)
        }

        /// Leads ordered by id, `limit` from `after` (exclusive; "" for the start).
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

        /// Every lead state, ordered by id, read in pages of
        /// [`STATE_PAGE`] so that no single query holds them all.
        async fn all_lead_states(&self) -> Result<Vec<LeadState>, StoreError> {
            let mut leads: Vec<LeadState> = Vec::new();
            loop {
                let after = leads.last().map_or(String::new(), |l| l.lead_ext_id.clone());
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT lead_ext_id, state FROM leads WHERE lead_ext_id > $1
                     ORDER BY lead_ext_id LIMIT $2",
                )
                .bind(&after)
                .bind(STATE_PAGE)
                .fetch_all(&self.pool)
                .await?;
                let done = (rows.len() as i64) < STATE_PAGE;
                for (id, json) in &rows {
                    leads.push(decode_state(id, json)?);
                }
                if done {
                    return Ok(leads);
                }
            }
        }

        /// Closed leads whose close (stage_entered_at) is at or after `since`.
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

        /// The time of the newest close, if any lead is closed.
        async fn newest_close(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT MAX(stage_entered_at) FROM leads WHERE stage IN ('closed_won', 'closed_lost')",
            )
            .fetch_one(&self.pool)
            .await?)
        }

        /// Up to `limit` leads updated at or after `since`, newest first.
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

        /// Leads created per UTC day (days since 1970-01-01), oldest first;
        /// days without a lead are absent.
        async fn leads_created_per_day(&self) -> Result<Vec<(i64, i64)>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT created_at / 86400000 AS day, COUNT(*) FROM leads
                 WHERE created_at IS NOT NULL GROUP BY day ORDER BY day",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        async fn newest_update(&self) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT MAX(updated_at) FROM leads")
                .fetch_one(&self.pool)
                .await?)
        }
    }
}
