//! What past leads say: conversion per stage reached, won values, and the
//! landmark samples that give an open lead its chance of a win within the
//! horizon, with the dispersion that widens the intervals.

use std::collections::BTreeMap;

use super::super::time_to_close::{
    close_as_of, created_at, days_between, stages_entered, Outcome, UNKNOWN_SOURCE,
};
use super::{mean, OpenDeal, ProbabilityFrom};
use crate::core::state::{HeldAt, LeadState};
use crate::events::{Millis, Stage, MILLIS_PER_DAY};

/// Pseudo-observations pulling a rate towards the rate of the coarser
/// group it belongs to, so that a group with three samples does not claim
/// 0% or 100%.
const PRIOR_WEIGHT: f64 = 10.0;
/// Past weekly landmarks the within-horizon chances are learnt from: a
/// quarter, so that they follow how the pipeline moves lately.
const LANDMARKS: usize = 13;
const LANDMARK_STEP_DAYS: i64 = 7;
/// Bucket bounds of days spent in the current stage.
const DAYS_IN_STAGE_BOUNDS: [f64; 6] = [2.0, 5.0, 10.0, 20.0, 40.0, 80.0];

/// Wins over samples, and the rate shrunk towards a prior.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    wins: f64,
    samples: f64,
}

impl Tally {
    fn add(&mut self, win: bool) {
        self.add_weighted(win, 1.0);
    }

    /// A sample counted `weight` times (as a share of the mean weight, so
    /// that the prior keeps its strength).
    fn add_weighted(&mut self, win: bool, weight: f64) {
        self.wins += if win { weight } else { 0.0 };
        self.samples += weight;
    }

    fn rate(self, prior: f64) -> f64 {
        (self.wins + PRIOR_WEIGHT * prior) / (self.samples + PRIOR_WEIGHT)
    }
}

fn days_in_stage_bucket(days: f64) -> usize {
    DAYS_IN_STAGE_BOUNDS.partition_point(|bound| *bound <= days)
}

/// A lead as it stood at a time: open, in a stage for some days.
pub(super) struct Snapshot<'a> {
    pub(super) stage: Stage,
    pub(super) days_in_stage: f64,
    pub(super) age_days: f64,
    pub(super) source: &'a str,
}

/// `lead` at `at`, if it was open then, with its source as `held` says.
pub(super) fn snapshot<'a>(
    lead: &LeadState,
    at: Millis,
    held: &HeldAt<'a>,
) -> Option<Snapshot<'a>> {
    let created = created_at(lead)?;
    if created > at || close_as_of(lead, at).is_some() {
        return None;
    }
    let last = lead.stage_history.iter().rev().find(|t| t.at <= at);
    let (stage, entered) = last.map_or((Stage::New, created), |t| (t.to, t.at));
    Some(Snapshot {
        stage,
        days_in_stage: days_between(entered, at),
        age_days: days_between(created, at),
        source: held.source.unwrap_or(UNKNOWN_SOURCE),
    })
}

/// What the leads (as of a time) say about conversion: closes per stage
/// and source, won values, and the landmark samples of open leads.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedHistory {
    pub won: usize,
    pub lost: usize,
    /// Won over closed.
    pub conversion_rate: f64,
    /// Mean value of the won deals; 0 when none was won.
    pub avg_deal_value: f64,
    /// Closed leads per stage reached, overall and per source.
    by_stage: BTreeMap<Stage, Tally>,
    by_stage_source: BTreeMap<(Stage, String), Tally>,
    /// Won value over the lead's estimate, per won deal that had both.
    pub(super) value_ratios: Vec<f64>,
    /// The horizon the landmark samples looked ahead.
    pub horizon_days: f64,
    pub landmarks: usize,
    soon: SoonTallies,
    /// How much more the value won at the landmarks strayed from its
    /// forecast than Σ Bernoulli(p)·v allows (a standard deviation's
    /// factor, at least 1): the intervals within the horizon are widened
    /// by it. 1 with fewer than [`MIN_DISPERSION_LANDMARKS`] landmarks.
    pub dispersion: f64,
}

/// Landmark samples of open leads: won within the horizon or not, per
/// stage, days-in-stage bucket and source, and coarser.
#[derive(Debug, Clone, Default, PartialEq)]
struct SoonTallies {
    all: Tally,
    by_stage: BTreeMap<Stage, Tally>,
    by_bucket: BTreeMap<(Stage, usize), Tally>,
    by_bucket_source: BTreeMap<(Stage, usize, String), Tally>,
}

