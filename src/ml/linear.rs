//! Logistic regression, the baseline model: fitted by smartcore (L-BFGS with
//! an L2 penalty) on standardised numbers and one-hot categories, then kept as
//! plain weights so that scoring and explaining need no matrix library.

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::ml::table::{sigmoid, ColumnKind, Table};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogisticParams {
    /// L2 penalty on the weights.
    pub alpha: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams { alpha: 1.0 }
    }
}

/// One input column's share of the design matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    /// (x - mean) / scale; a missing value counts as the mean.
    Numeric { mean: f64, scale: f64, weight: f64 },
    /// One weight per category code; missing or unseen adds nothing.
    Categorical { weights: Vec<f64> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub intercept: f64,
    pub terms: Vec<Term>,
}

#[derive(Debug, thiserror::Error)]
#[error("logistic regression: {0}")]
pub struct FitError(String);

impl Logistic {
    pub fn fit(train: &Table, y: &[f64], params: &LogisticParams) -> Result<Logistic, FitError> {
        // The layout first: how many design columns each input column takes.
        let mut layout = Vec::with_capacity(train.kinds.len());
        for (column, kind) in train.columns.iter().zip(&train.kinds) {
            layout.push(match kind {
                ColumnKind::Numeric => {
                    let present: Vec<f64> =
                        column.iter().copied().filter(|v| !v.is_nan()).collect();
                    let n = present.len().max(1) as f64;
                    let mean = present.iter().sum::<f64>() / n;
                    let var = present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let scale = if var > 0.0 { var.sqrt() } else { 1.0 };
                    Term::Numeric {
                        mean,
                        scale,
                        weight: 0.0,
                    }
                }
                ColumnKind::Categorical => {
                    let codes = column
                        .iter()
                        .filter(|v| !v.is_nan())
                        .map(|v| *v as usize + 1)
                        .max()
                        .unwrap_or(0);
                    Term::Categorical {
                        weights: vec![0.0; codes],
                    }
                }
            });
        }
        let width: usize = layout.iter().map(term_width).sum();
        let rows: Vec<Vec<f64>> = (0..train.rows())
            .map(|r| {
                let mut x = vec![0.0; width];
                let mut at = 0;
                for (term, column) in layout.iter().zip(&train.columns) {
                    write_term(term, column[r], &mut x[at..]);
                    at += term_width(term);
                }
                x
            })
            .collect();
        let labels: Vec<i32> = y.iter().map(|v| (*v > 0.5) as i32).collect();
        let matrix = DenseMatrix::from_2d_vec(&rows).map_err(|e| FitError(e.to_string()))?;
        let fitted: LogisticRegression<f64, i32, DenseMatrix<f64>, Vec<i32>> =
            LogisticRegression::fit(
                &matrix,
                &labels,
                LogisticRegressionParameters::default().with_alpha(params.alpha),
            )
            .map_err(|e| FitError(e.to_string()))?;
        let coefficients = fitted.coefficients();
        let mut at = 0;
        for term in &mut layout {
            match term {
                Term::Numeric { weight, .. } => *weight = *coefficients.get((0, at)),
                Term::Categorical { weights } => {
                    for (i, w) in weights.iter_mut().enumerate() {
                        *w = *coefficients.get((0, at + i));
                    }
                }
            }
            at += term_width(term);
        }
        Ok(Logistic {
            intercept: *fitted.intercept().get((0, 0)),
            terms: layout,
        })
    }

    fn contribution(term: &Term, v: f64) -> f64 {
        match term {
            Term::Numeric {
                mean,
                scale,
                weight,
            } => {
                if v.is_nan() {
                    0.0
                } else {
                    weight * (v - mean) / scale
                }
            }
            Term::Categorical { weights } => {
                if v.is_nan() {
                    0.0
                } else {
                    weights.as_slice().get(v as usize).copied().unwrap_or(0.0)
                }
            }
        }
    }

    pub fn margin(&self, row: &[f64]) -> f64 {
        self.intercept
            + self
                .terms
                .iter()
                .zip(row)
                .map(|(t, v)| Self::contribution(t, *v))
                .sum::<f64>()
    }

    pub fn probability(&self, row: &[f64]) -> f64 {
        sigmoid(self.margin(row))
    }

    /// Coefficient times (standardised) value per feature, in log-odds; the
    /// intercept is the bias.
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        for ((c, t), v) in contributions.iter_mut().zip(&self.terms).zip(row) {
            *c += Self::contribution(t, *v);
        }
        self.intercept
    }
}

fn term_width(term: &Term) -> usize {
    match term {
        Term::Numeric { .. } => 1,
        Term::Categorical { weights } => weights.len(),
    }
}

fn write_term(term: &Term, v: f64, out: &mut [f64]) {
    if v.is_nan() {
        return;
    }
    match term {
        Term::Numeric { mean, scale, .. } => out[0] = (v - mean) / scale,
        Term::Categorical { weights } => {
            if (v as usize) < weights.len() {
                out[v as usize] = 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn recovers_the_direction_of_each_effect() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut table = Table::new(vec![ColumnKind::Numeric, ColumnKind::Categorical]);
        let mut y = Vec::new();
        for _ in 0..3000 {
            let x: f64 = rng.random::<f64>() * 10.0;
            let c = rng.random_range(0..3) as f64;
            let logit = 0.6 * (x - 5.0) + if c == 1.0 { 1.5 } else { 0.0 };
            table.push_row(&[x, c]);
            y.push((rng.random::<f64>() < sigmoid(logit)) as u8 as f64);
        }
        let model = Logistic::fit(&table, &y, &LogisticParams::default()).unwrap();
        let Term::Numeric { weight, scale, .. } = &model.terms[0] else {
            panic!("numeric term expected")
        };
        // 0.6 per unit, times the column's standard deviation (~2.9).
        assert!((weight / scale - 0.6).abs() < 0.12, "{}", weight / scale);
        let Term::Categorical { weights } = &model.terms[1] else {
            panic!("categorical term expected")
        };
        assert!(weights[1] - weights[0] > 1.0 && weights[1] - weights[2] > 1.0);
        let row = [8.0, 1.0];
        let mut c = vec![0.0; 2];
        let bias = model.attribute(&row, &mut c);
        assert!((bias + c[0] + c[1] - model.margin(&row)).abs() < 1e-12);
        assert!(model.probability(&row) > 0.9);
    }
}
