//! Stage transitions as rows: each lead's creation and each stage change,
//! written by the commit path in the batch's transaction (`batch.rs`), read
//! by the analytics as SQL aggregates.

use super::*;

use crate::analytics::funnel::{FurthestCount, STEPS};
use crate::core::state::LeadState;
use crate::events::Stage;

pub use crate::analytics::TransitionRow;

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

/// `CASE to_stage WHEN 'new' THEN 0 ... END`: a row's funnel step, -1 for
/// closed_lost; built from [`STEPS`] so that the two orders cannot differ.
fn step_case() -> String {
    let mut case = String::from("CASE t.to_stage");
    for (i, stage) in STEPS.iter().enumerate() {
        case.push_str(&format!(" WHEN '{}' THEN {i}", stage.as_str()));
    }
    case.push_str(" ELSE -1 END");
    case
}

store_concern! {
    /// Stage transitions as rows: written with the batch, read in order.
    pub trait Transitions {
        /// Leads created in `[from, until)` by the furthest funnel step they
        /// entered and whether they were lost.
        async fn furthest_stages(&self, from: i64, until: i64) -> Result<Vec<FurthestCount>, StoreError> {
            let sql = format!(
                "SELECT furthest, lost, COUNT(*) AS leads FROM (
                    SELECT t.lead_ext_id,
                        MAX({case}) AS furthest,
                        MAX(CASE WHEN t.to_stage = 'closed_lost' THEN 1 ELSE 0 END) = 1 AS lost
                    FROM lead_transitions t
                    JOIN lead_transitions c ON c.lead_ext_id = t.lead_ext_id AND c.seq = 0
                    WHERE c.at >= $1 AND c.at < $2
                    GROUP BY t.lead_ext_id
                 ) per_lead GROUP BY furthest, lost ORDER BY furthest, lost",
                case = step_case()
            );
            Ok(sqlx::query_as(&sql).bind(from).bind(until).fetch_all(&self.pool).await?)
        }

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
