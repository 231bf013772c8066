//! Scoring a CSV file with a trained model: each row's features found by
//! column name, `conversion_probability` appended. A missing column or an
//! unreadable number is a missing value, reported through `warn`.

use std::io::{Read, Write};

use crate::ml::features::FeatureValue;
use crate::ml::model::TrainedModel;
use crate::ml::table::ColumnKind;

#[derive(Debug, thiserror::Error)]
pub enum CsvScoringError {
    #[error("line {line}: {source}")]
    Row { line: usize, source: csv::Error },
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Rows read, then scored together.
const CHUNK_ROWS: usize = 8192;

/// Copies `input` to `output` with `conversion_probability` added; returns
/// the rows scored.
pub fn score_csv(
    model: &TrainedModel,
    input: impl Read,
    output: impl Write,
    warn: &mut dyn FnMut(String),
) -> Result<usize, CsvScoringError> {
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers()?.clone();
    let columns: Vec<Option<usize>> = model
        .encoder
        .features
        .iter()
        .map(|f| headers.iter().position(|h| h.trim() == f.name))
        .collect();
    for (f, c) in model.encoder.features.iter().zip(&columns) {
        if c.is_none() {
            warn(format!("no column `{}`; scored as missing", f.name));
        }
    }
    let mut writer = csv::Writer::from_writer(output);
    let mut out_headers = headers.clone();
    out_headers.push_field("conversion_probability");
    writer.write_record(&out_headers)?;
    let mut rows = 0;
    let mut records = reader.records().enumerate().peekable();
    while records.peek().is_some() {
        // Parsing and warnings in file order, scoring a chunk at a time
        // across the cores.
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        let mut values = Vec::with_capacity(CHUNK_ROWS);
        for (i, record) in records.by_ref().take(CHUNK_ROWS) {
            let line = i + 2;
            let record = record.map_err(|source| CsvScoringError::Row { line, source })?;
            values.push(feature_values(model, &columns, &record, line, warn));
            chunk.push(record);
        }
        for (mut record, p) in chunk.into_iter().zip(model.probabilities(&values)) {
            record.push_field(&format!("{p:.6}"));
            writer.write_record(&record)?;
            rows += 1;
        }
    }
    writer.flush()?;
    Ok(rows)
}

/// A record's features in the model's order, found by column.
fn feature_values(
    model: &TrainedModel,
    columns: &[Option<usize>],
    record: &csv::StringRecord,
    line: usize,
    warn: &mut dyn FnMut(String),
) -> Vec<FeatureValue> {
    model
        .encoder
        .features
        .iter()
        .zip(columns)
        .map(|(f, c)| {
            let raw = c.and_then(|c| record.get(c)).unwrap_or("").trim();
            match f.kind {
                ColumnKind::Numeric => FeatureValue::Number(if raw.is_empty() {
                    f64::NAN
                } else {
                    raw.parse().unwrap_or_else(|_| {
                        warn(format!(
                            "line {line}: {} `{raw}` is not a number; scored as missing",
                            f.name
                        ));
                        f64::NAN
                    })
                }),
                ColumnKind::Categorical => {
                    FeatureValue::Category((!raw.is_empty()).then(|| raw.to_string()))
                }
            }
        })
        .collect()
}
