//! Forecasts made at past dates from what was known then, against the
//! value actually won within the horizon.

use serde::Serialize;

use super::super::time_to_close::{close_as_of, Outcome};
use super::history::won_value_of;
use super::{open_deals, pipeline_value, ClosedHistory, PipelineValueError, ValueInterval};
use crate::core::state::LeadState;
use crate::events::{Millis, MILLIS_PER_DAY};

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
                Some((Outcome::Won, at)) if at > origin => {
                    won_value_of(lead, at, lead.estimated_value)
                }
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
