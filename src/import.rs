//! `leadflow import`: historical leads from a CRM export (CSV) turned into
//! the events they stand for, so that they go through the same core as live
//! traffic and become training rows like any closed lead.
//!
//! Known columns (any order, names case-insensitive): `lead_ext_id` and
//! `created_at` (required); `outcome` (won/lost, 1/0, closed_won/...) with
//! `closed_at`; `stage` for a lead still open; `source`, `owner`, `email`,
//! `phone`, `first_name`, `last_name`, `company`, `timezone`,
//! `estimated_value`, `probability` (0..1), `initial_score` (0..100),
//! `deal_value`. Every other column is a custom attribute. A row that breaks
//! a rule is reported with its line number and never altered to fit.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::config::Config;
use crate::core::apply::BatchClock;
use crate::events::{InputEvent, LeadEvent, LeadEventKind, Millis, Stage, StageChangeEvent};
use crate::ml::training::{parse_outcome, parse_time};
use crate::pipeline::replay::apply_in_batches;
use crate::pipeline::RunSummary;
use crate::store::{LeadStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// A row that could not be imported.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ParsedImport {
    /// Per good row: its line and the events it stands for, oldest first.
    pub rows: Vec<(u64, Vec<InputEvent>)>,
    pub errors: Vec<RowError>,
}

const KNOWN: &[&str] = &[
    "lead_ext_id",
    "created_at",
    "closed_at",
    "outcome",
    "stage",
    "source",
    "owner",
    "email",
    "phone",
    "first_name",
    "last_name",
    "company",
    "timezone",
    "estimated_value",
    "probability",
    "initial_score",
    "deal_value",
];

pub fn parse_csv(path: &str, reader: impl Read) -> Result<ParsedImport, ImportError> {
    let file_error = |reason: String| ImportError::File {
        path: path.to_string(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(reader);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| file_error(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let index: BTreeMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_ascii_lowercase(), i))
        .collect();
    if index.len() != headers.len() {
        return Err(file_error("two columns have the same name".into()));
    }
    for required in ["lead_ext_id", "created_at"] {
        if !index.contains_key(required) {
            return Err(file_error(format!(
                "no `{required}` column (columns: {})",
                headers.join(", ")
            )));
        }
    }
    let attribute_columns: Vec<(usize, &String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| !KNOWN.contains(&h.to_ascii_lowercase().as_str()))
        .collect();
    let mut parsed = ParsedImport::default();
    let mut seen = HashSet::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let result = record
            .map_err(|e| e.to_string())
            .and_then(|record| row_events(&record, &index, &attribute_columns));
        match result {
            Ok(events) => {
                let id = events[0].lead_ext_id().to_string();
                if !seen.insert(id.clone()) {
                    parsed.errors.push(RowError {
                        line,
                        reason: format!("lead_ext_id `{id}` appears on an earlier line"),
                    });
                } else {
                    parsed.rows.push((line, events));
                }
            }
            Err(reason) => parsed.errors.push(RowError { line, reason }),
        }
    }
    Ok(parsed)
}

