//! What the open pipeline is worth: the weighted sum Odoo and HubSpot show
//! (Σ probability × value), the seed's historical figure (conversion rate ×
//! average deal value × open leads), and how far the value actually won may
//! fall from it, as an interval from the distribution of Σ Bernoulli(p)·v.
//!
//! The interval is Monte Carlo with a fixed seed, so the same inputs always
//! give the same figures. A won deal's value is its estimate times a ratio
//! drawn from the won deals seen (deal value over estimate), so that the
//! spread of closing values is in the interval too.
//!
//! A lead's chance of ever winning is the model's probability, or without
//! one the conversion rate of closed leads that reached its stage (from its
//! source, shrunk towards the stage's): the stage probability a CRM shows.
//! Its chance of winning *within the horizon* is learnt by landmarking:
//! at each of the past weeks whose horizon has fully elapsed, every lead
//! then open is a sample of (stage, days in that stage, source) → won within
//! the horizon or not. That needs no model of censoring and no assumption
//! that a lead's history before its current stage does not matter, and it
//! does not give a lead that has sat two months in "contacted" the chance
//! of one contacted yesterday. A model's probability is scaled by the share
//! of such leads' wins that come that soon.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::time_to_close::{
    close_as_of, created_at, days_between, stages_entered, Outcome, UNKNOWN_SOURCE,
};
use crate::core::state::LeadState;
use crate::events::{Millis, Stage, MILLIS_PER_DAY};

/// Monte Carlo draws: a 95% interval's tails then rest on 100 draws each.
const DRAWS: usize = 4000;
const SEED: u64 = 0x1ead_f10e;
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
/// Owner of leads without one, in the breakdown.
pub const UNASSIGNED: &str = "unassigned";

/// Where an open lead's win probability came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbabilityFrom {
    /// The model's score on the lead.
    Model,
    /// The conversion rate of closed leads that reached its stage, from its
    /// source.
    History,
}

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
struct Snapshot<'a> {
    stage: Stage,
    days_in_stage: f64,
    age_days: f64,
    source: &'a str,
}

