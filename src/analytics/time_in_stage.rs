//! Time in each stage: from a lead's entering it (its creation, or a stage
//! change to it) to its next transition. A lead still in the stage is a
//! censored observation at the data's latest transition time (the
//! processor's clock as the store knows it, so a replay on event time gives
//! what the live run gave), and the figures are Kaplan–Meier's: the median
//! and p90 where the estimate reaches them, and the mean restricted to the
//! longest follow-up. A plain mean of the leads that left would say a
//! stage is quick exactly when leads get stuck in it.

use serde::Serialize;

use super::TransitionRow;
use crate::events::{Stage, MILLIS_PER_DAY};
use crate::forecast::time_to_close::{CloseCurve, Observation, Outcome};

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StageTime {
    pub stage: Stage,
    /// Entries into the stage in the period.
    pub entered: usize,
    /// Of those, the ones that left it since.
    pub left: usize,
    pub still_in: usize,
    pub mean_days: Option<f64>,
    pub median_days: Option<f64>,
    pub p90_days: Option<f64>,
}

/// Per open stage, over the entries in `[from, until)`. `rows` are every
/// transition, by lead and sequence, as the store lists them.
pub fn time_in_stage(rows: &[TransitionRow], from: i64, until: i64) -> Vec<StageTime> {
    let now = super::latest_at(rows);
    let open_stages: Vec<Stage> = Stage::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_closed())
        .collect();
    let mut observations: Vec<Vec<Observation>> = vec![Vec::new(); open_stages.len()];
    for (i, row) in rows.iter().enumerate() {
        let Some(stage) = open_stages.iter().position(|s| s.as_str() == row.to_stage) else {
            continue;
        };
        if row.at < from || row.at >= until {
            continue;
        }
        let next = rows.get(i + 1).filter(|n| n.lead_ext_id == row.lead_ext_id);
        // Left: the "close" of the curve (it treats both outcomes alike in
        // the quantiles and the mean used here).
        let (end, outcome) = match next {
            Some(n) => (n.at, Outcome::Won),
            None => (now, Outcome::Open),
        };
        observations[stage].push(Observation {
            days: (end - row.at) as f64 / MILLIS_PER_DAY as f64,
            outcome,
        });
    }
    open_stages
        .into_iter()
        .zip(observations)
        .map(|(stage, seen)| {
            let left = seen.iter().filter(|o| o.outcome != Outcome::Open).count();
            let curve = CloseCurve::estimate(&seen);
            StageTime {
                stage,
                entered: seen.len(),
                left,
                still_in: seen.len() - left,
                mean_days: (!seen.is_empty()).then(|| curve.restricted_mean_days()),
                median_days: curve.quantile(0.5),
                p90_days: curve.quantile(0.9),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::test_row as row;

    #[test]
    fn a_lead_still_in_a_stage_is_censored_not_dropped() {
        let rows = vec![
            row("A", 0, Stage::New, 0),
            row("A", 1, Stage::Contacted, 2),
            row("A", 2, Stage::ClosedWon, 6),
            row("B", 0, Stage::New, 0),
            row("B", 1, Stage::Contacted, 4),
            // C is still new at day 10, the latest transition.
            row("C", 0, Stage::New, 10),
            row("D", 0, Stage::New, 1),
            row("D", 1, Stage::Contacted, 10),
        ];
        let all = time_in_stage(&rows, i64::MIN, i64::MAX);
        let new = &all[0];
        assert_eq!(new.stage, Stage::New);
        assert_eq!((new.entered, new.left, new.still_in), (4, 3, 1));
        // Left after 2, 4 and 9 days; C censored at 0 days.
        assert_eq!(new.median_days, Some(4.0));
        let contacted = &all[1];
        // A left after 4 days; B (6 days) and D (0 days) are still in it.
        assert_eq!((contacted.entered, contacted.left), (3, 1));
        // D censored at once leaves A and B at risk: half leave at day 4.
        assert_eq!(contacted.median_days, Some(4.0));
        assert_eq!(contacted.p90_days, None, "B may still leave at any time");
        // 4 days at 1, then 2 more at a half, to B's follow-up of 6 days.
        assert!((contacted.mean_days.unwrap() - 5.0).abs() < 1e-12);
        assert!(all.iter().all(|s| !s.stage.is_closed()));
        // The period counts entries: from day 3, only B's, C's and D's later ones.
        let later = time_in_stage(&rows, 3 * MILLIS_PER_DAY, i64::MAX);
        assert_eq!(later[0].entered, 1);
        assert_eq!(later[1].entered, 2);
        assert_eq!(later[4].entered, 0);
        assert_eq!(later[4].mean_days, None);
    }
}
