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

mod backtest;
mod history;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use backtest::{backtest, BacktestOrigin, PipelineBacktest};
pub use history::ClosedHistory;

use crate::core::state::LeadState;
use crate::events::{Millis, Stage};
use history::{snapshot, value_as_of};

/// Monte Carlo draws: a 95% interval's tails then rest on 100 draws each.
const DRAWS: usize = 4000;
const SEED: u64 = 0x1ead_f10e;
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
    /// The model that gave the probability, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
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
        // An erased lead can no longer be contacted: no deal is left to win.
        if lead.erased_at.is_some_and(|erased| erased <= at) {
            continue;
        }
        // The lead as it stood at `at`, not as it stands now: a scheduled
        // forecast is made after its slot and must not see later events.
        let held = lead.held_at_or_latest(at);
        let Some(now) = snapshot(lead, at, &held) else {
            continue;
        };
        // A score no longer known falls back to the history.
        let model_score = lead
            .score_as_of(at)
            .flatten()
            .filter(|s| use_model && s.model_version.is_some());
        let model_probability = model_score
            .and_then(|s| s.ml_score)
            .map(|score| (score / 100.0).clamp(0.0, 1.0));
        let (probability, probability_from) = match model_probability {
            Some(p) => (p, ProbabilityFrom::Model),
            None => (
                history.rate(now.stage, now.source),
                ProbabilityFrom::History,
            ),
        };
        let (value, value_estimated) =
            value_as_of(lead, at, history.avg_deal_value, held.estimated_value);
        let owner = held.owner.unwrap_or(UNASSIGNED).to_string();
        deals.push(OpenDeal {
            lead_ext_id: lead.lead_ext_id.clone(),
            source: now.source.to_string(),
            owner,
            stage: now.stage,
            age_days: now.age_days,
            days_in_stage: now.days_in_stage,
            probability,
            probability_from,
            model_version: model_probability
                .and(model_score)
                .and_then(|s| s.model_version.clone()),
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
            model_version: None,
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

    #[test]
    fn quantile_is_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.1), 1.0);
        assert_eq!(quantile(&values, 0.5), 5.0);
        assert_eq!(quantile(&values, 0.95), 10.0);
    }
}
