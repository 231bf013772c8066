//! Lead data keys for crypto-shredding (`gdpr::shredding`): one row per
//! lead, the key wrapped by the master key, or NULL once the lead was
//! erased (shredded). The relay makes a lead's key with its first
//! encrypted message; the commit path shreds it with the erasure.

use super::*;

/// Keys read per statement.
const KEYS_PER_READ: usize = 500;

pub(super) const SHRED_LEAD_KEY: &str =
    "INSERT INTO lead_keys (lead_ext_id, wrapped_key, created_at, shredded_at)
     VALUES ($1, NULL, $2, $2)
     ON CONFLICT (lead_ext_id) DO UPDATE SET wrapped_key = NULL, shredded_at = excluded.shredded_at";

/// A lead erased and then started anew (`gdpr.recreate_after_erasure`)
/// gets a new key with its next message.
pub(super) const FORGET_SHREDDED_KEY: &str =
    "DELETE FROM lead_keys WHERE lead_ext_id = $1 AND wrapped_key IS NULL";

store_concern! {
    /// Lead data keys for crypto-shredding: made once per lead, shredded by its erasure.
    pub trait LeadKeys {
        /// Stores each `(lead, wrapped key)` whose lead has no row yet, then
        /// returns every one of those leads' rows: `Some(key)`, or `None`
        /// for a lead whose key was shredded (erased) before or meanwhile.
        async fn ensure_lead_keys(
            &self,
            new: &[(String, String)],
            now: i64,
        ) -> Result<HashMap<String, Option<String>>, StoreError> {
            for (lead, wrapped) in new {
                sqlx::query(
                    "INSERT INTO lead_keys (lead_ext_id, wrapped_key, created_at)
                     VALUES ($1, $2, $3) ON CONFLICT (lead_ext_id) DO NOTHING",
                )
                .bind(lead)
                .bind(wrapped)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
            let leads: Vec<&str> = new.iter().map(|(l, _)| l.as_str()).collect();
            self.lead_keys(&leads).await
        }

        /// The rows of `leads` that exist: `Some(key)`, or `None` once shredded.
        async fn lead_keys(
            &self,
            leads: &[&str],
        ) -> Result<HashMap<String, Option<String>>, StoreError> {
            let mut out = HashMap::new();
            for chunk in leads.chunks(KEYS_PER_READ) {
                let sql = format!(
                    "SELECT lead_ext_id, wrapped_key FROM lead_keys WHERE lead_ext_id IN ({})",
                    placeholders(chunk.len())
                );
                let mut query = sqlx::query_as::<_, (String, Option<String>)>(&sql);
                for lead in chunk {
                    query = query.bind(*lead);
                }
                out.extend(query.fetch_all(&self.pool).await?);
            }
            Ok(out)
        }
    }
}
