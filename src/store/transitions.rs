//! Stage transitions as rows: each lead's creation and each stage change,
//! written by the commit path in the batch's transaction (`batch.rs`), read
//! by the analytics as SQL aggregates.

use super::*;

use crate::analytics::funnel::{step_of, FurthestCount};
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

pub(super) const UPSERT_FUNNEL: &str = "INSERT INTO lead_funnel
    (lead_ext_id, created_at, furthest, lost) VALUES ($1, $2, $3, $4)
    ON CONFLICT (lead_ext_id) DO UPDATE SET
        created_at = COALESCE(lead_funnel.created_at, excluded.created_at),
        furthest = CASE WHEN excluded.furthest > lead_funnel.furthest
            THEN excluded.furthest ELSE lead_funnel.furthest END,
        lost = lead_funnel.lost OR excluded.lost";

/// What new transition rows of one lead add to its `lead_funnel` row: the
/// creation time (if they hold the creation), the furthest funnel step
/// among them (-1 for none) and whether one is a loss. The upsert keeps the
/// first creation, the furthest step and any loss, as the rows themselves
/// are kept (a repeated row is not written again).
pub fn funnel_update(rows: &[TransitionRow]) -> (Option<i64>, i32, bool) {
    let created = rows.iter().find(|r| r.seq == 0).map(|r| r.at);
    let furthest = rows
        .iter()
        .filter_map(|r| r.to_stage.parse::<Stage>().ok().and_then(step_of))
        .max()
        .map_or(-1, |s| s as i32);
    let lost = rows
        .iter()
        .any(|r| r.to_stage == Stage::ClosedLost.as_str());
    (created, furthest, lost)
}

store_concern! {
    /// Stage transitions as rows: written with the batch, read in order.
    pub trait Transitions {
        /// Leads created in `[from, until)` by the furthest funnel step they
        /// entered and whether they were lost.
        async fn furthest_stages(&self, from: i64, until: i64) -> Result<Vec<FurthestCount>, StoreError> {
            Ok(sqlx::query_as(
                "SELECT furthest, lost, COUNT(*) AS leads FROM lead_funnel
                 WHERE created_at >= $1 AND created_at < $2
                 GROUP BY furthest, lost ORDER BY furthest, lost",
            )
            .bind(from)
            .bind(until)
            .fetch_all(&self.pool)
            .await?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::funnel::STEPS;

    /// The migrations fill `lead_funnel` from the rows already stored with
    /// the steps spelled out in SQL: in the order of [`STEPS`].
    #[test]
    fn the_migrations_number_the_funnel_steps_as_the_code_does() {
        let case: String = STEPS
            .iter()
            .enumerate()
            .map(|(i, s)| format!("WHEN '{}' THEN {i} ", s.as_str()))
            .collect();
        for sql in [
            include_str!("../../migrations/sqlite/0011_lead_funnel.sql"),
            include_str!("../../migrations/postgres/0011_lead_funnel.sql"),
        ] {
            let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains(&format!("CASE to_stage {case}ELSE -1 END")),
                "{flat}"
            );
        }
        let rows = [
            TransitionRow {
                seq: 0,
                from_stage: None,
                to_stage: "new".into(),
                at: 5,
                ..rows_template()
            },
            TransitionRow {
                to_stage: "proposal".into(),
                at: 9,
                ..rows_template()
            },
        ];
        assert_eq!(funnel_update(&rows), (Some(5), 3, false));
        assert_eq!(funnel_update(&rows[1..]), (None, 3, false));
        let lost = TransitionRow {
            seq: 2,
            to_stage: "closed_lost".into(),
            ..rows_template()
        };
        assert_eq!(funnel_update(&[lost]), (None, -1, true));
    }

    fn rows_template() -> TransitionRow {
        TransitionRow {
            lead_ext_id: "L".into(),
            seq: 1,
            from_stage: Some("new".into()),
            to_stage: "contacted".into(),
            at: 7,
            owner: None,
            source: None,
            value: None,
            event_id: None,
        }
    }
}
