//! REST API keys: a name, a scope and the SHA-256 of the secret; the
//! secret itself is never stored (`api::keys` makes and checks them).

use super::*;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub name: String,
    pub scope: String,
    pub secret_sha256: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

store_concern! {
    /// REST API keys: add, look up, list, revoke.
    pub trait ApiKeys {
        async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO api_keys (key_id, name, scope, secret_sha256, created_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.key_id)
            .bind(&key.name)
            .bind(&key.scope)
            .bind(&key.secret_sha256)
            .bind(key.created_at)
            .bind(key.revoked_at)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT key_id, name, scope, secret_sha256, created_at, revoked_at
                 FROM api_keys WHERE key_id = $1",
            )
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?)
        }

        /// Every key, oldest first.
        async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT key_id, name, scope, secret_sha256, created_at, revoked_at
                 FROM api_keys ORDER BY created_at, key_id",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        /// Revokes a key by id or name; returns how many keys it revoked
        /// (a key revoked before is not revoked again).
        async fn revoke_api_key(&self, id_or_name: &str, at: i64) -> Result<u64, StoreError> {
            Ok(sqlx::query(
                "UPDATE api_keys SET revoked_at = $2
                 WHERE (key_id = $1 OR name = $1) AND revoked_at IS NULL",
            )
            .bind(id_or_name)
            .bind(at)
            .execute(&self.pool)
            .await?
            .rows_affected())
        }
    }
}
