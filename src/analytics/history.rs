//! The daily history kept in `lead_analytics`: one row per UTC day, metric
//! and dimension, made once the processor's clock has passed the day (see
//! `pipeline::analytics`), from the transitions of that day and the open
//! pipeline at its end. A day's rows are a function of the transitions
//! stored, so a replay on event time stores the rows the live run stored.
//!
//! Rows of a day:
//! - dimension `all` (value ""): `created`, `contacted` (entered contacted),
//!   `won`, `lost`, `won_value`, always written, zeros included, so that
//!   every made day is present;
//! - dimensions `owner` and `source`: the same five, for the values that
//!   had any; a transition counts for the owner it names (the owner when it
//!   happened) and the lead's source;
//! - dimension `stage`: `entered` (transitions into the stage that day,
//!   creations included), `open_leads` and `open_value` (the pipeline at the
//!   end of the day, every open stage, zeros included).

use std::collections::BTreeMap;

use serde::Serialize;

use super::breakdown::NONE;
use super::TransitionRow;
use crate::events::{Millis, Stage, MILLIS_PER_DAY};

/// One row of `lead_analytics`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AnalyticsRow {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub metric: String,
    /// `all`, `owner`, `source` or `stage`.
    pub dimension: String,
    /// The owner, source or stage; "" for `all`.
    pub dimension_value: String,
    pub value: f64,
}

/// Open leads of one stage at a moment, as the store aggregates them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OpenStage {
    pub stage: String,
    pub leads: i64,
    pub value: Option<f64>,
}

/// The day (since 1970-01-01 UTC) a moment falls on.
pub fn day_of(at: Millis) -> i64 {
    at.div_euclid(MILLIS_PER_DAY)
}

/// `YYYY-MM-DD` of a day number.
pub fn date_of(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * MILLIS_PER_DAY)
        .map(|d| d.date_naive().to_string())
        .unwrap_or_default()
}

/// The five daily trend counts of one group (also `breakdown::daily`'s).
#[derive(Default)]
pub(super) struct Trend {
    pub(super) created: usize,
    pub(super) contacted: usize,
    pub(super) won: usize,
    pub(super) lost: usize,
    pub(super) won_value: f64,
}

impl Trend {
    pub(super) fn add(&mut self, row: &TransitionRow) {
        match (row.seq, row.to_stage.parse::<Stage>()) {
            (0, _) => self.created += 1,
            (_, Ok(Stage::Contacted)) => self.contacted += 1,
            (_, Ok(Stage::ClosedWon)) => {
                self.won += 1;
                self.won_value += row.value.unwrap_or(0.0);
            }
            (_, Ok(Stage::ClosedLost)) => self.lost += 1,
            _ => {}
        }
    }

    fn rows(&self, day: i64, dimension: &str, value: &str) -> impl Iterator<Item = AnalyticsRow> {
        let row = |metric: &str, v: f64| AnalyticsRow {
            day,
            metric: metric.into(),
            dimension: dimension.into(),
            dimension_value: value.into(),
            value: v,
        };
        [
            row("created", self.created as f64),
            row("contacted", self.contacted as f64),
            row("won", self.won as f64),
            row("lost", self.lost as f64),
            row("won_value", self.won_value),
        ]
        .into_iter()
    }
}

