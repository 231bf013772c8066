//! Analytics over the stage transitions the commit path writes
//! (`lead_transitions`): pure functions over the rows and aggregates the
//! store reads: the funnel, time in stage, per owner and source, daily
//! trends, and the daily history stored in `lead_analytics`.

pub mod breakdown;
pub mod funnel;
pub mod history;
pub mod time_in_stage;

/// One row of `lead_transitions`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TransitionRow {
    pub lead_ext_id: String,
    /// 0: the lead's creation; n: its n-th stage change.
    pub seq: i32,
    pub from_stage: Option<String>,
    pub to_stage: String,
    pub at: i64,
    pub owner: Option<String>,
    pub source: Option<String>,
    pub value: Option<f64>,
    pub event_id: Option<String>,
}

/// `[from, until)` in epoch milliseconds of the UTC days `from` to `to`,
/// both counted (either open-ended when absent).
pub fn period(
    from: Option<chrono::NaiveDate>,
    to: Option<chrono::NaiveDate>,
) -> Result<(i64, i64), String> {
    let start = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis()
    };
    let from_ms = from.map_or(i64::MIN, start);
    let until = match to {
        Some(d) => start(
            d.succ_opt()
                .ok_or_else(|| format!("to {d} has no next day"))?,
        ),
        None => i64::MAX,
    };
    if from_ms >= until {
        return Err("from is after to: the period is empty".into());
    }
    Ok((from_ms, until))
}

/// The days since 1970-01-01 of a [`period`] (open ends stay open).
pub fn period_days((from, until): (i64, i64)) -> (i64, i64) {
    let day = |t: i64| match t {
        i64::MIN | i64::MAX => t,
        t => history::day_of(t),
    };
    (day(from), day(until))
}

/// The data's clock: the latest transition time, where open stays and
/// open leads are censored (so a replay on event time reports what the live
/// run did).
pub fn latest_at(rows: &[TransitionRow]) -> i64 {
    rows.iter().map(|r| r.at).max().unwrap_or(0)
}

/// A row for the unit tests: lead, sequence, stage entered, day.
#[cfg(test)]
pub(crate) fn test_row(lead: &str, seq: i32, to: crate::events::Stage, day: i64) -> TransitionRow {
    TransitionRow {
        lead_ext_id: lead.into(),
        seq,
        from_stage: None,
        to_stage: to.as_str().into(),
        at: day * crate::events::MILLIS_PER_DAY,
        owner: None,
        source: None,
        value: None,
        event_id: None,
    }
}
