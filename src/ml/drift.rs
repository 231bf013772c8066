//! Feature drift: the population stability index (PSI) of each feature
//! between a reference sample (stored with the model) and recent traffic.
//!
//! PSI = Σ (current% − reference%) · ln(current% / reference%) over the
//! reference's bins (deciles for numbers, one bin per category, one for
//! missing). The usual reading: below 0.1 stable, 0.1–0.25 moderate, above
//! 0.25 a real shift.

use serde::{Deserialize, Serialize};

use super::features::FeatureDef;
use crate::ml::table::{ColumnKind, Table};

/// Shares are floored here so that an empty bin does not make PSI infinite.
const FLOOR: f64 = 1e-4;
const DECILES: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    pub name: String,
    pub kind: ColumnKind,
    /// Numeric: upper edges of the decile bins.
    #[serde(default)]
    pub edges: Vec<f64>,
    /// Share of rows per bin; the last bin is "missing".
    pub shares: Vec<f64>,
}

/// The distribution of each feature in one sample of encoded rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub rows: usize,
    pub features: Vec<FeatureProfile>,
}

impl Profile {
    pub fn of(features: &[FeatureDef], table: &Table) -> Profile {
        let profiles = features
            .iter()
            .zip(&table.columns)
            .map(|(def, column)| {
                let edges = match def.kind {
                    ColumnKind::Numeric => decile_edges(column),
                    ColumnKind::Categorical => Vec::new(),
                };
                let mut profile = FeatureProfile {
                    name: def.name.clone(),
                    kind: def.kind,
                    edges,
                    shares: Vec::new(),
                };
                profile.shares = profile.shares_of(column);
                profile
            })
            .collect();
        Profile {
            rows: table.rows(),
            features: profiles,
        }
    }

    /// PSI of each feature of `current` (same columns) against this profile.
    pub fn psi(&self, current: &Table) -> Vec<(String, f64)> {
        self.features
            .iter()
            .zip(&current.columns)
            .map(|(reference, column)| {
                let shares = reference.shares_of(column);
                let psi = reference
                    .shares
                    .iter()
                    .zip(&shares)
                    .map(|(e, a)| {
                        let (e, a) = (e.max(FLOOR), a.max(FLOOR));
                        (a - e) * (a / e).ln()
                    })
                    .sum();
                (reference.name.clone(), psi)
            })
            .collect()
    }
}

impl FeatureProfile {
    fn bins(&self) -> usize {
        match self.kind {
            // The categories the reference saw (codes), plus "missing or new".
            ColumnKind::Categorical => self.shares.len().max(1),
            ColumnKind::Numeric => self.edges.len() + 2,
        }
    }

    fn shares_of(&self, column: &[f64]) -> Vec<f64> {
        let bins = match (self.kind, self.shares.is_empty()) {
            (ColumnKind::Categorical, true) => {
                column
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|v| *v as usize + 1)
                    .max()
                    .unwrap_or(0)
                    + 1
            }
            _ => self.bins(),
        };
        let mut counts = vec![0usize; bins];
        for v in column {
            let bin = if v.is_nan() {
                bins - 1
            } else {
                match self.kind {
                    ColumnKind::Numeric => self.edges.partition_point(|e| e < v),
                    ColumnKind::Categorical => (*v as usize).min(bins - 1),
                }
            };
            counts[bin] += 1;
        }
        let n = column.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n).collect()
    }
}

fn decile_edges(column: &[f64]) -> Vec<f64> {
    let mut values: Vec<f64> = column.iter().copied().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..DECILES)
        .map(|k| values[k * values.len() / DECILES])
        .collect();
    edges.dedup();
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(numbers: &[f64], categories: &[f64]) -> Table {
        Table {
            kinds: vec![ColumnKind::Numeric, ColumnKind::Categorical],
            columns: vec![numbers.to_vec(), categories.to_vec()],
        }
    }

    #[test]
    fn same_distribution_is_stable_and_a_shifted_one_is_not() {
        let defs = vec![
            FeatureDef {
                name: "n".into(),
                kind: ColumnKind::Numeric,
            },
            FeatureDef {
                name: "c".into(),
                kind: ColumnKind::Categorical,
            },
        ];
        let numbers: Vec<f64> = (0..1000).map(|i| (i % 100) as f64).collect();
        let categories: Vec<f64> = (0..1000).map(|i| (i % 4) as f64).collect();
        let reference = Profile::of(&defs, &table(&numbers, &categories));
        let same = reference.psi(&table(&numbers, &categories));
        assert!(same.iter().all(|(_, p)| *p < 1e-9), "{same:?}");

        let shifted_numbers: Vec<f64> = numbers.iter().map(|v| v + 40.0).collect();
        let mostly_one: Vec<f64> = (0..1000)
            .map(|i| if i % 10 == 0 { 2.0 } else { 0.0 })
            .collect();
        let psi = reference.psi(&table(&shifted_numbers, &mostly_one));
        assert!(psi[0].1 > 0.25, "{psi:?}");
        assert!(psi[1].1 > 0.25, "{psi:?}");
        // A category never seen in the reference counts as missing/new.
        let unseen = reference.psi(&table(&numbers, &vec![9.0; 1000]));
        assert!(unseen[1].1 > 1.0, "{unseen:?}");
    }
}
