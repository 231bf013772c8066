//! Per owner and per source, of the leads created in a period: leads,
//! contacted (reached contacted or beyond), won, lost, win rate (of the
//! closed), won value, and the median days from creation to close
//! (Kaplan–Meier, leads still open censored at the data's latest
//! transition).
//!
//! A lead's source is its creation row's; its owner is the one of its
//! latest transition (a lead handed over is the new owner's, as in a CRM's
//! owner report). A lead without one is under "(none)".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::funnel::step_of;
use super::history::{date_of, day_of, Trend};
use super::TransitionRow;
use crate::events::{Stage, MILLIS_PER_DAY};
use crate::forecast::time_to_close::{CloseCurve, Observation, Outcome};

crate::events::string_enum!(
    Dimension {
        Owner => "owner",
        Source => "source",
    }
);

pub const NONE: &str = "(none)";

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Group {
    pub value: String,
    pub leads: usize,
    pub contacted: usize,
    pub won: usize,
    pub lost: usize,
    /// won / (won + lost); none before the first close.
    pub win_rate: Option<f64>,
    pub won_value: f64,
    pub median_days_to_close: Option<f64>,
}

/// One lead's rows, creation first.
struct Lead<'a> {
    rows: &'a [TransitionRow],
}

impl Lead<'_> {
    fn created_at(&self) -> Option<i64> {
        self.rows.first().filter(|r| r.seq == 0).map(|r| r.at)
    }

    fn value_of(&self, dimension: Dimension) -> String {
        let value = match dimension {
            Dimension::Source => self.rows.first().and_then(|r| r.source.clone()),
            Dimension::Owner => self.rows.iter().rev().find_map(|r| r.owner.clone()),
        };
        value.unwrap_or_else(|| NONE.to_string())
    }

    fn close(&self) -> Option<&TransitionRow> {
        self.rows.iter().find(|r| {
            r.to_stage == Stage::ClosedWon.as_str() || r.to_stage == Stage::ClosedLost.as_str()
        })
    }

    fn contacted(&self) -> bool {
        let contacted = step_of(Stage::Contacted).expect("a funnel step");
        self.rows.iter().any(|r| {
            r.to_stage
                .parse::<Stage>()
                .ok()
                .and_then(step_of)
                .is_some_and(|s| s >= contacted)
        })
    }
}

/// Splits rows (by lead and sequence, as the store lists them) per lead.
fn leads(rows: &[TransitionRow]) -> Vec<Lead<'_>> {
    rows.chunk_by(|a, b| a.lead_ext_id == b.lead_ext_id)
        .map(|rows| Lead { rows })
        .collect()
}

pub fn breakdown(
    rows: &[TransitionRow],
    dimension: Dimension,
    from: i64,
    until: i64,
) -> Vec<Group> {
    let now = super::latest_at(rows);
    let mut groups: BTreeMap<String, (Group, Vec<Observation>)> = BTreeMap::new();
    for lead in leads(rows) {
        let Some(created) = lead.created_at().filter(|at| *at >= from && *at < until) else {
            continue;
        };
        let name = lead.value_of(dimension);
        let (group, seen) = groups.entry(name.clone()).or_insert_with(|| {
            let group = Group {
                value: name,
                leads: 0,
                contacted: 0,
                won: 0,
                lost: 0,
                win_rate: None,
                won_value: 0.0,
                median_days_to_close: None,
            };
            (group, Vec::new())
        });
        group.leads += 1;
        group.contacted += lead.contacted() as usize;
        let (end, outcome) = match lead.close() {
            Some(close) if close.to_stage == Stage::ClosedWon.as_str() => {
                group.won += 1;
                group.won_value += close.value.unwrap_or(0.0);
                (close.at, Outcome::Won)
            }
            Some(close) => {
                group.lost += 1;
                (close.at, Outcome::Lost)
            }
            None => (now, Outcome::Open),
        };
        seen.push(Observation {
            days: (end - created) as f64 / MILLIS_PER_DAY as f64,
            outcome,
        });
    }
    groups
        .into_values()
        .map(|(mut group, seen)| {
            let closed = group.won + group.lost;
            group.win_rate = (closed > 0).then(|| group.won as f64 / closed as f64);
            group.median_days_to_close = CloseCurve::estimate(&seen).quantile(0.5);
            group
        })
        .collect()
}

/// Open leads in one stage as of the data's latest transition.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StageValue {
    pub stage: Stage,
    pub leads: usize,
    /// Σ of their values (the stage change's deal value, else the lead's
    /// estimate when it was written); a lead without one adds nothing.
    pub value: f64,
}

