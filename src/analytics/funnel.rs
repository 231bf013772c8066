//! The funnel of a cohort: of the leads created in a period, how many
//! reached each stage of the open pipeline and closed_won, the conversion
//! from each stage to the next and to closed_won, and how many were lost.
//!
//! "Reached" counts a lead at every stage up to the furthest it entered,
//! as a CRM's funnel report does: a lead moved from new straight to
//! proposal passed contacted and qualified too. closed_lost is not a step
//! of the funnel (a lead is lost from any stage); it is counted beside it.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::TransitionRow;
use crate::events::{Millis, Stage, MILLIS_PER_DAY};

/// The funnel's steps, in order.
pub const STEPS: [Stage; 6] = [
    Stage::New,
    Stage::Contacted,
    Stage::Qualified,
    Stage::Proposal,
    Stage::Negotiation,
    Stage::ClosedWon,
];

/// A step's place in [`STEPS`]; closed_lost has none.
pub fn step_of(stage: Stage) -> Option<usize> {
    STEPS.iter().position(|s| *s == stage)
}

/// Leads of the cohort by the furthest step they entered and whether they
/// were lost, as the store aggregates them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FurthestCount {
    /// Index into [`STEPS`].
    pub furthest: i32,
    pub lost: bool,
    pub leads: i64,
}

/// A lead's place in the funnel, as its `lead_funnel` row keeps it: when
/// it was created (its creation transition), the furthest step it entered
/// (-1 before any) and whether it was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct FunnelPlace {
    pub created_at: Option<Millis>,
    pub furthest: i32,
    pub lost: bool,
}

/// A bucket of `lead_funnel_days`: the UTC day a lead was created on (days
/// since 1970-01-01), its furthest step, whether it was lost.
pub type DayBucket = (i64, i32, bool);

impl FunnelPlace {
    /// The place of a lead with no transition stored.
    pub const UNSEEN: FunnelPlace = FunnelPlace {
        created_at: None,
        furthest: -1,
        lost: false,
    };

    /// The place transition rows give: the creation time if they hold the
    /// creation, the furthest step among them, whether one is a loss.
    pub fn of_rows(rows: &[TransitionRow]) -> FunnelPlace {
        FunnelPlace {
            created_at: rows.iter().find(|r| r.seq == 0).map(|r| r.at),
            furthest: rows
                .iter()
                .filter_map(|r| r.to_stage.parse::<Stage>().ok().and_then(step_of))
                .max()
                .map_or(-1, |s| s as i32),
            lost: rows
                .iter()
                .any(|r| r.to_stage == Stage::ClosedLost.as_str()),
        }
    }

    /// The place after more rows: the first creation, the furthest step,
    /// any loss (a row stored twice changes nothing).
    pub fn merge(self, later: FunnelPlace) -> FunnelPlace {
        FunnelPlace {
            created_at: self.created_at.or(later.created_at),
            furthest: self.furthest.max(later.furthest),
            lost: self.lost || later.lost,
        }
    }

    /// The bucket a lead is counted in; none before its creation is stored
    /// (a cohort is by creation time).
    pub fn bucket(&self) -> Option<DayBucket> {
        self.created_at
            .map(|at| (at.div_euclid(MILLIS_PER_DAY), self.furthest, self.lost))
    }
}

/// What the moves of leads from one place to another change in the day
/// buckets, buckets in order (so that concurrent batches take the rows'
/// locks in one order), unchanged ones left out.
pub fn bucket_changes(
    before: &HashMap<String, FunnelPlace>,
    after: &HashMap<String, FunnelPlace>,
) -> BTreeMap<DayBucket, i64> {
    let mut changes = BTreeMap::new();
    for (lead, now) in after {
        let was = before.get(lead).copied().unwrap_or(FunnelPlace::UNSEEN);
        if was == *now {
            continue;
        }
        if let Some(bucket) = was.bucket() {
            *changes.entry(bucket).or_insert(0) -= 1;
        }
        if let Some(bucket) = now.bucket() {
            *changes.entry(bucket).or_insert(0) += 1;
        }
    }
    changes.retain(|_, change| *change != 0);
    changes
}

/// How the store counts the cohort created in `[from, until)`: the whole
/// UTC days `first_day..end_day` from the day buckets, the moments before
/// and after them, `[from, lo)` and `[hi, until)`, lead by lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CohortCover {
    pub first_day: i64,
    pub end_day: i64,
    pub lo: Millis,
    pub hi: Millis,
}

