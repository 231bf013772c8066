//! The three forecasts made together at one time, as the processor's
//! schedule (and `leadflow forecast --record`) makes them: each a
//! [`MadeForecast`], the event to publish with its inputs summarised, or a
//! [`NotMade`] saying why the data do not allow it yet.
//!
//! Everything is read as of the forecast's time from the lead states, so a
//! forecast made later than its slot, on a store that has moved on, or in a
//! replay, comes out the same: creations, stages and deal values by their
//! event times; scores, owners, sources and estimates by
//! [`LeadState::held_at`].

use chrono::NaiveDate;

use crate::core::state::LeadState;
use crate::events::{ForecastEvent, ForecastKind, Millis, MILLIS_PER_DAY};

use super::event::{lead_generation_event, pipeline_value_event, time_to_close_event};
use super::lead_generation;
use super::pipeline_value::{self, ClosedHistory, PipelineValue};
use super::series::DailySeries;
use super::time_to_close::{self, created_at};

/// What to forecast and how far.
#[derive(Debug, Clone, Copy)]
pub struct ForecastPlan<'a> {
    pub horizon_days: u32,
    pub lead_generation_days: u32,
    /// The first is the event's `confidence`; the stored detail has them all.
    pub levels: &'a [f64],
}

/// A forecast ready to publish and store.
#[derive(Debug, Clone, PartialEq)]
pub struct MadeForecast {
    pub event: ForecastEvent,
    /// The model whose probabilities it used, if any.
    pub model_version: Option<String>,
    /// Open leads, leads observed, or days of series it counted.
    pub leads_counted: usize,
    /// The whole result (every level, the breakdowns) as JSON.
    pub detail: String,
}

/// A forecast the data do not allow yet, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct NotMade {
    pub kind: ForecastKind,
    pub reason: String,
}

fn detail(result: &impl serde::Serialize) -> String {
    serde_json::to_string(result).expect("forecasts are plain data")
}

/// The pipeline value as of `at`, with the active model's probabilities
/// where the leads had them then.
pub fn pipeline_value_as_of(
    leads: &[LeadState],
    at: Millis,
    horizon_days: u32,
    levels: &[f64],
) -> Result<(PipelineValue, Option<String>), NotMade> {
    let not_made = |reason: String| NotMade {
        kind: ForecastKind::PipelineValue,
        reason,
    };
    let history = ClosedHistory::as_of(leads, at, horizon_days.into());
    let deals = pipeline_value::open_deals(leads, at, &history, true);
    let model_version = deals.iter().filter_map(|d| d.model_version.clone()).max();
    let value = pipeline_value::pipeline_value(&deals, &history, horizon_days.into(), levels)
        .map_err(|e| not_made(e.to_string()))?;
    Ok((value, model_version))
}

pub fn made_pipeline_value(
    value: &PipelineValue,
    model_version: Option<String>,
    at: Millis,
    level: f64,
) -> Result<MadeForecast, NotMade> {
    let event = pipeline_value_event(value, at, level).ok_or_else(|| NotMade {
        kind: ForecastKind::PipelineValue,
        reason: format!("the forecast has no interval at level {level}"),
    })?;
    Ok(MadeForecast {
        event,
        model_version,
        leads_counted: value.open_leads,
        detail: detail(value),
    })
}

pub fn made_time_to_close(
    result: &time_to_close::TimeToClose,
    at: Millis,
) -> Result<MadeForecast, NotMade> {
    let event = time_to_close_event(result, at, 0).ok_or_else(|| NotMade {
        kind: ForecastKind::TimeToClose,
        reason: format!(
            "{} leads observed and too few of them won: the upper quartile of the time to a win \
             is not known yet",
            result.overall.observations
        ),
    })?;
    Ok(MadeForecast {
        event,
        model_version: None,
        leads_counted: result.overall.observations,
        detail: detail(result),
    })
}

/// Leads created per day before the day of `at` (through the day before,
/// even if nobody came that day); `None` when no lead was.
pub fn created_per_day_before(leads: &[LeadState], at: Millis) -> Option<DailySeries> {
    let today = at.div_euclid(MILLIS_PER_DAY);
    let mut days: Vec<(i64, i64)> = leads
        .iter()
        .filter_map(created_at)
        .map(|t| t.div_euclid(MILLIS_PER_DAY))
        .filter(|d| *d < today)
        .map(|d| (d, 1))
        .collect();
    if days.is_empty() {
        return None;
    }
    days.push((today - 1, 0));
    DailySeries::from_epoch_days(&days)
}

