//! The data the learners read: raw values column-major, each column numeric
//! or categorical, and the logistic link both learners and the encoder use.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Numeric,
    /// Values are category indices (0, 1, 2, ...).
    Categorical,
}

/// Raw training or scoring data, column-major: NaN is a missing value, a
/// categorical value is its category index.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub kinds: Vec<ColumnKind>,
    pub columns: Vec<Vec<f64>>,
}

impl Table {
    pub fn new(kinds: Vec<ColumnKind>) -> Self {
        let columns = vec![Vec::new(); kinds.len()];
        Table { kinds, columns }
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    pub fn push_row(&mut self, row: &[f64]) {
        for (column, v) in self.columns.iter_mut().zip(row) {
            column.push(*v);
        }
    }

    pub fn row(&self, r: usize) -> Vec<f64> {
        self.columns.iter().map(|c| c[r]).collect()
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Table {
        Table {
            kinds: self.kinds.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| indices.iter().map(|&r| c[r]).collect())
                .collect(),
        }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
