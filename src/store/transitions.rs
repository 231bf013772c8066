//! Stage transitions as rows: each lead's creation and each stage change,
//! written by the commit path in the batch's transaction (`batch.rs`), read
//! by the analytics as SQL aggregates.

use super::*;

use crate::core::state::LeadState;
use crate::events::Stage;

/// One row of `lead_transitions`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TransitionRow {
    pub lead_ext_id: String,
    /// 0: the lead's creation; n: its n-th stage change.
    pub seq: i32,
    pub from_stage: Option<String>,
    pub to_stage: String,
    pub at: i64,
    pub owner: Option<String>,
    pub source: Option<String>,
    pub value: Option<f64>,
    pub event_id: Option<String>,
}

/// The rows of `state` the store does not hold yet: its creation unless
/// `creation_stored`, and its stage changes after the first
/// `stored_changes`.
pub fn new_transitions(
    state: &LeadState,
    creation_stored: bool,
    stored_changes: usize,
) -> Vec<TransitionRow> {
    let mut rows = Vec::new();
    if let (false, Some(created_at)) = (creation_stored, state.created_at) {
        // The stage it was created in: the one its first change left.
        let initial = match state.stage_history.first() {
            Some(first) => first.from.unwrap_or(Stage::New),
            None => state.stage,
        };
        rows.push(TransitionRow {
            lead_ext_id: state.lead_ext_id.clone(),
            seq: 0,
            from_stage: None,
            to_stage: initial.as_str().to_string(),
            at: created_at,
            owner: state.owner.clone(),
            source: state.source.clone(),
            value: state.estimated_value,
            event_id: None,
        });
    }
    for (i, t) in state.stage_history.iter().enumerate().skip(stored_changes) {
        rows.push(TransitionRow {
            lead_ext_id: state.lead_ext_id.clone(),
            seq: i as i32 + 1,
            from_stage: t.from.map(|s| s.as_str().to_string()),
            to_stage: t.to.as_str().to_string(),
            at: t.at,
            owner: t.owner.clone().or_else(|| state.owner.clone()),
            source: state.source.clone(),
            value: t.deal_value.or(state.estimated_value),
            event_id: Some(t.event_id.clone()),
        });
    }
    rows
}

pub(super) const INSERT_TRANSITION: &str = "INSERT INTO lead_transitions
    (lead_ext_id, seq, from_stage, to_stage, at, owner, source, value, event_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (lead_ext_id, seq) DO NOTHING";

store_concern! {
    /// Stage transitions as rows: written with the batch, read in order.
    pub trait Transitions {
        /// Every transition (of one lead when `lead` is given), by lead and
        /// sequence.
        // `$1 = ''` rather than `$1 IS NULL`: PostgreSQL cannot type a
        // parameter that is only tested for NULL.
        async fn transitions(&self, lead: Option<&str>) -> Result<Vec<TransitionRow>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT lead_ext_id, seq, from_stage, to_stage, at, owner, source, value, event_id
                 FROM lead_transitions WHERE ($1 = '' OR lead_ext_id = $1)
                 ORDER BY lead_ext_id, seq",
            )
            .bind(lead.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
