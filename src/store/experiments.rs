//! Experiment memberships, counted per variant.

use super::*;
use crate::core::nurture::experiments::VariantCounts;

store_concern! {
    /// Experiment memberships, counted per variant.
    pub trait Experiments {
        /// Per experiment and variant: leads enrolled, replied and converted.
        async fn experiment_counts(&self) -> Result<Vec<VariantCounts>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT experiment, variant, COUNT(*) AS enrolled,
                    COUNT(replied_at) AS replied, COUNT(converted_at) AS converted
                 FROM experiment_members GROUP BY experiment, variant
                 ORDER BY experiment, variant",
            )
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