fn row_events(
    record: &csv::StringRecord,
    index: &BTreeMap<String, usize>,
    attribute_columns: &[(usize, &String)],
) -> Result<Vec<InputEvent>, String> {
    let text = |name: &str| {
        index
            .get(name)
            .map(|&i| record.get(i).unwrap_or("").trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let number = |name: &str, range: Option<(f64, f64)>| -> Result<Option<f64>, String> {
        let Some(raw) = text(name) else {
            return Ok(None);
        };
        let v: f64 = raw
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("{name} `{raw}` is not a number"))?;
        if let Some((lo, hi)) = range {
            if !(lo..=hi).contains(&v) {
                return Err(format!("{name} {v} is outside {lo}..{hi}"));
            }
        }
        Ok(Some(v))
    };
    let time = |name: &str| -> Result<Option<Millis>, String> {
        text(name)
            .map(|raw| parse_time(&raw).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let lead_ext_id = text("lead_ext_id").ok_or("lead_ext_id is empty")?;
    let created_at = time("created_at")?.ok_or("created_at is empty")?;
    let closed_at = time("closed_at")?;
    let outcome = text("outcome").map(|raw| parse_outcome(&raw)).transpose()?;
    let stage = text("stage").map(|raw| raw.parse::<Stage>()).transpose()?;
    let close = match (outcome, closed_at) {
        (Some(won), Some(at)) => {
            if at < created_at {
                return Err("closed_at is before created_at".into());
            }
            Some((
                if won > 0.5 {
                    Stage::ClosedWon
                } else {
                    Stage::ClosedLost
                },
                at,
            ))
        }
        (Some(_), None) => return Err("outcome is set but closed_at is empty".into()),
        (None, Some(_)) => return Err("closed_at is set but outcome is empty".into()),
        (None, None) => None,
    };
    if let (Some(stage), Some((closed, _))) = (stage, close) {
        if stage != closed {
            return Err(format!("stage {stage} contradicts outcome {closed}"));
        }
    }
    let attributes = attribute_columns
        .iter()
        .filter_map(|(i, name)| {
            let v = record.get(*i).unwrap_or("").trim();
            (!v.is_empty()).then(|| (name.to_string(), v.to_string()))
        })
        .collect();
    let mut events = vec![InputEvent::Lead(LeadEvent {
        event_id: format!("import:{lead_ext_id}:created"),
        lead_ext_id: lead_ext_id.clone(),
        kind: LeadEventKind::Created,
        occurred_at: created_at,
        email: text("email"),
        phone: text("phone"),
        first_name: text("first_name"),
        last_name: text("last_name"),
        company: text("company"),
        source: text("source"),
        owner: text("owner"),
        estimated_value: number("estimated_value", Some((0.0, f64::MAX)))?,
        probability: number("probability", Some((0.0, 1.0)))?,
        initial_score: number("initial_score", Some((0.0, 100.0)))?,
        consent: None,
        timezone: text("timezone"),
        attributes,
    })];
    let deal_value = number("deal_value", Some((0.0, f64::MAX)))?;
    let stage_change = |to_stage: Stage, at: Millis, suffix: &str| {
        InputEvent::StageChange(StageChangeEvent {
            event_id: format!("import:{lead_ext_id}:{suffix}"),
            lead_ext_id: lead_ext_id.clone(),
            occurred_at: at,
            from_stage: None,
            to_stage,
            owner: None,
            deal_value: (to_stage == Stage::ClosedWon)
                .then_some(deal_value)
                .flatten(),
        })
    };
    match (close, stage) {
        (Some((closed, at)), _) => events.push(stage_change(closed, at, "closed")),
        (None, Some(stage)) if stage != Stage::New => {
            events.push(stage_change(stage, created_at, "stage"))
        }
        _ => {}
    }
    Ok(events)
}

/// Applies the parsed rows through the core (event time as the clock, rules
/// only) and stores the leads. Imported history publishes nothing; importing
/// the same file again changes nothing (the event ids are derived from the
/// lead ids).
pub async fn import_rows<S: LeadStore>(
    store: &S,
    config: &Config,
    rows: &[(u64, Vec<InputEvent>)],
) -> Result<RunSummary, StoreError> {
    let events: Vec<(i32, InputEvent)> = rows
        .iter()
        .flat_map(|(_, events)| events.iter().cloned().map(|e| (0, e)))
        .collect();
    let (summary, _) = apply_in_batches(store, config, None, &events, BatchClock::Import).await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_events_and_bad_rows_are_reported_by_line() {
        let csv = "lead_ext_id,created_at,closed_at,outcome,source,estimated_value,industry\n\
                   A-1,2026-01-05,2026-02-01,won,referral,12000,software\n\
                   A-2,2026-01-06,,,web,,retail\n\
                   A-3,2026-01-07,2026-01-01,lost,web,100,\n\
                   A-4,2026-01-07,2026-02-01,maybe,web,100,\n\
                   A-1,2026-01-08,,,web,,\n\
                   A-5,yesterday,,,web,,\n\
                   A-6,2026-01-09,,,web,lots,\n";
        let parsed = parse_csv("x.csv", csv.as_bytes()).unwrap();
        assert_eq!(parsed.rows.len(), 2);
        let lines: Vec<u64> = parsed.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8]);
        assert!(parsed.errors[0].reason.contains("before created_at"));
        assert!(parsed.errors[1].reason.contains("maybe"));
        assert!(parsed.errors[2].reason.contains("earlier line"));
        assert!(parsed.errors[4].reason.contains("estimated_value `lots`"));
        let (line, events) = &parsed.rows[0];
        assert_eq!(*line, 2);
        assert_eq!(events.len(), 2);
        let InputEvent::Lead(lead) = &events[0] else {
            panic!("lead event first")
        };
        assert_eq!(lead.attributes["industry"], "software");
        assert_eq!(lead.estimated_value, Some(12000.0));
        let InputEvent::StageChange(close) = &events[1] else {
            panic!("close second")
        };
        assert_eq!(close.to_stage, Stage::ClosedWon);
        assert_eq!(parsed.rows[1].1.len(), 1, "an open lead is one event");
    }

    #[test]
    fn a_file_without_the_id_column_is_refused() {
        let err = parse_csv("x.csv", "id,created_at\n1,2026-01-01\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no `lead_ext_id` column"), "{err}");
    }
}