/// The rows of `day` from its transitions (`of_day`: those with `at` in the
/// day) and the open pipeline at its end.
pub fn day_rows(day: i64, of_day: &[TransitionRow], open: &[OpenStage]) -> Vec<AnalyticsRow> {
    let mut all = Trend::default();
    let mut groups: BTreeMap<(&str, String), Trend> = BTreeMap::new();
    let mut entered: BTreeMap<&str, f64> = BTreeMap::new();
    for row in of_day.iter().filter(|r| day_of(r.at) == day) {
        all.add(row);
        let owner = row.owner.clone().unwrap_or_else(|| NONE.into());
        let source = row.source.clone().unwrap_or_else(|| NONE.into());
        groups.entry(("owner", owner)).or_default().add(row);
        groups.entry(("source", source)).or_default().add(row);
        *entered.entry(row.to_stage.as_str()).or_default() += 1.0;
    }
    let mut rows: Vec<AnalyticsRow> = all.rows(day, "all", "").collect();
    for ((dimension, value), trend) in &groups {
        rows.extend(trend.rows(day, dimension, value));
    }
    let stage_row = |metric: &str, stage: &str, value: f64| AnalyticsRow {
        day,
        metric: metric.into(),
        dimension: "stage".into(),
        dimension_value: stage.into(),
        value,
    };
    for (stage, n) in entered {
        rows.push(stage_row("entered", stage, n));
    }
    for stage in Stage::ALL.iter().filter(|s| !s.is_closed()) {
        let o = open.iter().find(|o| o.stage == stage.as_str());
        let (leads, value) = o.map_or((0, 0.0), |o| (o.leads, o.value.unwrap_or(0.0)));
        rows.push(stage_row("open_leads", stage.as_str(), leads as f64));
        rows.push(stage_row("open_value", stage.as_str(), value));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::test_row;

    fn metric(rows: &[AnalyticsRow], metric: &str, dimension: &str, value: &str) -> Option<f64> {
        rows.iter()
            .find(|r| r.metric == metric && r.dimension == dimension && r.dimension_value == value)
            .map(|r| r.value)
    }

    #[test]
    fn a_day_counts_its_own_transitions_per_owner_and_source_and_the_open_pipeline() {
        let with = |row: TransitionRow, owner: &str, source: &str, value: f64| TransitionRow {
            owner: Some(owner.into()),
            source: Some(source.into()),
            value: Some(value),
            ..row
        };
        let of_day = vec![
            with(test_row("A", 0, Stage::New, 3), "ana", "web", 10.0),
            with(test_row("A", 1, Stage::Contacted, 3), "ana", "web", 10.0),
            with(test_row("B", 2, Stage::ClosedWon, 3), "bo", "ads", 700.0),
            with(test_row("C", 1, Stage::ClosedLost, 3), "bo", "web", 5.0),
            // Another day's row is not this day's.
            with(test_row("D", 0, Stage::New, 4), "ana", "web", 1.0),
        ];
        let open = vec![OpenStage {
            stage: "contacted".into(),
            leads: 4,
            value: Some(40.0),
        }];
        let rows = day_rows(3, &of_day, &open);
        assert!(rows.iter().all(|r| r.day == 3));
        assert_eq!(metric(&rows, "created", "all", ""), Some(1.0));
        assert_eq!(metric(&rows, "contacted", "all", ""), Some(1.0));
        assert_eq!(metric(&rows, "won", "all", ""), Some(1.0));
        assert_eq!(metric(&rows, "lost", "all", ""), Some(1.0));
        assert_eq!(metric(&rows, "won_value", "all", ""), Some(700.0));
        assert_eq!(metric(&rows, "won", "owner", "bo"), Some(1.0));
        assert_eq!(metric(&rows, "lost", "owner", "bo"), Some(1.0));
        assert_eq!(metric(&rows, "created", "owner", "ana"), Some(1.0));
        assert_eq!(metric(&rows, "won_value", "source", "ads"), Some(700.0));
        assert_eq!(metric(&rows, "lost", "source", "web"), Some(1.0));
        assert_eq!(metric(&rows, "entered", "stage", "closed_won"), Some(1.0));
        assert_eq!(metric(&rows, "entered", "stage", "new"), Some(1.0));
        assert_eq!(metric(&rows, "open_leads", "stage", "contacted"), Some(4.0));
        assert_eq!(
            metric(&rows, "open_value", "stage", "contacted"),
            Some(40.0)
        );
        assert_eq!(metric(&rows, "open_leads", "stage", "new"), Some(0.0));
        assert_eq!(metric(&rows, "open_leads", "stage", "closed_won"), None);
        // A quiet day still has its totals, all zero.
        let quiet = day_rows(9, &[], &[]);
        assert_eq!(metric(&quiet, "created", "all", ""), Some(0.0));
        assert!(quiet.iter().all(|r| r.value == 0.0));
        assert_eq!(date_of(3), "1970-01-04");
        assert_eq!(day_of(-1), -1);
    }
}