/// One open lead at one landmark.
struct LandmarkSample {
    stage: Stage,
    days_in_stage: f64,
    source: String,
    weight: f64,
    value: f64,
    value_estimated: bool,
    /// The value won within the horizon (0 if not won then).
    won: f64,
}

impl SoonTallies {
    fn add(&mut self, sample: &LandmarkSample, sign: f64) {
        let bucket = days_in_stage_bucket(sample.days_in_stage);
        let win = sample.won > 0.0;
        for tally in [
            &mut self.all,
            self.by_stage.entry(sample.stage).or_default(),
            self.by_bucket.entry((sample.stage, bucket)).or_default(),
            self.by_bucket_source
                .entry((sample.stage, bucket, sample.source.clone()))
                .or_default(),
        ] {
            tally.add_weighted(win, sign * sample.weight);
        }
    }

    /// The share (of value) won within the horizon by leads open in
    /// `stage` for about as many days and from the same source, shrunk
    /// towards the stage and bucket, the stage, and all leads.
    fn rate(&self, stage: Stage, days_in_stage: f64, source: &str) -> f64 {
        let bucket = days_in_stage_bucket(days_in_stage);
        let overall = self.all.rate(0.0);
        let stage_rate = self
            .by_stage
            .get(&stage)
            .copied()
            .unwrap_or_default()
            .rate(overall);
        let bucket_rate = self
            .by_bucket
            .get(&(stage, bucket))
            .copied()
            .unwrap_or_default()
            .rate(stage_rate);
        self.by_bucket_source
            .get(&(stage, bucket, source.to_string()))
            .copied()
            .unwrap_or_default()
            .rate(bucket_rate)
    }
}

/// Landmarks needed before their spread is trusted to widen the intervals.
const MIN_DISPERSION_LANDMARKS: usize = 6;

/// Over the landmarks, each forecast from the others (leave one out):
/// √(mean of (won − forecast)² / variance under independent Bernoulli
/// wins), at least 1.
fn dispersion(per_landmark: &[Vec<LandmarkSample>], all: &SoonTallies, ratios: (f64, f64)) -> f64 {
    if per_landmark.len() < MIN_DISPERSION_LANDMARKS {
        return 1.0;
    }
    let (ratio_mean, ratio_square_mean) = ratios;
    let mut sum = 0.0;
    let mut counted = 0usize;
    for samples in per_landmark {
        let mut others = all.clone();
        for sample in samples {
            others.add(sample, -1.0);
        }
        let (mut forecast, mut variance, mut won) = (0.0, 0.0, 0.0);
        for sample in samples {
            let p = others
                .rate(sample.stage, sample.days_in_stage, &sample.source)
                .clamp(0.0, 1.0);
            let (mean, square) = if sample.value_estimated {
                (ratio_mean, ratio_square_mean)
            } else {
                (1.0, 1.0)
            };
            forecast += p * sample.value * mean;
            variance += sample.value * sample.value * (p * square - p * p * mean * mean);
            won += sample.won;
        }
        if variance > 0.0 {
            sum += (won - forecast).powi(2) / variance;
            counted += 1;
        }
    }
    if counted == 0 {
        1.0
    } else {
        (sum / counted as f64).sqrt().max(1.0)
    }
}

