//! Values to bins: quantile edges for numeric features, one bin per category.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ml::table::{ColumnKind, Table};

/// Bins per feature, bin 0 being "missing".
pub(super) const BINS: usize = 256;

/// Maps raw values to bins: quantile edges for numeric features (a value goes
/// to the first bin whose upper edge it does not exceed), one bin per category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binner {
    pub kinds: Vec<ColumnKind>,
    /// Per numeric feature, its bins' upper edges (bin i+1 holds values up to edges[i]).
    pub edges: Vec<Vec<f64>>,
}

impl Binner {
    pub fn fit(table: &Table, max_bins: usize) -> Binner {
        let max_edges = max_bins.clamp(2, BINS - 1) - 1;
        let edges = table
            .columns
            .par_iter()
            .zip(&table.kinds)
            .map(|(column, kind)| match kind {
                ColumnKind::Categorical => Vec::new(),
                ColumnKind::Numeric => numeric_edges(column, max_edges),
            })
            .collect();
        Binner {
            kinds: table.kinds.clone(),
            edges,
        }
    }

    pub fn bin(&self, feature: usize, v: f64) -> u8 {
        if v.is_nan() {
            return 0;
        }
        match self.kinds[feature] {
            ColumnKind::Categorical => category_bin(v),
            ColumnKind::Numeric => {
                let edges = &self.edges[feature];
                (1 + edges.partition_point(|e| *e < v)) as u8
            }
        }
    }

    /// Bins in use by a feature (including the missing bin).
    pub(super) fn bin_count(&self, feature: usize) -> usize {
        match self.kinds[feature] {
            ColumnKind::Categorical => BINS,
            ColumnKind::Numeric => self.edges[feature].len() + 2,
        }
    }

    pub fn bin_table(&self, table: &Table) -> Vec<Vec<u8>> {
        table
            .columns
            .par_iter()
            .enumerate()
            .map(|(f, column)| column.iter().map(|v| self.bin(f, *v)).collect())
            .collect()
    }
}

pub(super) fn category_bin(v: f64) -> u8 {
    // Categories past 253 share the last bin.
    (v.max(0.0) as usize + 1).min(BINS - 1) as u8
}

pub(super) fn numeric_edges(column: &[f64], max_edges: usize) -> Vec<f64> {
    // A strided sample bounds the sort on big tables; 200k values place 254
    // quantiles far more finely than any split needs.
    let stride = (column.len() / 200_000).max(1);
    let mut values: Vec<f64> = column
        .iter()
        .step_by(stride)
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    values.sort_by(f64::total_cmp);
    let mut distinct = values.clone();
    distinct.dedup();
    if distinct.len() <= max_edges + 1 {
        // Few distinct values: cut halfway between neighbours.
        return distinct.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    }
    let mut edges: Vec<f64> = (1..=max_edges)
        .map(|k| values[(k * values.len() / (max_edges + 1)).min(values.len() - 1)])
        .collect();
    edges.dedup();
    if edges.last() == values.last() {
        edges.pop();
    }
    edges
}
