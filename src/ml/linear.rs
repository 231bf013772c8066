//! Logistic regression, the baseline model and the start gradient boosting
//! may boost from: L2-penalised log loss on standardised numbers and one-hot
//! categories, minimised by our own Newton method: each step solved exactly
//! (Cholesky) up to 256 weights, by conjugate gradients on Hessian-vector
//! products beyond (the design matrix is never formed: numbers are a dense
//! block, categories one index per row), then kept as plain weights so that scoring
//! and explaining need no matrix library. smartcore's L-BFGS, which this
//! replaced, took 22 s for what this does in well under one (BENCHMARKS.md).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ml::table::{sigmoid, ColumnKind, Table};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogisticParams {
    /// L2 penalty on the weights: the objective is the summed log loss plus
    /// alpha/2 times the squared weights (scikit-learn's C is 1/alpha).
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

/// Rows per parallel task; fixed, so that sums are grouped the same way on
/// every run and the fit is the same bits.
const CHUNK: usize = 4096;
const NO_CATEGORY: u32 = u32::MAX;

/// The design matrix, kept sparse: the standardised numbers of each row
/// (dense) and, per categorical column, the index of the row's one-hot
/// weight. The weight vector is [numbers, categories, intercept].
struct Design {
    rows: usize,
    numbers: Vec<f64>,
    numeric_width: usize,
    codes: Vec<u32>,
    categorical_width: usize,
    dim: usize,
}

impl Design {
    fn new(train: &Table, layout: &[Term]) -> Design {
        let rows = train.rows();
        let numeric_width = layout
            .iter()
            .filter(|t| matches!(t, Term::Numeric { .. }))
            .count();
        let categorical_width = layout.len() - numeric_width;
        let mut numbers = vec![0.0; rows * numeric_width];
        let mut codes = vec![NO_CATEGORY; rows * categorical_width];
        let (mut numeric, mut categorical) = (0, 0);
        let mut offset = numeric_width;
        for (term, column) in layout.iter().zip(&train.columns) {
            match term {
                Term::Numeric { mean, scale, .. } => {
                    for (r, v) in column.iter().enumerate() {
                        if !v.is_nan() {
                            numbers[r * numeric_width + numeric] = (v - mean) / scale;
                        }
                    }
                    numeric += 1;
                }
                Term::Categorical { weights } => {
                    for (r, v) in column.iter().enumerate() {
                        if !v.is_nan() && (*v as usize) < weights.len() {
                            codes[r * categorical_width + categorical] =
                                (offset + *v as usize) as u32;
                        }
                    }
                    offset += weights.len();
                    categorical += 1;
                }
            }
        }
        Design {
            rows,
            numbers,
            numeric_width,
            codes,
            categorical_width,
            dim: offset + 1,
        }
    }

    fn row_numbers(&self, r: usize) -> &[f64] {
        &self.numbers[r * self.numeric_width..(r + 1) * self.numeric_width]
    }

    fn row_codes(&self, r: usize) -> &[u32] {
        &self.codes[r * self.categorical_width..(r + 1) * self.categorical_width]
    }

    /// X w, into `out`.
    fn times(&self, w: &[f64], out: &mut [f64]) {
        let intercept = w[self.dim - 1];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let r = c * CHUNK + i;
                let mut m = intercept;
                for (x, w) in self.row_numbers(r).iter().zip(w) {
                    m += x * w;
                }
                for &code in self.row_codes(r) {
                    if code != NO_CATEGORY {
                        m += w[code as usize];
                    }
                }
                *o = m;
            }
        });
    }

    /// Σ_r weight(r) · x_r ⊙ x_r when `squared`, else Σ_r weight(r) · x_r:
    /// Xᵀ v, or the diagonal of Xᵀ diag(v) X.
    fn transpose_times(&self, v: &[f64], squared: bool) -> Vec<f64> {
        let partial: Vec<Vec<f64>> = v
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, v)| {
                let mut sum = vec![0.0; self.dim];
                for (i, &weight) in v.iter().enumerate() {
                    let r = c * CHUNK + i;
                    for (s, x) in sum.iter_mut().zip(self.row_numbers(r)) {
                        *s += weight * if squared { x * x } else { *x };
                    }
                    for &code in self.row_codes(r) {
                        if code != NO_CATEGORY {
                            sum[code as usize] += weight;
                        }
                    }
                    sum[self.dim - 1] += weight;
                }
                sum
            })
            .collect();
        let mut total = vec![0.0; self.dim];
        for part in partial {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
        total
    }
}