/// Pipeline value by stage: every lead not closed, in its current stage (its
/// latest transition's), with the leads and their summed value per open
/// stage, in funnel order.
pub fn pipeline_by_stage(rows: &[TransitionRow]) -> Vec<StageValue> {
    let mut by_stage: Vec<StageValue> = Stage::ALL
        .iter()
        .filter(|s| !s.is_closed())
        .map(|&stage| StageValue {
            stage,
            leads: 0,
            value: 0.0,
        })
        .collect();
    for lead in leads(rows) {
        let Some(latest) = lead.rows.last() else {
            continue;
        };
        if let Some(open) = by_stage
            .iter_mut()
            .find(|s| s.stage.as_str() == latest.to_stage)
        {
            open.leads += 1;
            open.value += latest.value.unwrap_or(0.0);
        }
    }
    by_stage
}

/// One UTC day of the daily trends.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Day {
    /// YYYY-MM-DD.
    pub date: String,
    pub created: usize,
    pub contacted: usize,
    pub won: usize,
    pub lost: usize,
    pub won_value: f64,
}

/// Per UTC day of `[from, until)` with any transition: leads created, leads
/// that entered contacted, won and lost that day, and the value won.
pub fn daily(rows: &[TransitionRow], from: i64, until: i64) -> Vec<Day> {
    let mut days: BTreeMap<i64, Trend> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.at >= from && r.at < until) {
        days.entry(day_of(row.at)).or_default().add(row);
    }
    days.into_iter()
        .map(|(day, t)| Day {
            date: date_of(day),
            created: t.created,
            contacted: t.contacted,
            won: t.won,
            lost: t.lost,
            won_value: t.won_value,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lead: &str, seq: i32, to: Stage, day: i64, owner: &str, value: f64) -> TransitionRow {
        TransitionRow {
            owner: Some(owner.into()),
            source: Some(format!("src-{lead}")),
            value: Some(value),
            ..crate::analytics::test_row(lead, seq, to, day)
        }
    }

    #[test]
    fn leads_count_for_their_latest_owner_and_days_count_what_happened() {
        let rows = vec![
            row("A", 0, Stage::New, 0, "ana", 10.0),
            row("A", 1, Stage::Contacted, 1, "ana", 10.0),
            row("A", 2, Stage::ClosedWon, 3, "bo", 500.0),
            row("B", 0, Stage::New, 0, "ana", 20.0),
            row("B", 1, Stage::ClosedLost, 1, "ana", 20.0),
            row("C", 0, Stage::New, 1, "ana", 30.0),
        ];
        let owners = breakdown(&rows, Dimension::Owner, i64::MIN, i64::MAX);
        let names: Vec<&str> = owners.iter().map(|g| g.value.as_str()).collect();
        assert_eq!(names, vec!["ana", "bo"]);
        let (ana, bo) = (&owners[0], &owners[1]);
        assert_eq!((ana.leads, ana.contacted, ana.won, ana.lost), (2, 0, 0, 1));
        assert_eq!(ana.win_rate, Some(0.0));
        assert_eq!((bo.leads, bo.contacted, bo.won), (1, 1, 1));
        assert_eq!(bo.won_value, 500.0);
        assert_eq!(bo.median_days_to_close, Some(3.0));
        // C is open (censored at day 3): half of ana's leads closed by day 1.
        assert_eq!(ana.median_days_to_close, Some(1.0));
        let sources = breakdown(&rows, Dimension::Source, i64::MIN, i64::MAX);
        assert_eq!(sources.len(), 3);
        let days = daily(&rows, i64::MIN, i64::MAX);
        let seen: Vec<(&str, usize, usize, usize, usize)> = days
            .iter()
            .map(|d| (d.date.as_str(), d.created, d.contacted, d.won, d.lost))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("1970-01-01", 2, 0, 0, 0),
                ("1970-01-02", 1, 1, 0, 1),
                ("1970-01-04", 0, 0, 1, 0),
            ]
        );
        assert_eq!(days[2].won_value, 500.0);
        // Only C is open, still new, worth its estimate.
        let pipeline = pipeline_by_stage(&rows);
        assert_eq!(pipeline[0].stage, Stage::New);
        assert_eq!((pipeline[0].leads, pipeline[0].value), (1, 30.0));
        assert!(pipeline[1..].iter().all(|s| s.leads == 0));
    }
}
