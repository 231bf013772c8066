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
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let mut record = record.map_err(|source| CsvScoringError::Row { line, source })?;
        let values: Vec<FeatureValue> = model
            .encoder
            .features
            .iter()
            .zip(&columns)
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
            .collect();
        record.push_field(&format!("{:.6}", model.probability(&values)));
        writer.write_record(&record)?;
        rows += 1;
    }
    writer.flush()?;
    Ok(rows)
}
