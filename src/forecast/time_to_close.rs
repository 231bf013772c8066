//! How long leads take to close, counting the ones still open.
//!
//! A mean over closed leads only is biased short: the slow deals are the
//! ones still open. Here every lead is an observation: a closed one closes
//! at its age, an open one is censored at its age now. Time to any close is
//! the Kaplan–Meier estimate; won and lost are competing outcomes, so each
//! gets its cumulative incidence (Aalen–Johansen), and the quantiles of
//! "time to win" are those of the leads that win: the age by which a given
//! share of the eventual wins have happened.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::state::LeadState;
use crate::events::{Millis, Stage, MILLIS_PER_DAY};

/// How an observation ended, or that it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Won,
    Lost,
    Open,
}

/// One lead seen from a starting point (its creation, or its entry into a
/// stage): days until it closed, or until now when it is still open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub days: f64,
    pub outcome: Outcome,
}

/// One distinct close time of the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    days: f64,
    /// Share still open just after `days`.
    open: f64,
    /// Share closed won (lost) by `days`.
    won: f64,
    lost: f64,
}

/// Kaplan–Meier survival to any close with the Aalen–Johansen incidence of
/// each outcome, from observations that may be censored.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseCurve {
    steps: Vec<Step>,
    observations: usize,
    won: usize,
    lost: usize,
    /// Longest follow-up, closed or not: the curve says nothing past it.
    last_seen_days: f64,
}

impl CloseCurve {
    pub fn estimate(observations: &[Observation]) -> CloseCurve {
        let mut sorted: Vec<Observation> = observations
            .iter()
            .copied()
            .filter(|o| o.days.is_finite())
            .map(|o| Observation {
                days: o.days.max(0.0),
                ..o
            })
            .collect();
        sorted.sort_by(|a, b| a.days.total_cmp(&b.days));
        let count = |outcome| sorted.iter().filter(|o| o.outcome == outcome).count();
        let (won, lost) = (count(Outcome::Won), count(Outcome::Lost));
        let mut steps = Vec::new();
        let (mut open, mut won_share, mut lost_share) = (1.0, 0.0, 0.0);
        let mut at_risk = sorted.len();
        let mut i = 0;
        while i < sorted.len() {
            let days = sorted[i].days;
            let (mut won_here, mut lost_here, mut leaving) = (0usize, 0usize, 0usize);
            while i < sorted.len() && sorted[i].days == days {
                match sorted[i].outcome {
                    Outcome::Won => won_here += 1,
                    Outcome::Lost => lost_here += 1,
                    Outcome::Open => {}
                }
                leaving += 1;
                i += 1;
            }
            if won_here + lost_here > 0 {
                // Closes at `days` count against those still open just
                // before it, censored ones at the same age included (the
                // usual convention: censoring happens after the events).
                let n = at_risk as f64;
                won_share += open * won_here as f64 / n;
                lost_share += open * lost_here as f64 / n;
                open *= 1.0 - (won_here + lost_here) as f64 / n;
                steps.push(Step {
                    days,
                    open,
                    won: won_share,
                    lost: lost_share,
                });
            }
            at_risk -= leaving;
        }
        CloseCurve {
            steps,
            observations: sorted.len(),
            won,
            lost,
            last_seen_days: sorted.last().map_or(0.0, |o| o.days),
        }
    }

    /// Share of leads closed (either way) by `days`.
    pub fn closed_by(&self, days: f64) -> f64 {
        1.0 - self.at(days).map_or(1.0, |s| s.open)
    }

    /// Share of leads won by `days`.
    pub fn won_by(&self, days: f64) -> f64 {
        self.at(days).map_or(0.0, |s| s.won)
    }

    fn at(&self, days: f64) -> Option<&Step> {
        let after = self.steps.partition_point(|s| s.days <= days);
        after.checked_sub(1).map(|i| &self.steps[i])
    }