pub fn cohort_cover(from: Millis, until: Millis) -> CohortCover {
    let day = MILLIS_PER_DAY;
    // The first day start at or after `from`, the last at or before `until`;
    // neither overflows at the ends of the range (i64::MIN, i64::MAX).
    let up = from + (day - from.rem_euclid(day)) % day;
    let down = until - until.rem_euclid(day);
    let lo = up.min(until).max(from);
    let hi = down.max(lo).min(until.max(lo));
    let (first_day, end_day) = if lo < hi {
        (lo.div_euclid(day), hi.div_euclid(day))
    } else {
        (0, 0)
    };
    CohortCover {
        first_day,
        end_day,
        lo,
        hi,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FunnelStep {
    pub stage: Stage,
    pub reached: i64,
    /// Of those that reached this step, the share that reached the next
    /// (none for closed_won, or when none reached this one).
    pub to_next: Option<f64>,
    /// Of those that reached this step, the share that reached closed_won.
    pub to_won: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Funnel {
    /// Leads created in the period.
    pub created: i64,
    pub steps: Vec<FunnelStep>,
    pub lost: i64,
}

pub fn funnel(counts: &[FurthestCount]) -> Funnel {
    let mut at_furthest = [0i64; STEPS.len()];
    let mut lost = 0;
    for c in counts {
        let step = (c.furthest.max(0) as usize).min(STEPS.len() - 1);
        at_furthest[step] += c.leads;
        if c.lost {
            lost += c.leads;
        }
    }
    // Reached step i: furthest at i or beyond.
    let mut reached = [0i64; STEPS.len()];
    let mut beyond = 0;
    for i in (0..STEPS.len()).rev() {
        beyond += at_furthest[i];
        reached[i] = beyond;
    }
    let share = |part: i64, whole: i64| (whole > 0).then(|| part as f64 / whole as f64);
    let won = reached[STEPS.len() - 1];
    let steps = STEPS
        .iter()
        .enumerate()
        .map(|(i, stage)| FunnelStep {
            stage: *stage,
            reached: reached[i],
            to_next: reached.get(i + 1).and_then(|next| share(*next, reached[i])),
            to_won: share(won, reached[i]),
        })
        .collect();
    Funnel {
        created: reached[0],
        steps,
        lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(furthest: Stage, lost: bool, leads: i64) -> FurthestCount {
        FurthestCount {
            furthest: step_of(furthest).unwrap() as i32,
            lost,
            leads,
        }
    }

    /// Every moment of `[from, until)` is counted once: by its day bucket
    /// when its whole day is inside, else lead by lead.
    #[test]
    fn a_cohort_is_covered_by_whole_days_and_two_edges() {
        let day = MILLIS_PER_DAY;
        for (from, until) in [
            (0, 10 * day),
            (5, 10 * day + 7),
            (-day - 3, 2 * day + 1),
            (day + 1, day + 9),
            (3 * day, 3 * day),
            (i64::MIN, i64::MAX),
            (7, 3),
        ] {
            let c = cohort_cover(from, until);
            let moments = [from, from + 1, until - 1, 0, day - 1, day, day + 5, 3 * day]
                .into_iter()
                .chain([from.saturating_add(day), until.saturating_sub(day)]);
            for at in moments {
                let by_day = (c.first_day..c.end_day).contains(&at.div_euclid(day));
                let by_lead = (from..c.lo).contains(&at) || (c.hi..until).contains(&at);
                let inside = (from..until).contains(&at);
                assert_eq!(
                    by_day as u8 + by_lead as u8,
                    inside as u8,
                    "{from}..{until} at {at}: {c:?}"
                );
            }
        }
        let all = cohort_cover(i64::MIN, i64::MAX);
        assert!(
            all.first_day < -1_000_000 && all.end_day > 1_000_000,
            "{all:?}"
        );
        let days = cohort_cover(2 * day, 5 * day);
        assert_eq!(
            days,
            CohortCover {
                first_day: 2,
                end_day: 5,
                lo: 2 * day,
                hi: 5 * day
            }
        );
    }

    #[test]
    fn moving_a_lead_moves_its_count_between_day_buckets() {
        let day = MILLIS_PER_DAY;
        let place = |created_at, furthest, lost| FunnelPlace {
            created_at,
            furthest,
            lost,
        };
        let leads = |places: &[(&str, FunnelPlace)]| -> HashMap<String, FunnelPlace> {
            places.iter().map(|(l, p)| (l.to_string(), *p)).collect()
        };
        let before = leads(&[
            ("a", place(Some(day + 5), 0, false)),
            ("b", place(None, 2, false)),
            ("c", place(Some(3), 1, false)),
        ]);
        let after = leads(&[
            ("a", place(Some(day + 5), 3, false)),
            ("b", place(Some(2 * day), 2, false)),
            ("c", place(Some(3), 1, false)),
            ("d", place(Some(-1), 0, true)),
        ]);
        let changes: Vec<_> = bucket_changes(&before, &after).into_iter().collect();
        assert_eq!(
            changes,
            vec![
                ((-1, 0, true), 1),
                ((1, 0, false), -1),
                ((1, 3, false), 1),
                ((2, 2, false), 1),
            ]
        );
        let merged = place(Some(4), 2, false).merge(place(Some(9), 1, true));
        assert_eq!(merged, place(Some(4), 2, true));
        assert_eq!(FunnelPlace::UNSEEN.bucket(), None);
    }

    #[test]
    fn a_lead_counts_at_every_step_up_to_its_furthest() {
        let f = funnel(&[
            count(Stage::New, false, 50),
            count(Stage::New, true, 10),
            count(Stage::Contacted, true, 20),
            count(Stage::Proposal, false, 15),
            count(Stage::ClosedWon, false, 5),
        ]);
        assert_eq!(f.created, 100);
        let reached: Vec<i64> = f.steps.iter().map(|s| s.reached).collect();
        assert_eq!(reached, vec![100, 40, 20, 20, 5, 5]);
        assert_eq!(f.lost, 30);
        assert_eq!(f.steps[0].to_next, Some(0.4));
        assert_eq!(f.steps[1].to_won, Some(5.0 / 40.0));
        assert_eq!(f.steps[5].to_next, None);
        assert_eq!(f.steps[5].to_won, Some(1.0));
        let empty = funnel(&[]);
        assert_eq!(empty.created, 0);
        assert!(empty.steps.iter().all(|s| s.to_won.is_none()));
    }
}
