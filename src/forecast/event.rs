//! The three forecasts as `ForecastEvent`s (SPEC §2), the record that goes
//! to `lead-forecasts`, with a deterministic forecast_id: the same kind,
//! horizon and clock time always give the same id, so a forecast made again
//! after a crash or in a replay is recognised as the same one.

use crate::core::ids::output_id;
use crate::events::{
    DailyLeadForecast, ForecastEvent, ForecastKind, LeadGenerationForecast as LeadGenerationRecord,
    Millis, PipelineBreakdown, PipelineValueForecast, SourceTimeToClose, TimeToCloseForecast,
    ValueInterval,
};

use super::lead_generation::LeadGenerationForecast;
use super::pipeline_value::PipelineValue;
use super::time_to_close::TimeToClose;

/// The id of the `kind` forecast made at `generated_at` for `horizon_days`.
pub fn forecast_id(kind: ForecastKind, generated_at: Millis, horizon_days: u32) -> String {
    output_id(
        kind.as_str(),
        "forecast",
        &format!("{generated_at}\u{1f}{horizon_days}"),
    )
}

fn event(
    kind: ForecastKind,
    generated_at: Millis,
    horizon_days: u32,
    confidence: f64,
) -> ForecastEvent {
    ForecastEvent {
        forecast_id: forecast_id(kind, generated_at, horizon_days),
        kind,
        generated_at,
        horizon_days: horizon_days as i32,
        confidence,
        pipeline_value: None,
        time_to_close: None,
        lead_generation: None,
    }
}

/// The value to be won within the horizon and its interval at `level`
/// (one of the levels the forecast was made with); `None` if it was not.
pub fn pipeline_value_event(
    value: &PipelineValue,
    generated_at: Millis,
    level: f64,
) -> Option<ForecastEvent> {
    let interval = value.intervals.iter().find(|i| i.level == level)?;
    let mut out = event(
        ForecastKind::PipelineValue,
        generated_at,
        value.horizon_days as u32,
        level,
    );
    let breakdown = [
        ("source", &value.by_source),
        ("owner", &value.by_owner),
        ("stage", &value.by_stage),
    ]
    .into_iter()
    .flat_map(|(dimension, groups)| {
        groups.iter().map(move |(name, b)| PipelineBreakdown {
            dimension: dimension.to_string(),
            name: name.clone(),
            open_leads: b.open_leads as i64,
            current_value: b.current_value,
            expected_value: b.expected_value,
            expected_within_horizon: b.expected_within_horizon,
        })
    })
    .collect();
    out.pipeline_value = Some(PipelineValueForecast {
        current_pipeline_value: value.current_pipeline_value,
        forecasted_value: value.forecasted_within_horizon,
        conversion_rate: value.conversion_rate,
        avg_deal_value: value.avg_deal_value,
        confidence: level,
        lower: interval.within_horizon_lower,
        upper: interval.within_horizon_upper,
        open_leads: value.open_leads as i64,
        expected_value: Some(value.forecasted_value),
        historical_estimate: Some(value.historical_estimate),
        intervals: value
            .intervals
            .iter()
            .map(|i| ValueInterval {
                level: i.level,
                lower: i.within_horizon_lower,
                upper: i.within_horizon_upper,
            })
            .collect(),
        breakdown,
    });
    Some(out)
}

/// Days from creation to a win, for the leads that win: median, and p25 to
/// p75 as the interval (so the confidence is 0.5), restricted mean, and
/// the leads counted. `None` while fewer than three quarters of the wins
/// the data have seen are in (the upper quartile is not yet known).
pub fn time_to_close_event(
    result: &TimeToClose,
    generated_at: Millis,
    horizon_days: u32,
) -> Option<ForecastEvent> {
    let to_win = &result.overall.to_win;
    let mut out = event(ForecastKind::TimeToClose, generated_at, horizon_days, 0.5);
    out.time_to_close = Some(TimeToCloseForecast {
        mean_days: result.overall.restricted_mean_days,
        median_days: to_win.median?,
        lower_days: to_win.p25?,
        upper_days: to_win.p75?,
        sample_size: result.overall.observations as i64,
        p90_days: to_win.p90,
        by_source: result
            .by_source
            .iter()
            .map(|(source, summary)| SourceTimeToClose {
                source: source.clone(),
                sample_size: summary.observations as i64,
                p25_days: summary.to_win.p25,
                median_days: summary.to_win.median,
                p75_days: summary.to_win.p75,
                p90_days: summary.to_win.p90,
            })
            .collect(),
    });
    Some(out)
}