    /// The age by which a share `q` of all leads has closed; `None` when the
    /// estimate never gets there (too many still open).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.steps
            .iter()
            .find(|s| 1.0 - s.open >= q - 1e-12)
            .map(|s| s.days)
    }

    /// The age by which a share `q` of the leads that end `outcome` (as far
    /// as the data have seen) had ended so.
    pub fn quantile_given(&self, outcome: Outcome, q: f64) -> Option<f64> {
        let share = |s: &Step| match outcome {
            Outcome::Won => s.won,
            Outcome::Lost => s.lost,
            Outcome::Open => 1.0 - s.open,
        };
        let total = self.steps.last().map(share)?;
        if total <= 0.0 {
            return None;
        }
        self.steps
            .iter()
            .find(|s| share(s) >= q * total - 1e-12)
            .map(|s| s.days)
    }

    /// Mean days open, restricted to the longest follow-up (the area under
    /// the survival curve up to it): with censoring a plain mean does not
    /// exist, and this one is what the data can support.
    pub fn restricted_mean_days(&self) -> f64 {
        let (mut area, mut from, mut open) = (0.0, 0.0, 1.0);
        for step in &self.steps {
            area += open * (step.days - from);
            from = step.days;
            open = step.open;
        }
        area + open * (self.last_seen_days - from).max(0.0)
    }

    pub fn summary(&self) -> CloseSummary {
        let quantiles = |outcome: Option<Outcome>| {
            let q = |p| match outcome {
                None => self.quantile(p),
                Some(o) => self.quantile_given(o, p),
            };
            Quantiles {
                p25: q(0.25),
                median: q(0.5),
                p75: q(0.75),
                p90: q(0.9),
            }
        };
        CloseSummary {
            observations: self.observations,
            won: self.won,
            lost: self.lost,
            open: self.observations - self.won - self.lost,
            restricted_mean_days: self.restricted_mean_days(),
            any_close: quantiles(None),
            to_win: quantiles(Some(Outcome::Won)),
            to_loss: quantiles(Some(Outcome::Lost)),
        }
    }
}

/// Days; `None` where the estimate does not reach the share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p25: Option<f64>,
    pub median: Option<f64>,
    pub p75: Option<f64>,
    pub p90: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloseSummary {
    pub observations: usize,
    pub won: usize,
    pub lost: usize,
    pub open: usize,
    pub restricted_mean_days: f64,
    /// Time to a close of either kind.
    pub any_close: Quantiles,
    /// Among the leads that win, the time it takes them.
    pub to_win: Quantiles,
    pub to_loss: Quantiles,
}

/// Time to close from creation, overall and per source, and from entering
/// each open stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeToClose {
    pub overall: CloseSummary,
    pub by_source: BTreeMap<String, CloseSummary>,
    pub from_stage: BTreeMap<Stage, CloseSummary>,
}

/// Leads without a known source are grouped under this name.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// The lead as of `at`: open, or closed with the outcome and when. A lead
/// reopened after a close counts by its current stage.
pub(crate) fn close_as_of(lead: &LeadState, at: Millis) -> Option<(Outcome, Millis)> {
    let closed = lead
        .stage_history
        .iter()
        .rev()
        .find(|t| t.at <= at)
        .filter(|t| t.to.is_closed());
    closed.map(|t| {
        let outcome = if t.to == Stage::ClosedWon {
            Outcome::Won
        } else {
            Outcome::Lost
        };
        (outcome, t.at)
    })
}

/// When the lead was created: its creation time, else its first stage
/// change.
pub(crate) fn created_at(lead: &LeadState) -> Option<Millis> {
    lead.created_at
        .or_else(|| lead.stage_history.first().map(|t| t.at))
}

pub(crate) fn days_between(from: Millis, to: Millis) -> f64 {
    (to - from) as f64 / MILLIS_PER_DAY as f64
}

/// When the lead first entered each open stage, up to `at`; every lead is
/// new from its creation.
pub(crate) fn stages_entered(lead: &LeadState, at: Millis) -> BTreeMap<Stage, Millis> {
    let mut entered = BTreeMap::new();
    if let Some(created) = created_at(lead).filter(|c| *c <= at) {
        entered.insert(Stage::New, created);
    }
    for transition in lead.stage_history.iter().filter(|t| t.at <= at) {
        if !transition.to.is_closed() {
            entered.entry(transition.to).or_insert(transition.at);
        }
    }
    entered
}

/// The observation of `lead` from `start` as of `now`; `None` if it had not
/// started by then.
pub(crate) fn observe(lead: &LeadState, start: Millis, now: Millis) -> Option<Observation> {
    if start > now {
        return None;
    }
    Some(match close_as_of(lead, now) {
        Some((outcome, at)) if at >= start => Observation {
            days: days_between(start, at),
            outcome,
        },
        // Closed before `start`: it never was open from there.
        Some(_) => return None,
        None => Observation {
            days: days_between(start, now),
            outcome: Outcome::Open,
        },
    })
}

/// Creation-to-close observations of the leads created by `now`.
pub fn observations(leads: &[LeadState], now: Millis) -> Vec<Observation> {
    leads
        .iter()
        .filter_map(|lead| observe(lead, created_at(lead)?, now))
        .collect()
}