fn softplus(m: f64) -> f64 {
    if m > 0.0 {
        m + (-m).exp().ln_1p()
    } else {
        m.exp().ln_1p()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// The penalised objective at margins `m` and weights `w` (no penalty on the
/// intercept, the last weight).
fn objective(m: &[f64], y: &[f64], w: &[f64], alpha: f64) -> f64 {
    let loss: f64 = m.iter().zip(y).map(|(m, y)| softplus(*m) - y * m).sum();
    loss + 0.5 * alpha * dot(&w[..w.len() - 1], &w[..w.len() - 1])
}

/// Newton's method on the penalised log loss, each step solved exactly
/// (narrow designs) or by conjugate gradients (wide ones) and backtracked
/// until the objective falls. Stops when the largest
/// gradient entry is below 1e-8 per row, tighter than scikit-learn's default.
fn minimise(design: &Design, y: &[f64], alpha: f64) -> Result<Vec<f64>, FitError> {
    let n = design.rows;
    let dim = design.dim;
    let rate = (y.iter().sum::<f64>() / n.max(1) as f64).clamp(1e-6, 1.0 - 1e-6);
    let mut w = vec![0.0; dim];
    w[dim - 1] = (rate / (1.0 - rate)).ln();
    let penalty = |j: usize| if j + 1 < dim { alpha } else { 0.0 };
    let mut m = vec![0.0; n];
    design.times(&w, &mut m);
    let mut f = objective(&m, y, &w, alpha);
    let mut xd = vec![0.0; n];
    let mut trial = vec![0.0; n];
    for _ in 0..100 {
        let p: Vec<f64> = m.iter().map(|m| sigmoid(*m)).collect();
        let residual: Vec<f64> = p.iter().zip(y).map(|(p, y)| p - y).collect();
        let mut g = design.transpose_times(&residual, false);
        for (j, gj) in g.iter_mut().enumerate() {
            *gj += penalty(j) * w[j];
        }
        let largest = g.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        if !largest.is_finite() {
            return Err(FitError("the fit diverged (non-finite gradient)".into()));
        }
        if largest <= 1e-8 * n as f64 {
            break;
        }
        let curvature: Vec<f64> = p.iter().map(|p| (p * (1.0 - p)).max(1e-12)).collect();
        let d = if dim <= DENSE_MAX_WIDTH {
            design
                .dense_hessian(&curvature, alpha)
                .and_then(|h| cholesky_solve(h, &g))
        } else {
            None
        }
        .unwrap_or_else(|| conjugate_gradient_step(design, &g, &curvature, alpha, &mut xd));
        if d.iter().all(|v| *v == 0.0) {
            break;
        }
        design.times(&d, &mut xd);
        let slope = dot(&g, &d);
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            let moved: Vec<f64> = w.iter().zip(&d).map(|(w, d)| w + t * d).collect();
            for ((tr, m), x) in trial.iter_mut().zip(&m).zip(&xd) {
                *tr = m + t * x;
            }
            let f_moved = objective(&trial, y, &moved, alpha);
            if f_moved <= f + 1e-4 * t * slope {
                w = moved;
                std::mem::swap(&mut m, &mut trial);
                f = f_moved;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            // No step lowers the objective any more: as good as f64 allows.
            break;
        }
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(FitError("the fit diverged (non-finite weights)".into()));
    }
    Ok(w)
}

/// Up to this many weights a Newton step forms the Hessian and solves it
/// exactly (Cholesky): cheaper than many conjugate-gradient passes when
/// correlated columns make the problem ill-conditioned (Caravan's 85).
const DENSE_MAX_WIDTH: usize = 256;

impl Design {
    /// Xᵀ diag(curvature) X plus the penalty (not on the intercept), dense
    /// and row-major; `None` if it is not finite.
    fn dense_hessian(&self, curvature: &[f64], alpha: f64) -> Option<Vec<f64>> {
        let dim = self.dim;
        let partial: Vec<Vec<f64>> = curvature
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, curvature)| {
                let mut h = vec![0.0; dim * dim];
                let mut entries: Vec<(usize, f64)> = Vec::with_capacity(dim);
                for (i, &weight) in curvature.iter().enumerate() {
                    let r = c * CHUNK + i;
                    entries.clear();
                    entries.extend(self.row_numbers(r).iter().copied().enumerate());
                    entries.extend(
                        self.row_codes(r)
                            .iter()
                            .filter(|&&code| code != NO_CATEGORY)
                            .map(|&code| (code as usize, 1.0)),
                    );
                    entries.push((dim - 1, 1.0));
                    for &(a, va) in &entries {
                        let row = &mut h[a * dim..(a + 1) * dim];
                        for &(b, vb) in &entries {
                            row[b] += weight * va * vb;
                        }
                    }
                }
                h
            })
            .collect();
        let mut h = vec![0.0; dim * dim];
        for part in partial {
            for (t, p) in h.iter_mut().zip(part) {
                *t += p;
            }
        }
        for j in 0..dim - 1 {
            h[j * dim + j] += alpha;
        }
        h.iter().all(|v| v.is_finite()).then_some(h)
    }
}