/// Leads expected per day and in all, with the interval at `level`. The
/// total's bounds are the sums of the days' bounds: wider than an interval
/// of the total needs to be, never narrower.
pub fn lead_generation_event(
    forecast: &LeadGenerationForecast,
    generated_at: Millis,
    level: f64,
) -> Option<ForecastEvent> {
    let position = forecast
        .days
        .first()?
        .intervals
        .iter()
        .position(|i| i.level == level)?;
    let daily: Vec<DailyLeadForecast> = forecast
        .days
        .iter()
        .map(|day| DailyLeadForecast {
            date: day.date.to_string(),
            expected: day.expected,
            lower: day.intervals[position].lower,
            upper: day.intervals[position].upper,
        })
        .collect();
    let mut out = event(
        ForecastKind::LeadGeneration,
        generated_at,
        forecast.days.len() as u32,
        level,
    );
    out.lead_generation = Some(LeadGenerationRecord {
        expected_leads: forecast.expected_total(),
        lower: daily.iter().map(|d| d.lower).sum(),
        upper: daily.iter().map(|d| d.upper).sum(),
        daily,
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::forecast::lead_generation;
    use crate::forecast::pipeline_value::{open_deals, pipeline_value, ClosedHistory};
    use crate::forecast::series::DailySeries;

    #[test]
    fn ids_depend_on_kind_time_and_horizon_only() {
        let id = forecast_id(ForecastKind::PipelineValue, 1_000, 30);
        assert_eq!(id, forecast_id(ForecastKind::PipelineValue, 1_000, 30));
        assert_ne!(id, forecast_id(ForecastKind::TimeToClose, 1_000, 30));
        assert_ne!(id, forecast_id(ForecastKind::PipelineValue, 1_001, 30));
        assert_ne!(id, forecast_id(ForecastKind::PipelineValue, 1_000, 14));
    }

    #[tokio::test]
    async fn events_carry_the_forecasts_and_survive_the_wire_format() {
        let series = DailySeries {
            start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
            counts: (0..120)
                .map(|d| [9.0, 10.0, 9.0, 8.0, 7.0, 2.0, 0.0][d % 7])
                .collect(),
        };
        let leads = lead_generation::forecast(&series, 7, &[0.8, 0.95]).unwrap();
        let event = lead_generation_event(&leads, 5_000, 0.95).unwrap();
        let record = event.lead_generation.as_ref().unwrap();
        assert_eq!(event.horizon_days, 7);
        assert_eq!(record.daily.len(), 7);
        assert_eq!(record.daily[0].date, "2026-05-05");
        assert!((record.expected_leads - leads.expected_total()).abs() < 1e-9);
        assert!(record.lower <= record.expected_leads && record.expected_leads <= record.upper);
        assert!(
            lead_generation_event(&leads, 5_000, 0.5).is_none(),
            "no such level"
        );

        let history = ClosedHistory::as_of(&[], 0, 30.0);
        let value =
            pipeline_value(&open_deals(&[], 0, &history, false), &history, 30.0, &[0.8]).unwrap();
        let pipeline = pipeline_value_event(&value, 5_000, 0.8).unwrap();
        assert_eq!(pipeline.kind, ForecastKind::PipelineValue);
        assert_eq!(pipeline.horizon_days, 30);

        // Ten leads won after 1..=10 days, two still open.
        let day = crate::events::MILLIS_PER_DAY;
        let leads: Vec<_> = (1..=12)
            .map(|d: i64| {
                let mut lead = crate::core::state::LeadState::new(&format!("L{d}"));
                lead.created_at = Some(0);
                if d <= 10 {
                    lead.stage_history
                        .push(crate::core::state::StageTransition {
                            from: Some(crate::events::Stage::New),
                            to: crate::events::Stage::ClosedWon,
                            at: d * day,
                            owner: None,
                            deal_value: None,
                            event_id: format!("e{d}"),
                        });
                }
                lead
            })
            .collect();
        let close = crate::forecast::time_to_close::time_to_close(&leads, 30 * day);
        let closing = time_to_close_event(&close, 5_000, 30).unwrap();
        let record = closing.time_to_close.as_ref().unwrap();
        assert_eq!(
            (record.lower_days, record.median_days, record.upper_days),
            (3.0, 5.0, 8.0)
        );
        assert_eq!(record.sample_size, 12);
        assert_eq!(closing.confidence, 0.5);

        let codec = Codec::new(None);
        for event in [event, pipeline, closing] {
            let bytes = codec.encode_single_object(&event).unwrap();
            let back: ForecastEvent = codec.decode(&bytes).await.unwrap();
            assert_eq!(back, event);
        }
    }
}
