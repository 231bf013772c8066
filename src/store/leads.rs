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

/// How [`Leads::search_leads`] orders leads: both newest or highest first,
/// then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadOrder {
    /// By final score (a lead without one counts as -1).
    Score,
    /// By the latest event time applied.
    Updated,
}

/// A filtered page of the lead list: "" or `None` means any.
#[derive(Debug, Clone)]
pub struct LeadFilter<'a> {
    pub stage: &'a str,
    pub segment: &'a str,
    pub owner: &'a str,
    pub source: &'a str,
    pub min_score: Option<f64>,
    pub updated_since: Option<i64>,
    pub order: LeadOrder,
    /// The last row of the previous page: its sort key and id.
    pub after: Option<(f64, &'a str)>,
    pub limit: i64,
}

const SUMMARY_COLUMNS: &str = "lead_ext_id, stage, owner, source, segment, final_score, updated_at";

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

        /// Leads held, not counting erased ones (their tombstones).
        async fn lead_count(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM leads WHERE erased_at IS NULL")
                .fetch_one(&self.pool)
                .await?)
        }

        /// Leads ordered by id, `limit` from `after` (exclusive; "" for the
        /// start); erased leads are not listed.
        async fn list_leads(
            &self,
            after: &str,
            limit: i64,
        ) -> Result<Vec<LeadSummary>, StoreError> {
            Ok(sqlx::query_as(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM leads WHERE lead_ext_id > $1 AND erased_at IS NULL
                 ORDER BY lead_ext_id LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        }

        /// The leads `filter` selects, in its order, a page from its cursor.
        async fn search_leads(&self, filter: &LeadFilter<'_>) -> Result<Vec<LeadSummary>, StoreError> {
            let key = match filter.order {
                LeadOrder::Score => "COALESCE(final_score, -1.0)",
                LeadOrder::Updated => "updated_at",
            };
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM leads
                 WHERE ($1 = '' OR stage = $1) AND ($2 = '' OR segment = $2)
                   AND ($3 = '' OR owner = $3) AND ($4 = '' OR source = $4)
                   AND COALESCE(final_score, -1.0) >= $5 AND updated_at >= $6
                   AND erased_at IS NULL
                   AND ($7 OR {key} < $8 OR ({key} = $8 AND lead_ext_id > $9))
                 ORDER BY {key} DESC, lead_ext_id LIMIT $10"
            );
            let query = sqlx::query_as(&sql)
                .bind(filter.stage)
                .bind(filter.segment)
                .bind(filter.owner)
                .bind(filter.source)
                .bind(filter.min_score.unwrap_or(-1.0))
                .bind(filter.updated_since.unwrap_or(i64::MIN))
                .bind(filter.after.is_none());
            let (key, id) = filter.after.unwrap_or((0.0, ""));
            let query = match filter.order {
                LeadOrder::Score => query.bind(key),
                LeadOrder::Updated => query.bind(key as i64),
            };
            Ok(query.bind(id).bind(filter.limit).fetch_all(&self.pool).await?)
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