/// `lead` at `at`, if it was open then.
fn snapshot(lead: &LeadState, at: Millis) -> Option<Snapshot<'_>> {
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
        source: lead.source.as_deref().unwrap_or(UNKNOWN_SOURCE),
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
    value_ratios: Vec<f64>,
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
            let win = outcome == Outcome::Won;
            if win {
                won += 1;
                let value = won_value_of(lead, closed_at);
                won_value += value.unwrap_or(0.0);
                if let (Some(value), Some(estimate)) = (value, lead.estimated_value) {
                    if estimate > 0.0 && value >= 0.0 {
                        value_ratios.push(value / estimate);
                    }
                }
            } else {
                lost += 1;
            }
            let source = lead.source.as_deref().unwrap_or(UNKNOWN_SOURCE);
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
        let values: Vec<f64> = leads.iter().filter_map(|l| l.estimated_value).collect();
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
                let Some(then) = snapshot(lead, landmark) else {
                    continue;
                };
                let (value, value_estimated) = value_as_of(lead, landmark, avg_deal_value);
                let won = match close_as_of(lead, landmark + horizon_ms) {
                    Some((Outcome::Won, closed)) if closed > landmark => won_value_of(lead, closed)
                        .unwrap_or(value)
                        .max(f64::MIN_POSITIVE),
                    _ => 0.0,
                };
                let sample = LandmarkSample {
                    stage: then.stage,
                    days_in_stage: then.days_in_stage,
                    source: then.source.to_string(),
                    weight: match lead.estimated_value {
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

/// The value a won lead closed at: the deal value on its closing stage
/// change, else its last known deal value, else its estimate.
fn won_value_of(lead: &LeadState, closed_at: Millis) -> Option<f64> {
    lead.stage_history
        .iter()
        .rev()
        .filter(|t| t.at <= closed_at)
        .find_map(|t| t.deal_value)
        .or(lead.deal_value)
        .or(lead.estimated_value)
}

/// The lead's value as known at `at`, and whether it is only an estimate:
/// the deal value of its latest stage change that had one, else its
/// estimated value, else `fallback` (the average won deal).
fn value_as_of(lead: &LeadState, at: Millis, fallback: f64) -> (f64, bool) {
    let deal_value = lead
        .stage_history
        .iter()
        .rev()
        .filter(|t| t.at <= at)
        .find_map(|t| t.deal_value);
    let (value, estimated) = match (deal_value, lead.estimated_value) {
        (Some(v), _) => (v, false),
        (None, Some(v)) => (v, true),
        (None, None) => (fallback, true),
    };
    (value.max(0.0), estimated)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A lead open at the forecast's time, as the forecast sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenDeal {
    pub lead_ext_id: String,
    pub source: String,
    pub owner: String,
    pub stage: Stage,
    pub age_days: f64,
    /// Days since it entered its current stage.
    pub days_in_stage: f64,
    /// Chance it is ever won.
    pub probability: f64,
    pub probability_from: ProbabilityFrom,
    pub value: f64,
    /// The value is an estimate (no deal value yet), so a win may close at
    /// another figure.
    pub value_estimated: bool,
}

/// The leads open at `at`, each with its chance and value. With
/// `use_model`, a lead the model has scored takes the model's probability;
/// the others take `history`'s rate for their stage and source.
pub fn open_deals(
    leads: &[LeadState],
    at: Millis,
    history: &ClosedHistory,
    use_model: bool,
) -> Vec<OpenDeal> {
    let mut deals = Vec::new();
    for lead in leads {
        let Some(now) = snapshot(lead, at) else {
            continue;
        };
        let model_probability = lead
            .score
            .as_ref()
            .filter(|s| use_model && s.model_version.is_some())
            .and_then(|s| s.ml_score)
            .map(|score| (score / 100.0).clamp(0.0, 1.0));
        let (probability, probability_from) = match model_probability {
            Some(p) => (p, ProbabilityFrom::Model),
            None => (
                history.rate(now.stage, now.source),
                ProbabilityFrom::History,
            ),
        };
        let (value, value_estimated) = value_as_of(lead, at, history.avg_deal_value);
        let owner = lead
            .stage_history
            .iter()
            .rev()
            .filter(|t| t.at <= at)
            .find_map(|t| t.owner.clone())
            .or_else(|| lead.owner.clone())
            .unwrap_or_else(|| UNASSIGNED.to_string());
        deals.push(OpenDeal {
            lead_ext_id: lead.lead_ext_id.clone(),
            source: now.source.to_string(),
            owner,
            stage: now.stage,
            age_days: now.age_days,
            days_in_stage: now.days_in_stage,
            probability,
            probability_from,
            value,
            value_estimated,
        });
    }
    deals
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueInterval {
    pub level: f64,
    pub lower: f64,
    pub upper: f64,
    /// The same, counting only wins within the horizon.
    pub within_horizon_lower: f64,
    pub within_horizon_upper: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breakdown {
    pub open_leads: usize,
    /// Σ value, unweighted.
    pub current_value: f64,
    /// Σ probability × value.
    pub expected_value: f64,
    pub expected_within_horizon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineValue {
    pub horizon_days: f64,
    pub open_leads: usize,
    /// Σ value of the open leads, unweighted.
    pub current_pipeline_value: f64,
    /// Σ probability × value: what the open leads are expected to bring.
    pub forecasted_value: f64,
    /// The same, counting only wins expected within the horizon.
    pub forecasted_within_horizon: f64,
    /// The seed's figure: historical conversion rate × average deal value
    /// × open leads.
    pub historical_estimate: f64,
    pub conversion_rate: f64,
    pub avg_deal_value: f64,
    pub closed_won: usize,
    pub closed_lost: usize,
    pub from_model: usize,
    pub from_history: usize,
    /// The factor the intervals were widened by (see
    /// [`ClosedHistory::dispersion`]).
    pub dispersion: f64,
    pub intervals: Vec<ValueInterval>,
    pub by_source: BTreeMap<String, Breakdown>,
    pub by_owner: BTreeMap<String, Breakdown>,
    pub by_stage: BTreeMap<String, Breakdown>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PipelineValueError {
    #[error("the horizon must be at least one day, not {0}")]
    Horizon(f64),
    #[error("a confidence level must be above 0 and below 1, not {0}")]
    Level(f64),
}

/// The value of `deals` with an interval at each of `levels`.
pub fn pipeline_value(
    deals: &[OpenDeal],
    history: &ClosedHistory,
    horizon_days: f64,
    levels: &[f64],
) -> Result<PipelineValue, PipelineValueError> {
    if horizon_days.is_nan() || horizon_days < 1.0 {
        return Err(PipelineValueError::Horizon(horizon_days));
    }
    if let Some(&bad) = levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
        return Err(PipelineValueError::Level(bad));
    }
    let within: Vec<f64> = deals.iter().map(|d| history.win_chance_within(d)).collect();

    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut totals = vec![0.0; DRAWS];
    let mut totals_within = vec![0.0; DRAWS];
    for (deal, &p_within) in deals.iter().zip(&within) {
        for draw in 0..DRAWS {
            // One uniform decides both: a win within the horizon is a win.
            let u: f64 = rng.random();
            if u < deal.probability {
                let value = if deal.value_estimated && !history.value_ratios.is_empty() {
                    deal.value
                        * history.value_ratios[rng.random_range(0..history.value_ratios.len())]
                } else {
                    deal.value
                };
                totals[draw] += value;
                if u < p_within {
                    totals_within[draw] += value;
                }
            }
        }
    }
    totals.sort_by(f64::total_cmp);
    totals_within.sort_by(f64::total_cmp);
    // Each side's distance from the mean, stretched by how much more the
    // past strayed than independent wins allow.
    let widened = |sorted: &[f64], level: f64| {
        let centre = mean(sorted).unwrap_or(0.0);
        let lower = quantile(sorted, (1.0 - level) / 2.0);
        let upper = quantile(sorted, (1.0 + level) / 2.0);
        (
            (centre - history.dispersion * (centre - lower)).max(0.0),
            centre + history.dispersion * (upper - centre),
        )
    };
    let intervals = levels
        .iter()
        .map(|&level| {
            let (lower, upper) = widened(&totals, level);
            let (within_horizon_lower, within_horizon_upper) = widened(&totals_within, level);
            ValueInterval {
                level,
                lower,
                upper,
                within_horizon_lower,
                within_horizon_upper,
            }
        })
        .collect();

    let mut by_source: BTreeMap<String, Breakdown> = BTreeMap::new();
    let mut by_owner: BTreeMap<String, Breakdown> = BTreeMap::new();
    let mut by_stage: BTreeMap<String, Breakdown> = BTreeMap::new();
    for (deal, &p_within) in deals.iter().zip(&within) {
        for group in [
            by_source.entry(deal.source.clone()).or_default(),
            by_owner.entry(deal.owner.clone()).or_default(),
            by_stage.entry(deal.stage.to_string()).or_default(),
        ] {
            group.open_leads += 1;
            group.current_value += deal.value;
            group.expected_value += deal.probability * deal.value;
            group.expected_within_horizon += p_within * deal.value;
        }
    }
    let from_model = deals
        .iter()
        .filter(|d| d.probability_from == ProbabilityFrom::Model)
        .count();
    Ok(PipelineValue {
        horizon_days,
        open_leads: deals.len(),
        current_pipeline_value: deals.iter().map(|d| d.value).sum(),
        forecasted_value: deals.iter().map(|d| d.probability * d.value).sum(),
        forecasted_within_horizon: deals.iter().zip(&within).map(|(d, p)| p * d.value).sum(),
        historical_estimate: history.conversion_rate * history.avg_deal_value * deals.len() as f64,
        conversion_rate: history.conversion_rate,
        avg_deal_value: history.avg_deal_value,
        closed_won: history.won,
        closed_lost: history.lost,
        from_model,
        from_history: deals.len() - from_model,
        dispersion: history.dispersion,
        intervals,
        by_source,
        by_owner,
        by_stage,
    })
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One past forecast next to what happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BacktestOrigin {
    pub origin: Millis,
    pub open_leads: usize,
    pub forecast: f64,
    /// Σ chance of a win within the horizon, and the wins there were.
    pub expected_wins: f64,
    pub wins: usize,
    /// Per level, the within-horizon interval.
    pub intervals: Vec<ValueInterval>,
    /// Value won within the horizon by the leads open at the origin.
    pub realised: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineBacktest {
    pub horizon_days: f64,
    pub origins: Vec<BacktestOrigin>,
    /// Per level: share of origins whose realised value fell inside.
    pub coverage: Vec<(f64, f64)>,
    /// Mean |realised − forecast| over mean realised.
    pub relative_error: f64,
}

/// Forecasts at each of `origins` from what was known then (history-based
/// probabilities: a model's score at a past date is not kept), against the
/// value the leads open then actually won within the horizon.
pub fn backtest(
    leads: &[LeadState],
    origins: &[Millis],
    horizon_days: f64,
    levels: &[f64],
) -> Result<PipelineBacktest, PipelineValueError> {
    let horizon_ms = (horizon_days * MILLIS_PER_DAY as f64) as Millis;
    let mut rows = Vec::with_capacity(origins.len());
    for &origin in origins {
        let history = ClosedHistory::as_of(leads, origin, horizon_days);
        let deals = open_deals(leads, origin, &history, false);
        let forecast = pipeline_value(&deals, &history, horizon_days, levels)?;
        let open: std::collections::HashSet<&str> =
            deals.iter().map(|d| d.lead_ext_id.as_str()).collect();
        let won: Vec<f64> = leads
            .iter()
            .filter(|lead| open.contains(lead.lead_ext_id.as_str()))
            .filter_map(|lead| match close_as_of(lead, origin + horizon_ms) {
                Some((Outcome::Won, at)) if at > origin => won_value_of(lead, at),
                _ => None,
            })
            .collect();
        let expected_wins = deals.iter().map(|d| history.win_chance_within(d)).sum();
        rows.push(BacktestOrigin {
            origin,
            open_leads: deals.len(),
            forecast: forecast.forecasted_within_horizon,
            expected_wins,
            wins: won.len(),
            intervals: forecast.intervals,
            realised: won.iter().sum(),
        });
    }
    let coverage = levels
        .iter()
        .enumerate()
        .map(|(i, &level)| {
            let inside = rows
                .iter()
                .filter(|r| {
                    let interval = &r.intervals[i];
                    r.realised >= interval.within_horizon_lower
                        && r.realised <= interval.within_horizon_upper
                })
                .count();
            (level, inside as f64 / rows.len().max(1) as f64)
        })
        .collect();
    let realised_mean = rows.iter().map(|r| r.realised).sum::<f64>() / rows.len().max(1) as f64;
    let error_mean = rows
        .iter()
        .map(|r| (r.realised - r.forecast).abs())
        .sum::<f64>()
        / rows.len().max(1) as f64;
    Ok(PipelineBacktest {
        horizon_days,
        origins: rows,
        coverage,
        relative_error: if realised_mean > 0.0 {
            error_mean / realised_mean
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(probability: f64, value: f64) -> OpenDeal {
        OpenDeal {
            lead_ext_id: format!("L{probability}-{value}"),
            source: "web".into(),
            owner: "ana".into(),
            stage: Stage::Qualified,
            age_days: 0.0,
            days_in_stage: 0.0,
            probability,
            probability_from: ProbabilityFrom::History,
            value,
            value_estimated: false,
        }
    }

    fn empty_history() -> ClosedHistory {
        ClosedHistory::as_of(&[], 0, 30.0)
    }

    #[test]
    fn expected_value_is_the_weighted_sum_and_the_interval_holds_the_exact_quantiles() {
        // 100 deals at p = 0.3 worth 1,000: the total is 1,000 × Binomial(100, 0.3),
        // whose exact 10% and 90% quantiles are 24 and 36 wins.
        let deals: Vec<OpenDeal> = (0..100)
            .map(|i| OpenDeal {
                lead_ext_id: format!("L{i}"),
                ..deal(0.3, 1000.0)
            })
            .collect();
        let value = pipeline_value(&deals, &empty_history(), 30.0, &[0.8]).unwrap();
        assert!((value.forecasted_value - 30_000.0).abs() < 1e-6);
        assert_eq!(value.current_pipeline_value, 100_000.0);
        let interval = &value.intervals[0];
        assert!(
            (23_000.0..=25_000.0).contains(&interval.lower),
            "{interval:?}"
        );
        assert!(
            (35_000.0..=37_000.0).contains(&interval.upper),
            "{interval:?}"
        );
        // No win in the history: nothing can be placed within the horizon.
        assert_eq!(value.forecasted_within_horizon, 0.0);
        assert_eq!(value.by_owner["ana"].open_leads, 100);
    }

    #[test]
    fn the_same_inputs_give_the_same_interval() {
        let deals = vec![deal(0.2, 500.0), deal(0.7, 2000.0), deal(0.5, 800.0)];
        let a = pipeline_value(&deals, &empty_history(), 14.0, &[0.8, 0.95]).unwrap();
        let b = pipeline_value(&deals, &empty_history(), 14.0, &[0.8, 0.95]).unwrap();
        assert_eq!(a, b);
        assert!(a.intervals[1].lower <= a.intervals[0].lower);
        assert!(a.intervals[1].upper >= a.intervals[0].upper);
    }

    #[test]
    fn bad_horizons_and_levels_are_refused() {
        let deals = vec![deal(0.5, 1.0)];
        assert_eq!(
            pipeline_value(&deals, &empty_history(), 0.0, &[0.8]),
            Err(PipelineValueError::Horizon(0.0))
        );
        assert_eq!(
            pipeline_value(&deals, &empty_history(), 7.0, &[1.0]),
            Err(PipelineValueError::Level(1.0))
        );
    }

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

    #[test]
    fn quantile_is_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.1), 1.0);
        assert_eq!(quantile(&values, 0.5), 5.0);
        assert_eq!(quantile(&values, 0.95), 10.0);
    }
}
