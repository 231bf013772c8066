//! The funnel of a cohort: of the leads created in a period, how many
//! reached each stage of the open pipeline and closed_won, the conversion
//! from each stage to the next and to closed_won, and how many were lost.
//!
//! "Reached" counts a lead at every stage up to the furthest it entered,
//! as a CRM's funnel report does: a lead moved from new straight to
//! proposal passed contacted and qualified too. closed_lost is not a step
//! of the funnel (a lead is lost from any stage); it is counted beside it.

use serde::Serialize;

use crate::events::Stage;

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
