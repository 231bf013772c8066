//! Gradient boosting for binary log-loss: Newton steps, shrinkage, row
//! sampling and early stopping on a validation slice. The trees start from
//! the base rate or, as scikit-learn's `init` estimator allows, from a
//! logistic regression's margin, so that where a linear model is right the
//! trees only add what it misses.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::binning::Binner;
use super::compiled::CompiledCache;
use super::grow::{row_major, sampled, GrowParams, TrainingData, Workspace};
use super::histogram::GradPair;
use super::tree::{BinTree, Tree};
use crate::ml::linear::{Logistic, LogisticParams};
use crate::ml::table::{sigmoid, Table};

/// Gradient boosting for binary log-loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoostingParams {
    pub learning_rate: f64,
    /// Upper bound; early stopping usually ends sooner.
    pub max_trees: usize,
    pub max_leaves: usize,
    pub max_depth: usize,
    pub min_child_samples: u32,
    pub min_child_hessian: f64,
    pub lambda: f64,
    /// Fraction of rows each tree sees.
    pub subsample: f64,
    /// Fraction of features each tree may split on.
    pub colsample: f64,
    pub max_bins: usize,
    /// Stop when the validation log loss has not improved for this many trees.
    pub early_stopping_rounds: usize,
    pub seed: u64,
    /// Boost from a logistic regression with this L2 penalty instead of the
    /// base rate (none: the base rate). The search of small data tries it.
    pub linear_start_alpha: Option<f64>,
}