impl ClosedHistory {
    /// From what `leads` show as of `at` (later events are not looked at),
    /// for forecasts of wins within `horizon_days`.
    pub fn as_of(leads: &[LeadState], at: Millis, horizon_days: f64) -> ClosedHistory {
        let mut by_stage: BTreeMap<Stage, Tally> = BTreeMap::new();
        let mut by_stage_source: BTreeMap<(Stage, String), Tally> = BTreeMap::new();
        let (mut won, mut lost, mut won_value) = (0usize, 0usize, 0.0);
        let mut value_ratios = Vec::new();
        for lead in leads {
            let Some((outcome, closed_at)) = close_as_of(lead, at) else {
                continue;
            };
            let held = lead.held_at_or_latest(at);
            let win = outcome == Outcome::Won;
            if win {
                won += 1;
                let value = won_value_of(lead, closed_at, held.estimated_value);
                won_value += value.unwrap_or(0.0);
                if let (Some(value), Some(estimate)) = (value, held.estimated_value) {
                    if estimate > 0.0 && value >= 0.0 {
                        value_ratios.push(value / estimate);
                    }
                }
            } else {
                lost += 1;
            }
            let source = held.source.unwrap_or(UNKNOWN_SOURCE);
            for stage in stages_entered(lead, closed_at).into_keys() {
                by_stage.entry(stage).or_default().add(win);
                by_stage_source
                    .entry((stage, source.to_string()))
                    .or_default()
                    .add(win);
            }
        }

        let horizon_ms = (horizon_days * MILLIS_PER_DAY as f64) as Millis;
        let first_created = leads.iter().filter_map(created_at).min().unwrap_or(at);
        let landmarks: Vec<Millis> = (0..LANDMARKS as i64)
            .map(|k| at - horizon_ms - k * LANDMARK_STEP_DAYS * MILLIS_PER_DAY)
            .take_while(|landmark| *landmark > first_created)
            .collect();
        // Samples are weighted by their value over the mean: the rate is
        // then the share of open value won, which is what Σ chance × value
        // needs when big deals convert differently from small ones.
        let values: Vec<f64> = leads
            .iter()
            .filter(|l| created_at(l).is_some_and(|c| c <= at))
            .filter_map(|l| l.held_at_or_latest(at).estimated_value)
            .collect();
        let mean_value = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let avg_deal_value = if won == 0 {
            0.0
        } else {
            won_value / won as f64
        };
        let mut soon = SoonTallies::default();
        let mut per_landmark: Vec<Vec<LandmarkSample>> = Vec::with_capacity(landmarks.len());
        for &landmark in &landmarks {
            let mut samples = Vec::new();
            for lead in leads {
                // Source and estimate as of the forecast's time, not the
                // landmark's: a lead keeps them only for its latest slots,
                // and what it holds now may be from after `at`.
                let held = lead.held_at_or_latest(at);
                let Some(then) = snapshot(lead, landmark, &held) else {
                    continue;
                };
                let (value, value_estimated) =
                    value_as_of(lead, landmark, avg_deal_value, held.estimated_value);
                let won = match close_as_of(lead, landmark + horizon_ms) {
                    Some((Outcome::Won, closed)) if closed > landmark => {
                        won_value_of(lead, closed, held.estimated_value)
                            .unwrap_or(value)
                            .max(f64::MIN_POSITIVE)
                    }
                    _ => 0.0,
                };
                let sample = LandmarkSample {
                    stage: then.stage,
                    days_in_stage: then.days_in_stage,
                    source: then.source.to_string(),
                    weight: match held.estimated_value {
                        Some(v) if mean_value > 0.0 && v >= 0.0 => v / mean_value,
                        _ => 1.0,
                    },
                    value,
                    value_estimated,
                    won,
                };
                soon.add(&sample, 1.0);
                samples.push(sample);
            }
            per_landmark.push(samples);
        }
        let ratio_mean = mean(&value_ratios).unwrap_or(1.0);
        let ratio_square_mean =
            mean(&value_ratios.iter().map(|r| r * r).collect::<Vec<_>>()).unwrap_or(1.0);
        let dispersion = dispersion(&per_landmark, &soon, (ratio_mean, ratio_square_mean));

        let closed = won + lost;
        ClosedHistory {
            won,
            lost,
            conversion_rate: if closed == 0 {
                0.0
            } else {
                won as f64 / closed as f64
            },
            avg_deal_value,
            by_stage,
            by_stage_source,
            value_ratios,
            horizon_days,
            landmarks: landmarks.len(),
            soon,
            dispersion,
        }
    }

    /// The conversion rate of closed leads that reached `stage` from
    /// `source`, shrunk towards the stage's, and that towards the overall.
    pub fn rate(&self, stage: Stage, source: &str) -> f64 {
        let stage_rate = self
            .by_stage
            .get(&stage)
            .copied()
            .unwrap_or_default()
            .rate(self.conversion_rate);
        self.by_stage_source
            .get(&(stage, source.to_string()))
            .copied()
            .unwrap_or_default()
            .rate(stage_rate)
    }

