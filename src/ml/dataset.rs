//! Labelled rows for training: point-in-time rows from closed leads, or a
//! plain feature table read from a CSV file.

use std::io::Read;

use super::features::Encoder;
use super::features::{extract, FeatureDef, FeatureValue};
use super::table::{ColumnKind, Table};
use super::ScoringConfig;
use crate::core::state::LeadState;
use crate::events::{Millis, Stage};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {reason}")]
    Csv { path: String, reason: String },
    #[error("{path} line {line}: {reason}")]
    CsvRow {
        path: String,
        line: u64,
        reason: String,
    },
}

/// One labelled row: a lead's features just before its outcome.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub at: Millis,
    pub values: Vec<FeatureValue>,
    pub label: f64,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub features: Vec<FeatureDef>,
    /// Whether `Example::at` is a time (false: a CSV file's line number).
    pub timed: bool,
    /// Oldest first: the hold-out is the newest tail.
    pub examples: Vec<Example>,
}

/// When the closing stage change happened, if the lead is closed.
pub fn closed_at(lead: &LeadState) -> Option<Millis> {
    matches!(lead.stage, Stage::ClosedWon | Stage::ClosedLost)
        .then_some(lead.stage_entered_at)
        .flatten()
}

impl Dataset {
    /// Rows from closed leads: each lead's state just before it closed,
    /// evaluated at the close.
    pub fn from_closed_leads(
        leads: &[LeadState],
        scoring: &ScoringConfig,
        features: Vec<FeatureDef>,
    ) -> Dataset {
        let mut examples: Vec<Example> = leads
            .iter()
            .filter_map(|lead| {
                let at = closed_at(lead)?;
                let before = lead.pre_close.as_deref()?;
                Some(Example {
                    id: lead.lead_ext_id.clone(),
                    at,
                    values: extract(before, at, &scoring.policy(), &features),
                    label: (lead.stage == Stage::ClosedWon) as u8 as f64,
                })
            })
            .collect();
        examples.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        Dataset {
            features,
            timed: true,
            examples,
        }
    }

    pub fn positives(&self) -> usize {
        self.examples.iter().filter(|e| e.label > 0.5).count()
    }

    pub fn table(&self, encoder: &Encoder, range: std::ops::Range<usize>) -> (Table, Vec<f64>) {
        let mut table = Table::new(encoder.kinds());
        let mut labels = Vec::with_capacity(range.len());
        for example in &self.examples[range] {
            table.push_row(&encoder.encode(&example.values));
            labels.push(example.label);
        }
        (table, labels)
    }

    /// Index where the hold-out (the newest `fraction`) starts.
    pub fn holdout_start(&self, fraction: f64) -> usize {
        let n = self.examples.len();
        n - ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1))
    }

    /// The rows of the time-based hold-out: the newest `fraction`.
    pub fn holdout_rows(&self, fraction: f64) -> std::ops::Range<usize> {
        self.holdout_start(fraction)..self.examples.len()
    }
}

/// How to read a CSV file as training data.
#[derive(Debug, Clone, Default)]
pub struct CsvSpec {
    pub target: String,
    /// Feature columns; empty means every column but the target, id and time.
    pub features: Vec<String>,
    /// Columns to treat as categories; others are numbers when every value
    /// parses as one and categories otherwise.
    pub categorical: Vec<String>,
    /// Orders the rows for the time-based split; file order without it.
    pub time_column: Option<String>,
    pub id_column: Option<String>,
}

/// Reads a target value as 1 (won) or 0 (lost).
pub fn parse_outcome(raw: &str) -> Result<f64, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "won" | "closed_won" => Ok(1.0),
        "0" | "0.0" | "false" | "no" | "lost" | "closed_lost" => Ok(0.0),
        other => Err(format!(
            "outcome `{other}` is not one of 1/0, true/false, yes/no, won/lost, closed_won/closed_lost"
        )),
    }
}

pub fn parse_time(raw: &str) -> Result<Millis, String> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_millis()
        })
        .map_err(|_| format!("`{raw}` is not epoch millis, RFC 3339 or YYYY-MM-DD"))
}

impl Dataset {
    pub fn from_csv(
        path: &str,
        reader: impl Read,
        spec: &CsvSpec,
    ) -> Result<Dataset, DatasetError> {
        let csv_error = |reason: String| DatasetError::Csv {
            path: path.to_string(),
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(reader);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(e.to_string()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let column = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                csv_error(format!(
                    "no column `{name}` (columns: {})",
                    headers.join(", ")
                ))
            })
        };
        let target = column(&spec.target)?;
        let time = spec.time_column.as_deref().map(column).transpose()?;
        let id = spec.id_column.as_deref().map(column).transpose()?;
        let feature_columns: Vec<usize> = if spec.features.is_empty() {
            (0..headers.len())
                .filter(|i| *i != target && Some(*i) != time && Some(*i) != id)
                .collect()
        } else {
            spec.features
                .iter()
                .map(|f| column(f))
                .collect::<Result<_, _>>()?
        };
        for name in &spec.categorical {
            if !feature_columns.iter().any(|&c| headers[c] == *name) {
                return Err(csv_error(format!(
                    "categorical column `{name}` is not a feature column"
                )));
            }
        }
        let mut records = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i as u64 + 2;
            let record = record.map_err(|e| DatasetError::CsvRow {
                path: path.to_string(),
                line,
                reason: e.to_string(),
            })?;
            records.push((line, record));
        }
        let kinds: Vec<ColumnKind> = feature_columns
            .iter()
            .map(|&c| {
                let forced = spec.categorical.contains(&headers[c]);
                let numeric = records.iter().all(|(_, r)| {
                    let v = r[c].trim();
                    v.is_empty() || v.parse::<f64>().is_ok()
                });
                if forced || !numeric {
                    ColumnKind::Categorical
                } else {
                    ColumnKind::Numeric
                }
            })
            .collect();
        let row_error = |line: u64, reason: String| DatasetError::CsvRow {
            path: path.to_string(),
            line,
            reason,
        };
        let mut examples = Vec::with_capacity(records.len());
        for (line, record) in &records {
            let label = parse_outcome(&record[target])
                .map_err(|r| row_error(*line, format!("column `{}`: {r}", spec.target)))?;
            let at = match time {
                Some(t) => parse_time(&record[t])
                    .map_err(|r| row_error(*line, format!("column `{}`: {r}", headers[t])))?,
                None => *line as Millis,
            };
            let values = feature_columns
                .iter()
                .zip(&kinds)
                .map(|(&c, kind)| {
                    let v = record[c].trim();
                    match kind {
                        ColumnKind::Numeric => FeatureValue::Number(v.parse().unwrap_or(f64::NAN)),
                        ColumnKind::Categorical => {
                            FeatureValue::Category((!v.is_empty()).then(|| v.to_string()))
                        }
                    }
                })
                .collect();
            examples.push(Example {
                id: id.map_or_else(|| format!("line {line}"), |c| record[c].to_string()),
                at,
                values,
                label,
            });
        }
        // Stable: rows with equal times keep their file order.
        examples.sort_by_key(|e| e.at);
        let features = feature_columns
            .iter()
            .zip(kinds)
            .map(|(&c, kind)| FeatureDef {
                name: headers[c].clone(),
                kind,
            })
            .collect();
        Ok(Dataset {
            features,
            timed: time.is_some(),
            examples,
        })
    }
}