impl Default for BoostingParams {
    fn default() -> Self {
        BoostingParams {
            learning_rate: 0.05,
            max_trees: 1000,
            max_leaves: 15,
            max_depth: 5,
            min_child_samples: 20,
            min_child_hessian: 1e-3,
            lambda: 1.0,
            subsample: 0.8,
            colsample: 0.8,
            max_bins: 255,
            early_stopping_rounds: 40,
            seed: 7,
            linear_start_alpha: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    pub binner: Binner,
    /// Log-odds every prediction starts from (the training base rate, or 0
    /// with a linear start).
    pub base_margin: f64,
    /// The logistic regression the trees were boosted from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<Logistic>,
    pub trees: Vec<Tree>,
    #[serde(skip)]
    pub(super) compiled: CompiledCache,
}

impl Booster {
    pub fn new(
        binner: Binner,
        base_margin: f64,
        linear: Option<Logistic>,
        trees: Vec<Tree>,
    ) -> Booster {
        Booster {
            binner,
            base_margin,
            linear,
            trees,
            compiled: CompiledCache::default(),
        }
    }

    /// Where the trees start for `row`: the base margin plus the linear
    /// start's margin.
    fn start(&self, row: &[f64]) -> f64 {
        self.base_margin + self.linear.as_ref().map_or(0.0, |l| l.margin(row))
    }

    pub fn margin(&self, row: &[f64]) -> f64 {
        self.start(row) + self.trees_sum(|f| row[f])
    }

    /// The margin of a row whose features are read one at a time, only
    /// those some tree splits on, without the row ever being built; `None`
    /// for a booster with a linear start, which reads every feature.
    pub fn margin_of_features(&self, value_of: impl Fn(usize) -> f64) -> Option<f64> {
        self.linear
            .is_none()
            .then(|| self.base_margin + self.trees_sum(value_of))
    }

    fn trees_sum(&self, value_of: impl Fn(usize) -> f64) -> f64 {
        self.compiled.get(&self.trees, &self.binner).sum(value_of)
    }

    /// The margin of the model cut to its first `trees` trees.
    pub fn margin_of_first(&self, trees: usize, row: &[f64]) -> f64 {
        self.start(row)
            + self.trees[..trees.min(self.trees.len())]
                .iter()
                .map(|t| t.predict(row))
                .sum::<f64>()
    }

    pub fn probability(&self, row: &[f64]) -> f64 {
        sigmoid(self.margin(row))
    }

    /// Per-feature contributions in log-odds; they sum with the returned bias
    /// to [`Booster::margin`].
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let linear_bias = self
            .linear
            .as_ref()
            .map_or(0.0, |l| l.attribute(row, contributions));
        self.base_margin
            + linear_bias
            + self
                .compiled
                .get(&self.trees, &self.binner)
                .attribute(|f| row[f], contributions)
    }
}

/// Rows per task of the sampling pass.
pub(super) const SAMPLE_CHUNK: usize = 16_384;
/// Rows per task of the walks that score rows outside a tree's sample.
pub(super) const WALK_CHUNK: usize = 8_192;

/// Log-loss gradient and hessian at margin `m` for label `y`, from the
/// smaller of p and 1 - p (e^-|m| / (1 + e^-|m|)), so that both keep their
/// relative precision far into the tails; f32 is what the histograms store.
pub(super) fn log_loss_gradient(m: f64, y: f64) -> GradPair {
    let e = (-(m.abs() as f32)).exp();
    let small = e / (1.0 + e);
    let large = 1.0 / (1.0 + e);
    let (p, one_minus_p) = if m >= 0.0 {
        (large, small)
    } else {
        (small, large)
    };
    // p - y, written so that y = 1 gives -(1 - p) exactly (p - 1 would lose
    // it when p is near 1), without a branch on the label.
    let y = y as f32;
    let g = p * (1.0 - y) - one_minus_p * y;
    [g, (p * one_minus_p).max(1e-12)]
}

pub(super) fn log_loss_of(margins: &[f64], y: &[f64]) -> f64 {
    // Fixed chunks summed in order: parallel, yet the same bits every run
    // (rayon's own sum groups by work stealing, and early stopping must not
    // depend on that).
    let partial: Vec<f64> = margins
        .par_chunks(8192)
        .zip(y.par_chunks(8192))
        .map(|(m, y)| {
            m.iter()
                .zip(y)
                .map(|(m, y)| {
                    // log(1 + e^m) - y m, stable for large |m|.
                    let softplus = if *m > 0.0 {
                        m + (-m).exp().ln_1p()
                    } else {
                        m.exp().ln_1p()
                    };
                    softplus - y * m
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum::<f64>() / margins.len().max(1) as f64
}

/// Trains a booster; `on_tree(trees so far, validation log loss)` reports
/// progress. With validation rows, the trees past the best validation loss
/// are dropped.
pub fn train_boosting(
    train: &Table,
    y: &[f64],
    valid: Option<(&Table, &[f64])>,
    params: &BoostingParams,
    on_tree: &mut dyn FnMut(usize, Option<f64>),
) -> Booster {
    let mut boosted = boost(train, y, valid, params, on_tree);
    if let Some(best) = boosted.best_trees() {
        boosted.booster.trees.truncate(best);
    }
    boosted.booster
}

/// A boosting run with every tree it grew and the validation loss after each.
pub struct Boosted {
    pub booster: Booster,
    /// Validation log loss before the first tree (none without validation
    /// rows).
    pub start_loss: Option<f64>,
    /// Validation log loss after tree 1, 2, ... (empty without validation rows).
    pub valid_losses: Vec<f64>,
}

impl Boosted {
    /// Trees up to the lowest validation loss (the first of equals); 0 when
    /// no tree improved on the start.
    pub fn best_trees(&self) -> Option<usize> {
        let trees = best_prefix(&self.valid_losses)?;
        match self.start_loss {
            Some(start) if !improves(self.valid_losses[trees - 1], start) => Some(0),
            _ => Some(trees),
        }
    }
}

/// Whether a validation loss counts as better than `best`: by more than
/// 1e-7, so that rounding noise neither extends nor restarts a run.
fn improves(loss: f64, best: f64) -> bool {
    loss < best - 1e-7
}

/// How many of a loss curve's points lead to its first minimum (improvements
/// under 1e-7 do not count), `None` for an empty curve.
pub fn best_prefix(losses: &[f64]) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, loss) in losses.iter().enumerate() {
        if best.is_none_or(|(b, _)| improves(*loss, b)) {
            best = Some((*loss, i + 1));
        }
    }
    best.map(|(_, trees)| trees)
}

/// Boosts without cutting: early stopping ends the run `early_stopping_rounds`
/// trees after the best validation loss, and every grown tree is kept.
pub fn boost(
    train: &Table,
    y: &[f64],
    valid: Option<(&Table, &[f64])>,
    params: &BoostingParams,
    on_tree: &mut dyn FnMut(usize, Option<f64>),
) -> Boosted {
    let n = train.rows();
    let binner = Binner::fit(train, params.max_bins);
    let binned = binner.bin_table(train);
    let data = TrainingData::new(&binner, &binned);
    let rate = (y.iter().sum::<f64>() / n.max(1) as f64).clamp(1e-6, 1.0 - 1e-6);
    let linear = params.linear_start_alpha.and_then(|alpha| {
        Logistic::fit(train, y, &LogisticParams { alpha })
            .inspect_err(|e| tracing::warn!(error = %e, "boosting from the base rate instead"))
            .ok()
    });
    let base_margin = if linear.is_some() {
        0.0
    } else {
        (rate / (1.0 - rate)).ln()
    };
    let start_of = |table: &Table| -> Vec<f64> {
        match &linear {
            Some(l) => (0..table.rows()).map(|r| l.margin(&table.row(r))).collect(),
            None => vec![base_margin; table.rows()],
        }
    };
    let mut margins = start_of(train);
    let mut gradients: Vec<GradPair> = vec![[0.0; 2]; n];
    let valid_bins = valid.map(|(t, _)| row_major(&binner.bin_table(t)));
    let mut valid_margins = valid.map_or_else(Vec::new, |(t, _)| start_of(t));
    let start_loss = valid.map(|(_, vy)| log_loss_of(&valid_margins, vy));
    let features = train.kinds.len();
    let grow = GrowParams {
        max_leaves: params.max_leaves,
        max_depth: params.max_depth,
        min_child_samples: params.min_child_samples,
        min_child_hessian: params.min_child_hessian,
        lambda: params.lambda,
        min_split_gain: 1e-9,
        shrinkage: params.learning_rate,
        features_per_node: None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut trees = Vec::new();
    let mut best = (start_loss.unwrap_or(f64::INFINITY), 0usize);
    let mut valid_losses = Vec::new();
    // Seconds in gradients and sampling, growing, updating margins.
    let mut spent = [0.0f64; 3];
    // Reused from tree to tree: fresh multi-megabyte buffers each round cost
    // page faults.
    let mut work = Workspace::default();
    let mut rows: Vec<u32> = Vec::with_capacity(n);
    let mut left_out: Vec<u32> = Vec::new();
    let mut left_out_values: Vec<f64> = Vec::new();
    let threshold = (params.subsample.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    for iteration in 0..params.max_trees {
        let t0 = std::time::Instant::now();
        // One parallel pass draws the sample and computes the gradients; each
        // chunk lists its kept and left-out rows, joined in row order.
        let parts: Vec<(Vec<u32>, Vec<u32>)> = gradients
            .par_chunks_mut(SAMPLE_CHUNK)
            .zip(margins.par_chunks(SAMPLE_CHUNK))
            .zip(y.par_chunks(SAMPLE_CHUNK))
            .enumerate()
            .map(|(c, ((gradients, margins), y))| {
                // Every row gets its gradient and is written to both lists,
                // only one list's cursor moving: cheaper than a branch on an
                // 80/20 draw, which mispredicts every fifth row.
                let mut kept = vec![0u32; gradients.len()];
                let mut out = vec![0u32; gradients.len()];
                let (mut k, mut o) = (0, 0);
                for (i, (gh, (m, y))) in gradients.iter_mut().zip(margins.iter().zip(y)).enumerate()
                {
                    let r = (c * SAMPLE_CHUNK + i) as u32;
                    let keep = (params.subsample >= 1.0
                        || sampled(params.seed, iteration as u64, r as u64, threshold))
                        as usize;
                    *gh = log_loss_gradient(*m, *y);
                    kept[k] = r;
                    out[o] = r;
                    k += keep;
                    o += 1 - keep;
                }
                kept.truncate(k);
                out.truncate(o);
                (kept, out)
            })
            .collect();
        rows.clear();
        left_out.clear();
        for (kept, out) in &parts {
            rows.extend_from_slice(kept);
            left_out.extend_from_slice(out);
        }
        let kept_features =
            ((features as f64 * params.colsample).ceil() as usize).clamp(1, features);
        let mut allowed = vec![false; features];
        for f in sample(&mut rng, features, kept_features) {
            allowed[f] = true;
        }
        let t1 = std::time::Instant::now();
        let grown = data.grow(
            std::mem::take(&mut rows),
            &gradients,
            &allowed,
            &grow,
            &mut rng,
            &mut work,
        );
        let t2 = std::time::Instant::now();
        let tree = grown.tree;
        for &(node, start, end) in &grown.leaves {
            let value = tree.nodes[node].value;
            for &r in &grown.rows[start..end] {
                margins[r as usize] += value;
            }
        }
        rows = grown.rows;
        let walk = BinTree::new(&tree);
        // Rows left out of this tree's sample still take its prediction.
        left_out_values.resize(left_out.len(), 0.0);
        left_out_values
            .par_chunks_mut(WALK_CHUNK)
            .zip(left_out.par_chunks(WALK_CHUNK))
            .for_each(|(values, rows)| {
                walk.for_rows(
                    rows.len(),
                    |i| data.row_bins(rows[i] as usize),
                    |i, v| values[i] = v,
                )
            });
        for (&r, value) in left_out.iter().zip(&left_out_values) {
            margins[r as usize] += value;
        }
        let mut valid_loss = None;
        if let (Some((_, vy)), Some(vb)) = (valid, &valid_bins) {
            let width = features.max(1);
            valid_margins
                .par_chunks_mut(WALK_CHUNK)
                .zip(vb.par_chunks(WALK_CHUNK * width))
                .for_each(|(margins, bins)| {
                    walk.for_rows(
                        margins.len(),
                        |i| &bins[i * width..(i + 1) * width],
                        |i, v| margins[i] += v,
                    )
                });
            let loss = log_loss_of(&valid_margins, vy);
            valid_loss = Some(loss);
            valid_losses.push(loss);
            if improves(loss, best.0) {
                best = (loss, iteration + 1);
            }
        }
        spent[0] += (t1 - t0).as_secs_f64();
        spent[1] += (t2 - t1).as_secs_f64();
        spent[2] += t2.elapsed().as_secs_f64();
        trees.push(tree);
        on_tree(trees.len(), valid_loss);
        if valid.is_some() && iteration + 1 - best.1 >= params.early_stopping_rounds {
            break;
        }
    }
    tracing::debug!(
        gradients_s = spent[0],
        trees_s = spent[1],
        margins_s = spent[2],
        trees = trees.len(),
        "boosting phases"
    );
    Boosted {
        booster: Booster::new(binner, base_margin, linear, trees),
        start_loss,
        valid_losses,
    }
}