    /// The chance that `deal` is won within the horizon. From history, the
    /// landmark rate; for a model's probability, that probability times the
    /// share of the eventual wins of such leads that come that soon.
    pub fn win_chance_within(&self, deal: &OpenDeal) -> f64 {
        let within = self.soon.rate(deal.stage, deal.days_in_stage, &deal.source);
        match deal.probability_from {
            ProbabilityFrom::History => within.min(deal.probability),
            ProbabilityFrom::Model => {
                let eventual = self.rate(deal.stage, &deal.source);
                if eventual <= 0.0 {
                    0.0
                } else {
                    deal.probability * (within / eventual).min(1.0)
                }
            }
        }
    }
}

/// The value a won lead closed at: the deal value of its latest stage
/// change by then that had one, else `estimate`.
pub(super) fn won_value_of(
    lead: &LeadState,
    closed_at: Millis,
    estimate: Option<f64>,
) -> Option<f64> {
    lead.stage_history
        .iter()
        .rev()
        .filter(|t| t.at <= closed_at)
        .find_map(|t| t.deal_value)
        .or(estimate)
}

/// The lead's value as known at `at`, and whether it is only an estimate:
/// the deal value of its latest stage change that had one, else
/// `estimate`, else `fallback` (the average won deal).
pub(super) fn value_as_of(
    lead: &LeadState,
    at: Millis,
    fallback: f64,
    estimate: Option<f64>,
) -> (f64, bool) {
    let deal_value = lead
        .stage_history
        .iter()
        .rev()
        .filter(|t| t.at <= at)
        .find_map(|t| t.deal_value);
    let (value, estimated) = match (deal_value, estimate) {
        (Some(v), _) => (v, false),
        (None, Some(v)) => (v, true),
        (None, None) => (fallback, true),
    };
    (value.max(0.0), estimated)
}

#[cfg(test)]
mod tests {
    use super::super::open_deals;
    use super::*;

    const DAY: Millis = MILLIS_PER_DAY;

    fn lead(id: usize, created: Millis, moves: &[(Millis, Stage)]) -> LeadState {
        let mut lead = LeadState::new(&format!("L{id}"));
        lead.created_at = Some(created);
        lead.source = Some("web".into());
        lead.estimated_value = Some(1000.0);
        let mut from = Stage::New;
        for (i, (at, to)) in moves.iter().enumerate() {
            lead.stage_history
                .push(crate::core::state::StageTransition {
                    from: Some(from),
                    to: *to,
                    at: *at,
                    owner: None,
                    deal_value: (*to == Stage::ClosedWon).then_some(1000.0),
                    event_id: format!("L{id}-{i}"),
                });
            from = *to;
            lead.stage = *to;
        }
        lead
    }

    #[test]
    fn a_lead_stale_in_its_stage_gets_less_chance_than_a_fresh_one() {
        // Every day a lead is created and contacted; half of them win three
        // days later, the rest sit in "contacted" for good.
        let mut leads: Vec<LeadState> = (0..200)
            .map(|d| {
                let t = d as Millis * DAY;
                let mut moves = vec![(t + DAY / 2, Stage::Contacted)];
                if d % 2 == 0 {
                    moves.push((t + 3 * DAY, Stage::ClosedWon));
                }
                lead(d, t, &moves)
            })
            .collect();
        let at = 200 * DAY;
        leads.push(lead(1000, at - 2 * DAY, &[(at - DAY, Stage::Contacted)]));
        leads.push(lead(
            1001,
            at - 61 * DAY,
            &[(at - 60 * DAY, Stage::Contacted)],
        ));
        let history = ClosedHistory::as_of(&leads, at, 14.0);
        assert_eq!(history.landmarks, LANDMARKS);
        let deals = open_deals(&leads, at, &history, false);
        let chance = |id: &str| {
            let deal = deals.iter().find(|d| d.lead_ext_id == id).unwrap();
            history.win_chance_within(deal)
        };
        // Contacted a day ago: about half such leads won within 14 days.
        assert!(
            (0.35..0.65).contains(&chance("L1000")),
            "{}",
            chance("L1000")
        );
        // Sixty days in: none such ever won.
        assert!(chance("L1001") < 0.1, "{}", chance("L1001"));
        // The stage's plain conversion rate does not tell them apart.
        let eventual = |id: &str| {
            deals
                .iter()
                .find(|d| d.lead_ext_id == id)
                .unwrap()
                .probability
        };
        assert_eq!(eventual("L1000"), eventual("L1001"));
    }
}