/// Time to close as of `now` over `leads` (closed and open alike).
pub fn time_to_close(leads: &[LeadState], now: Millis) -> TimeToClose {
    let mut by_source: BTreeMap<String, Vec<Observation>> = BTreeMap::new();
    let mut from_stage: BTreeMap<Stage, Vec<Observation>> = BTreeMap::new();
    let mut overall = Vec::with_capacity(leads.len());
    for lead in leads {
        let Some(created) = created_at(lead) else {
            continue;
        };
        let Some(observation) = observe(lead, created, now) else {
            continue;
        };
        overall.push(observation);
        let source = lead.held_at_or_latest(now).source.unwrap_or(UNKNOWN_SOURCE);
        by_source
            .entry(source.to_string())
            .or_default()
            .push(observation);
        let entered = stages_entered(lead, now);
        for (stage, at) in entered {
            if let Some(observation) = observe(lead, at, now) {
                from_stage.entry(stage).or_default().push(observation);
            }
        }
    }
    let summarise = |obs: &[Observation]| CloseCurve::estimate(obs).summary();
    TimeToClose {
        overall: summarise(&overall),
        by_source: by_source
            .iter()
            .map(|(k, v)| (k.clone(), summarise(v)))
            .collect(),
        from_stage: from_stage.iter().map(|(k, v)| (*k, summarise(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(days: f64, outcome: Outcome) -> Observation {
        Observation { days, outcome }
    }

    #[test]
    fn kaplan_meier_matches_a_hand_worked_example() {
        // Closes at 1, 2 (censored at 2 after the close), 3; open at 4.
        // S(1) = 4/5; S(2) = 4/5 · 3/4 = 0.6 (n=4 at 2); S(3) = 0.6 · 1/2 = 0.3.
        let curve = CloseCurve::estimate(&[
            obs(1.0, Outcome::Won),
            obs(2.0, Outcome::Lost),
            obs(2.0, Outcome::Open),
            obs(3.0, Outcome::Won),
            obs(4.0, Outcome::Open),
        ]);
        assert!((curve.closed_by(1.5) - 0.2).abs() < 1e-12);
        assert!((curve.closed_by(2.0) - 0.4).abs() < 1e-12);
        assert!((curve.closed_by(3.0) - 0.7).abs() < 1e-12);
        // Won: 1/5 at 1, then 0.6 · 1/2 at 3.
        assert!((curve.won_by(3.0) - 0.5).abs() < 1e-12);
        assert_eq!(curve.quantile(0.5), Some(3.0));
        assert_eq!(curve.quantile(0.9), None, "30% are still open at the end");
        // Won shares 0.2 then 0.5: 0.2 ≥ 0.4·0.5 so half the wins are by day 1.
        assert_eq!(curve.quantile_given(Outcome::Won, 0.4), Some(1.0));
        assert_eq!(curve.quantile_given(Outcome::Won, 0.5), Some(3.0));
        // Area: 1·1 + 0.8·1 + 0.6·1 + 0.3·1 (to the last sight at 4).
        assert!((curve.restricted_mean_days() - 2.7).abs() < 1e-12);
    }

    #[test]
    fn open_leads_lengthen_the_estimate_that_closed_ones_alone_would_give() {
        // Ten quick closes at 10 days, ten slow deals still open at 60:
        // closed leads alone say a median of 10; counting the open ones, half
        // of all leads are closed only at day 10 exactly, and the rest never
        // within what was seen.
        let mut observations: Vec<Observation> = (0..10).map(|_| obs(10.0, Outcome::Won)).collect();
        let closed_only = CloseCurve::estimate(&observations).summary();
        observations.extend((0..10).map(|_| obs(60.0, Outcome::Open)));
        let with_open = CloseCurve::estimate(&observations).summary();
        assert_eq!(closed_only.any_close.p75, Some(10.0));
        assert_eq!(with_open.any_close.p75, None);
        assert_eq!(with_open.open, 10);
        assert!(with_open.restricted_mean_days > closed_only.restricted_mean_days);
    }

    #[test]
    fn without_censoring_the_quantiles_are_the_empirical_ones() {
        let observations: Vec<Observation> =
            (1..=100).map(|d| obs(d as f64, Outcome::Lost)).collect();
        let summary = CloseCurve::estimate(&observations).summary();
        assert_eq!(summary.any_close.median, Some(50.0));
        assert_eq!(summary.any_close.p90, Some(90.0));
        assert_eq!(summary.to_loss.p25, Some(25.0));
        assert_eq!(summary.to_win.median, None, "nothing was won");
        assert!((summary.restricted_mean_days - 50.5).abs() < 1e-9);
    }
}