/// Solves H d = -g by Cholesky; `None` when H is not positive definite
/// enough to trust (the conjugate-gradient step takes over).
fn cholesky_solve(mut h: Vec<f64>, g: &[f64]) -> Option<Vec<f64>> {
    let dim = g.len();
    for j in 0..dim {
        let mut diagonal = h[j * dim + j];
        for k in 0..j {
            diagonal -= h[j * dim + k] * h[j * dim + k];
        }
        if diagonal <= 1e-12 {
            return None;
        }
        let root = diagonal.sqrt();
        h[j * dim + j] = root;
        for i in j + 1..dim {
            let mut v = h[i * dim + j];
            for k in 0..j {
                v -= h[i * dim + k] * h[j * dim + k];
            }
            h[i * dim + j] = v / root;
        }
    }
    // L z = -g, then Lᵀ d = z.
    let mut z = vec![0.0; dim];
    for i in 0..dim {
        let mut v = -g[i];
        for k in 0..i {
            v -= h[i * dim + k] * z[k];
        }
        z[i] = v / h[i * dim + i];
    }
    let mut d = vec![0.0; dim];
    for i in (0..dim).rev() {
        let mut v = z[i];
        for k in i + 1..dim {
            v -= h[k * dim + i] * d[k];
        }
        d[i] = v / h[i * dim + i];
    }
    d.iter().all(|v| v.is_finite()).then_some(d)
}

