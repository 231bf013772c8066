//! Stage transitions as rows: each lead's creation and each stage change,
//! written by the commit path in the batch's transaction (`batch.rs`), read
//! by the analytics as SQL aggregates.

use super::*;

use crate::analytics::funnel::{cohort_cover, FurthestCount};
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

/// The lead's place as the commit path merged it (`FunnelPlace::merge`
/// of the stored place and the new rows).
pub(super) const UPSERT_FUNNEL: &str = "INSERT INTO lead_funnel
    (lead_ext_id, created_at, furthest, lost) VALUES ($1, $2, $3, $4)
    ON CONFLICT (lead_ext_id) DO UPDATE SET
        created_at = excluded.created_at, furthest = excluded.furthest, lost = excluded.lost";

pub(super) const ADD_TO_FUNNEL_DAY: &str = "INSERT INTO lead_funnel_days
    (day, furthest, lost, leads) VALUES ($1, $2, $3, $4)
    ON CONFLICT (day, furthest, lost) DO UPDATE SET leads = lead_funnel_days.leads + excluded.leads";

/// Rows of `lead_funnel` read per statement by the commit path.
pub(super) const FUNNEL_PLACES_PER_READ: usize = 500;

/// The statement that reads the stored places of `n` leads.
pub(super) fn select_funnel_places(n: usize) -> String {
    let list: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "SELECT lead_ext_id, created_at, furthest, lost FROM lead_funnel WHERE lead_ext_id IN ({})",
        list.join(", ")
    )
}

store_concern! {
    /// Stage transitions as rows: written with the batch, read in order.
    pub trait Transitions {
        /// Leads created in `[from, until)` by the furthest funnel step they
        /// entered and whether they were lost.
        // Whole days from their buckets, so that the funnel of all time
        // reads a row per day and bucket, not one per lead; the ends of a
        // period that are not whole days lead by lead.
        async fn furthest_stages(&self, from: i64, until: i64) -> Result<Vec<FurthestCount>, StoreError> {
            let cover = cohort_cover(from, until);
            Ok(sqlx::query_as(
                "SELECT furthest, lost, CAST(SUM(leads) AS BIGINT) AS leads FROM (
                     SELECT furthest, lost, leads FROM lead_funnel_days
                     WHERE day >= $3 AND day < $4
                     UNION ALL
                     SELECT furthest, lost, 1 AS leads FROM lead_funnel
                     WHERE (created_at >= $1 AND created_at < $5)
                        OR (created_at >= $6 AND created_at < $2)
                 ) AS cohort
                 GROUP BY furthest, lost HAVING SUM(leads) > 0 ORDER BY furthest, lost",
            )
            .bind(from)
            .bind(until)
            .bind(cover.first_day)
            .bind(cover.end_day)
            .bind(cover.lo)
            .bind(cover.hi)
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
    use crate::analytics::funnel::{FunnelPlace, STEPS};

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
        let place = |created_at, furthest, lost| FunnelPlace {
            created_at,
            furthest,
            lost,
        };
        assert_eq!(FunnelPlace::of_rows(&rows), place(Some(5), 3, false));
        assert_eq!(FunnelPlace::of_rows(&rows[1..]), place(None, 3, false));
        let lost = TransitionRow {
            seq: 2,
            to_stage: "closed_lost".into(),
            ..rows_template()
        };
        assert_eq!(FunnelPlace::of_rows(&[lost]), place(None, -1, true));
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
