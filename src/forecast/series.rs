//! A daily count series (leads created per day) and its CSV form: a header
//! `date,count`, one row per day, ISO dates, any order; a day without a row
//! is a day with no leads.

use std::io::Read;

use chrono::{Days, NaiveDate};

#[derive(Debug, Clone, PartialEq)]
pub struct DailySeries {
    /// The day of `counts[0]`.
    pub start: NaiveDate,
    /// One count per day, no gaps.
    pub counts: Vec<f64>,
}

/// Days a series may span: a century, so that two far-apart dates in a
/// hostile file cannot ask for gigabytes.
const MAX_DAYS: i64 = 36_600;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SeriesError {
    #[error("the header must name the columns `date` and `count`; it has: {found}")]
    MissingColumn { found: String },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the file has no rows, so there is no series to forecast")]
    Empty,
    #[error("the dates span {days} days, more than the {MAX_DAYS} a series may cover")]
    TooLong { days: i64 },
    #[error("reading the CSV: {0}")]
    Csv(String),
}

impl DailySeries {
    pub fn date(&self, day: usize) -> NaiveDate {
        self.start + Days::new(day as u64)
    }

    /// The day after the last one.
    pub fn end(&self) -> NaiveDate {
        self.date(self.counts.len())
    }

    /// From (days since 1970-01-01, count) pairs in any order, as the store
    /// counts them, keeping at most the newest century; `None` when there
    /// are none.
    pub fn from_epoch_days(days: &[(i64, i64)]) -> Option<DailySeries> {
        let last = days.iter().map(|(d, _)| *d).max()?;
        let first = days.iter().map(|(d, _)| *d).min()?.max(last - MAX_DAYS + 1);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
        let start = epoch.checked_add_signed(chrono::TimeDelta::try_days(first)?)?;
        let mut counts = vec![0.0; (last - first + 1) as usize];
        for (day, count) in days.iter().filter(|(d, _)| *d >= first) {
            counts[(day - first) as usize] += *count as f64;
        }
        Some(DailySeries { start, counts })
    }

    /// Reads `date,count` rows; refuses, with the line and the reason, a
    /// date that is not `YYYY-MM-DD`, a count that is not a whole number of
    /// zero or more, and a date given twice.
    pub fn from_csv(input: impl Read) -> Result<DailySeries, SeriesError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(input);
        let headers = reader
            .headers()
            .map_err(|e| SeriesError::Csv(e.to_string()))?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let (Some(date_column), Some(count_column)) = (column("date"), column("count")) else {
            return Err(SeriesError::MissingColumn {
                found: headers.iter().collect::<Vec<_>>().join(","),
            });
        };
        let mut rows: Vec<(NaiveDate, f64, usize)> = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let bad = |reason: String| SeriesError::Line { line, reason };
            let record = record.map_err(|e| bad(e.to_string()))?;
            let raw_date = record.get(date_column).unwrap_or("");
            let date = NaiveDate::parse_from_str(raw_date, "%Y-%m-%d")
                .map_err(|_| bad(format!("date `{raw_date}` is not an ISO date (YYYY-MM-DD)")))?;
            let raw_count = record.get(count_column).unwrap_or("");
            let count: f64 = raw_count
                .parse()
                .ok()
                .filter(|c: &f64| c.is_finite())
                .ok_or_else(|| bad(format!("count `{raw_count}` is not a number")))?;
            if count < 0.0 {
                return Err(bad(format!("count {raw_count} is negative")));
            }
            if count.fract() != 0.0 {
                return Err(bad(format!(
                    "count {raw_count} is not a whole number of leads"
                )));
            }
            rows.push((date, count, line));
        }
        rows.sort_by_key(|(date, _, line)| (*date, *line));
        if let Some(pair) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SeriesError::Line {
                line: pair[1].2,
                reason: format!(
                    "date {} is given twice (first on line {})",
                    pair[1].0, pair[0].2
                ),
            });
        }
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(SeriesError::Empty);
        };
        let days = (last.0 - first.0).num_days() + 1;
        if days > MAX_DAYS {
            return Err(SeriesError::TooLong { days });
        }
        let start = first.0;
        let mut counts = vec![0.0; days as usize];
        for (date, count, _) in &rows {
            counts[(*date - start).num_days() as usize] = *count;
        }
        Ok(DailySeries { start, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<DailySeries, SeriesError> {
        DailySeries::from_csv(text.as_bytes())
    }

    #[test]
    fn rows_in_any_order_with_gaps_become_one_count_per_day() {
        let series = read("date,count\n2026-03-04,5\n2026-03-01,2\n2026-03-02,0\n").unwrap();
        assert_eq!(series.start, NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        assert_eq!(series.counts, vec![2.0, 0.0, 0.0, 5.0]);
        assert_eq!(series.end(), NaiveDate::from_ymd_opt(2026, 3, 5).unwrap());
    }

    #[test]
    fn store_counts_become_a_series_from_their_first_day() {
        // 2026-03-01 is day 20513 since 1970-01-01.
        let series = DailySeries::from_epoch_days(&[(20516, 4), (20513, 1)]).unwrap();
        assert_eq!(series.start, NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        assert_eq!(series.counts, vec![1.0, 0.0, 0.0, 4.0]);
        assert_eq!(DailySeries::from_epoch_days(&[]), None);
    }

    #[test]
    fn bad_rows_are_refused_with_the_line_and_the_reason() {
        let line = |text: &str| match read(text) {
            Err(SeriesError::Line { line, reason }) => (line, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            line("date,count\n2026-03-01,2\n2026-02-30,1\n"),
            (
                3,
                "date `2026-02-30` is not an ISO date (YYYY-MM-DD)".into()
            )
        );
        assert_eq!(
            line("date,count\n2026-03-01,-3\n"),
            (2, "count -3 is negative".into())
        );
        assert_eq!(
            line("date,count\n2026-03-01,many\n"),
            (2, "count `many` is not a number".into())
        );
        assert_eq!(
            line("date,count\n2026-03-01,2.5\n"),
            (2, "count 2.5 is not a whole number of leads".into())
        );
        assert_eq!(
            line("date,count\n2026-03-01,1\n2026-03-02,1\n2026-03-01,4\n"),
            (4, "date 2026-03-01 is given twice (first on line 2)".into())
        );
        assert_eq!(
            read("day,leads\n2026-03-01,1\n"),
            Err(SeriesError::MissingColumn {
                found: "day,leads".into()
            })
        );
        assert_eq!(read("date,count\n"), Err(SeriesError::Empty));
        assert_eq!(
            read("date,count\n0001-01-01,1\n9999-01-01,1\n"),
            Err(SeriesError::TooLong { days: 3_651_695 })
        );
    }
}