/// An inexact Newton step for wide designs: conjugate gradients on H d = -g
/// with Hessian-vector products (Jacobi-preconditioned), to a relative
/// residual that tightens as g shrinks.
fn conjugate_gradient_step(
    design: &Design,
    g: &[f64],
    curvature: &[f64],
    alpha: f64,
    xv: &mut [f64],
) -> Vec<f64> {
    let (n, dim) = (design.rows, design.dim);
    let penalty = |j: usize| if j + 1 < dim { alpha } else { 0.0 };
    let mut diagonal = design.transpose_times(curvature, true);
    for (j, d) in diagonal.iter_mut().enumerate() {
        *d = (*d + penalty(j)).max(1e-12);
    }
    let mut hessian_times = |v: &[f64]| -> Vec<f64> {
        design.times(v, xv);
        let weighted: Vec<f64> = xv.iter().zip(curvature).map(|(x, c)| x * c).collect();
        let mut hv = design.transpose_times(&weighted, false);
        for (j, h) in hv.iter_mut().enumerate() {
            *h += penalty(j) * v[j];
        }
        hv
    };
    let g_norm = dot(g, g).sqrt();
    let tolerance = g_norm * (g_norm / n.max(1) as f64).sqrt().min(0.5);
    let mut d = vec![0.0; dim];
    let mut r: Vec<f64> = g.iter().map(|g| -g).collect();
    let mut z: Vec<f64> = r.iter().zip(&diagonal).map(|(r, d)| r / d).collect();
    let mut direction = z.clone();
    let mut rz = dot(&r, &z);
    for _ in 0..dim.min(250) {
        let hp = hessian_times(&direction);
        let curvature_along = dot(&direction, &hp);
        if curvature_along <= 0.0 {
            break;
        }
        let step = rz / curvature_along;
        for j in 0..dim {
            d[j] += step * direction[j];
            r[j] -= step * hp[j];
        }
        if dot(&r, &r).sqrt() <= tolerance {
            break;
        }
        for j in 0..dim {
            z[j] = r[j] / diagonal[j];
        }
        let rz_next = dot(&r, &z);
        for j in 0..dim {
            direction[j] = z[j] + rz_next / rz * direction[j];
        }
        rz = rz_next;
    }
    d
}

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
        let design = Design::new(train, &layout);
        let w = minimise(&design, y, params.alpha.max(0.0))?;
        let mut at = 0;
        let mut offset = design.numeric_width;
        for term in &mut layout {
            match term {
                Term::Numeric { weight, .. } => {
                    *weight = w[at];
                    at += 1;
                }
                Term::Categorical { weights } => {
                    let width = weights.len();
                    weights.copy_from_slice(&w[offset..offset + width]);
                    offset += width;
                }
            }
        }
        Ok(Logistic {
            intercept: w[design.dim - 1],
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

    /// The penalised log loss's largest gradient entry at the fitted model,
    /// computed from its stored weights and the raw rows (any mix of
    /// numeric and categorical columns).
    fn largest_gradient(model: &Logistic, table: &Table, y: &[f64], alpha: f64) -> f64 {
        let mut weights = Vec::new();
        let mut offsets = Vec::new();
        for term in &model.terms {
            offsets.push(weights.len());
            match term {
                Term::Numeric { weight, .. } => weights.push(*weight),
                Term::Categorical { weights: w } => weights.extend_from_slice(w),
            }
        }
        let mut g: Vec<f64> = weights.iter().map(|w| alpha * w).collect();
        let mut intercept = 0.0;
        for (r, label) in y.iter().enumerate() {
            let row = table.row(r);
            let residual = model.probability(&row) - label;
            for ((term, v), at) in model.terms.iter().zip(&row).zip(&offsets) {
                match term {
                    Term::Numeric { mean, scale, .. } if !v.is_nan() => {
                        g[*at] += residual * (v - mean) / scale
                    }
                    Term::Categorical { .. } if !v.is_nan() => g[at + *v as usize] += residual,
                    _ => {}
                }
            }
            intercept += residual;
        }
        g.iter().fold(intercept.abs(), |a, g| a.max(g.abs()))
    }

    /// The fit is the minimum: the gradient vanishes (to far below what a
    /// probability would show), with a category column and missing numbers,
    /// at a weak, a default and a strong penalty; narrow (exact Newton
    /// steps) and wide (conjugate-gradient steps).
    #[test]
    fn the_fit_is_where_the_penalised_gradient_vanishes() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let kinds = vec![
            ColumnKind::Numeric,
            ColumnKind::Numeric,
            ColumnKind::Categorical,
            ColumnKind::Categorical,
        ];
        let mut narrow = Table::new(kinds[..3].to_vec());
        let mut wide = Table::new(kinds);
        let mut y = Vec::new();
        for _ in 0..2000 {
            let a: f64 = rng.random::<f64>() * 4.0 - 2.0;
            let b = if rng.random::<f64>() < 0.1 {
                f64::NAN
            } else {
                rng.random::<f64>() * 100.0
            };
            let c = rng.random_range(0..4) as f64;
            // 300 levels: past DENSE_MAX_WIDTH.
            let city = rng.random_range(0..300) as f64;
            let logit = 1.5 * a + 0.02 * b.max(0.0) - 1.0 + 0.5 * c + (city % 3.0 - 1.0);
            narrow.push_row(&[a, b, c]);
            wide.push_row(&[a, b, c, city]);
            y.push((rng.random::<f64>() < sigmoid(logit)) as u8 as f64);
        }
        for table in [&narrow, &wide] {
            for alpha in [0.01, 1.0, 30.0] {
                let model = Logistic::fit(table, &y, &LogisticParams { alpha }).unwrap();
                let largest = largest_gradient(&model, table, &y, alpha);
                assert!(
                    largest < 1e-4,
                    "{} columns, alpha {alpha}: {largest}",
                    table.kinds.len()
                );
            }
        }
        let table = &narrow;
        // A stronger penalty shrinks the weights; a refit is the same bits.
        let weak = Logistic::fit(table, &y, &LogisticParams { alpha: 0.01 }).unwrap();
        let strong = Logistic::fit(table, &y, &LogisticParams { alpha: 300.0 }).unwrap();
        let size = |m: &Logistic| match &m.terms[0] {
            Term::Numeric { weight, .. } => weight.abs(),
            _ => unreachable!(),
        };
        assert!(size(&strong) < size(&weak));
        assert_eq!(
            weak,
            Logistic::fit(table, &y, &LogisticParams { alpha: 0.01 }).unwrap()
        );
    }
}