pub fn lead_generation_as_of(
    leads: &[LeadState],
    at: Millis,
    days: u32,
    levels: &[f64],
) -> Result<MadeForecast, NotMade> {
    let not_made = |reason: String| NotMade {
        kind: ForecastKind::LeadGeneration,
        reason,
    };
    let series = created_per_day_before(leads, at)
        .ok_or_else(|| not_made("no lead was created before the forecast's day".into()))?;
    let result = lead_generation::forecast(&series, days as usize, levels)
        .map_err(|e| not_made(e.to_string()))?;
    let event = lead_generation_event(&result, at, levels[0])
        .ok_or_else(|| not_made(format!("no interval at level {}", levels[0])))?;
    Ok(MadeForecast {
        event,
        model_version: None,
        leads_counted: series.counts.len(),
        detail: detail(&result),
    })
}

/// The day a forecast made at `at` starts on.
pub fn first_day(at: Millis) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(at).map(|t| t.date_naive())
}

/// Every kind as of `at`: those made, and those the data do not allow yet.
pub fn forecasts_as_of(
    leads: &[LeadState],
    at: Millis,
    plan: &ForecastPlan<'_>,
) -> (Vec<MadeForecast>, Vec<NotMade>) {
    let level = plan.levels.first().copied().unwrap_or(0.8);
    let attempts = [
        pipeline_value_as_of(leads, at, plan.horizon_days, plan.levels)
            .and_then(|(value, model)| made_pipeline_value(&value, model, at, level)),
        made_time_to_close(&time_to_close::time_to_close(leads, at), at),
        lead_generation_as_of(leads, at, plan.lead_generation_days, plan.levels),
    ];
    let mut made = Vec::new();
    let mut not_made = Vec::new();
    for attempt in attempts {
        match attempt {
            Ok(m) => made.push(m),
            Err(n) => not_made.push(n),
        }
    }
    (made, not_made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::{ScoreSnapshot, SlotSnapshot, StageTransition};
    use crate::events::{Segment, Stage};

    const DAY: Millis = MILLIS_PER_DAY;

    fn lead(id: usize, created: Millis) -> LeadState {
        let mut lead = LeadState::new(&format!("L{id}"));
        lead.created_at = Some(created);
        lead.updated_at = created;
        lead.source = Some(["web", "ads"][id % 2].into());
        lead.estimated_value = Some(1_000.0);
        lead
    }

    fn closed(mut lead: LeadState, at: Millis, won: bool) -> LeadState {
        lead.stage_history.push(StageTransition {
            from: Some(Stage::New),
            to: if won {
                Stage::ClosedWon
            } else {
                Stage::ClosedLost
            },
            at,
            owner: None,
            deal_value: won.then_some(1_200.0),
            event_id: format!("close-{}", lead.lead_ext_id),
        });
        lead.stage = if won {
            Stage::ClosedWon
        } else {
            Stage::ClosedLost
        };
        lead.updated_at = lead.updated_at.max(at);
        lead
    }

    fn score(ml: f64, at: Millis) -> ScoreSnapshot {
        ScoreSnapshot {
            initial_score: 50.0,
            final_score: ml,
            segment: Segment::Standard,
            computed_at: at,
            ml_score: Some(ml),
            model_version: Some("gbt-1".into()),
        }
    }

    /// 90 days of leads with a weekly rhythm, a third of those older than
    /// ten days closed (two thirds of them won).
    fn history() -> Vec<LeadState> {
        let mut leads = Vec::new();
        for day in 0..90 {
            let n = [6, 7, 6, 5, 5, 1, 0][day % 7];
            for k in 0..n {
                let id = leads.len();
                let created = day as Millis * DAY + k * 3_600_000;
                let lead = lead(id, created);
                leads.push(if day < 80 && id % 3 == 0 {
                    closed(lead, created + (3 + id % 9) as Millis * DAY, id % 2 == 0)
                } else {
                    lead
                });
            }
        }
        leads
    }

    #[test]
    fn every_kind_is_made_from_enough_history() {
        let leads = history();
        let plan = ForecastPlan {
            horizon_days: 30,
            lead_generation_days: 14,
            levels: &[0.8, 0.95],
        };
        let (made, not_made) = forecasts_as_of(&leads, 90 * DAY, &plan);
        assert!(not_made.is_empty(), "{not_made:?}");
        let kinds: Vec<ForecastKind> = made.iter().map(|m| m.event.kind).collect();
        assert_eq!(
            kinds,
            [
                ForecastKind::PipelineValue,
                ForecastKind::TimeToClose,
                ForecastKind::LeadGeneration
            ]
        );
        for m in &made {
            assert_eq!(m.event.generated_at, 90 * DAY);
            assert!(m.leads_counted > 0);
        }
        assert_eq!(made[0].event.confidence, 0.8);
        let detail: serde_json::Value = serde_json::from_str(&made[0].detail).unwrap();
        assert_eq!(detail["intervals"].as_array().unwrap().len(), 2);
        // Made again, the same forecasts: ids, figures and all.
        assert_eq!(forecasts_as_of(&leads, 90 * DAY, &plan).0, made);
    }

    #[test]
    fn a_short_history_says_which_kinds_it_cannot_make_and_why() {
        let leads: Vec<LeadState> = history().into_iter().take(60).collect();
        let plan = ForecastPlan {
            horizon_days: 30,
            lead_generation_days: 14,
            levels: &[0.8],
        };
        let (made, not_made) = forecasts_as_of(&leads, 12 * DAY, &plan);
        assert!(made
            .iter()
            .any(|m| m.event.kind == ForecastKind::PipelineValue));
        let lead_generation = not_made
            .iter()
            .find(|n| n.kind == ForecastKind::LeadGeneration)
            .expect("twelve days are too few for lead generation");
        assert!(
            lead_generation.reason.contains("has 12 days"),
            "{}",
            lead_generation.reason
        );
    }

    #[test]
    fn later_events_do_not_change_a_forecast_as_of_an_earlier_time() {
        let at = 60 * DAY;
        let plan = ForecastPlan {
            horizon_days: 30,
            lead_generation_days: 14,
            levels: &[0.8],
        };
        let mut leads = history();
        for (i, l) in leads.iter_mut().enumerate() {
            if l.created_at.unwrap() < at && !l.stage.is_closed() && i % 2 == 0 {
                l.score = Some(score(30.0, l.updated_at));
            }
        }
        let before = forecasts_as_of(&leads, at, &plan).0;
        assert!(before[0].model_version.is_some(), "scores were used");
        // A week on: a score changed by a later event, a close after `at`,
        // leads created after `at`. The forecast as of `at` does not move.
        let mut later = leads.clone();
        for l in later.iter_mut().filter(|l| l.score.is_some()) {
            let held = l.score.clone();
            l.slot_snapshots.push(SlotSnapshot {
                from: l.updated_at,
                until: at + DAY,
                score: held,
                owner: l.owner.clone(),
                source: l.source.clone(),
                estimated_value: l.estimated_value,
            });
            // The later event also moved the lead to another owner and
            // source and changed its estimate.
            l.owner = Some("rep-99".into());
            l.source = Some("partner".into());
            l.estimated_value = Some(9_999.0);
            l.score = Some(score(90.0, at + DAY));
            l.updated_at = at + DAY;
        }
        let open = later
            .iter()
            .position(|l| !l.stage.is_closed() && l.created_at.unwrap() < at)
            .unwrap();
        later[open] = closed(later[open].clone(), at + 2 * DAY, true);
        later.push(lead(10_000, at + 3 * DAY));
        assert_eq!(forecasts_as_of(&later, at, &plan).0, before);
        // Without the kept scores it would have moved.
        for l in &mut later {
            l.slot_snapshots.clear();
        }
        assert_ne!(forecasts_as_of(&later, at, &plan).0[0], before[0]);
    }

    #[test]
    fn the_series_runs_to_the_day_before_even_without_leads_on_it() {
        let leads = vec![lead(0, 2 * DAY + 5), lead(1, 2 * DAY + 7), lead(2, 9 * DAY)];
        let series = created_per_day_before(&leads, 6 * DAY + 3).unwrap();
        assert_eq!(series.counts, vec![2.0, 0.0, 0.0, 0.0]);
        assert_eq!(series.end(), first_day(6 * DAY).unwrap());
        assert!(created_per_day_before(&leads, 2 * DAY).is_none());
    }
}
