//! Analytics over the stage transitions the commit path writes
//! (`lead_transitions`): pure functions over the rows and aggregates the
//! store reads: the funnel, time in stage, per owner and source, daily
//! trends.

pub mod breakdown;
pub mod funnel;
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
