//! Histogram-based decision trees, grown leaf-wise: the learner behind both
//! the gradient-boosting model (binary log-loss, Newton steps) and the random
//! forest (squared error on 0/1 labels, bootstrap rows, a random feature subset
//! per node).
//!
//! Values are binned once (at most 255 bins per feature plus one for missing),
//! so finding a split scans a per-node histogram instead of sorted rows; the
//! larger child's histogram is the parent's minus the smaller child's. Every
//! node keeps the value a prediction would have if it stopped there, which
//! makes path attributions exact: the contributions along a row's path plus the
//! root value equal the leaf value (see [`Tree::attribute`]).
//!
//! Categorical features split by category sets, found the way LightGBM does:
//! the node's categories sorted by gradient ratio, the best prefix on the left.
//! A missing value has its own bin (bin 0); numeric splits send it left, and a
//! categorical split sends it wherever the "missing" category sorted.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Bins per feature, bin 0 being "missing".
const BINS: usize = 256;
/// Categories sorted by a ratio smoothed by this much hessian, so that a
/// category seen a few times does not lead the order on noise alone.
const CATEGORY_SMOOTHING: f64 = 10.0;

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
    fn bin_count(&self, feature: usize) -> usize {
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

fn category_bin(v: f64) -> u8 {
    // Categories past 253 share the last bin.
    (v.max(0.0) as usize + 1).min(BINS - 1) as u8
}

fn numeric_edges(column: &[f64], max_edges: usize) -> Vec<f64> {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    /// Left when the bin is at most `bin` (raw: missing, or at most `value`).
    Threshold { bin: u8, value: f64 },
    /// Left when the bin is in the set (bit i of word i/64 for bin i).
    Categories { bins: [u64; 4] },
}

impl SplitRule {
    fn left_bin(&self, b: u8) -> bool {
        match self {
            SplitRule::Threshold { bin, .. } => b <= *bin,
            SplitRule::Categories { bins } => bins[b as usize / 64] >> (b % 64) & 1 == 1,
        }
    }

    fn left_raw(&self, v: f64) -> bool {
        match self {
            SplitRule::Threshold { value, .. } => v.is_nan() || v <= *value,
            SplitRule::Categories { .. } => {
                self.left_bin(if v.is_nan() { 0 } else { category_bin(v) })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub feature: u32,
    pub rule: SplitRule,
    pub left: u32,
    pub right: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// What the tree predicts for a row that stops here.
    pub value: f64,
    /// Training rows that reached the node.
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut node = &self.nodes[0];
        while let Some(split) = &node.split {
            let next = if split.rule.left_raw(row[split.feature as usize]) {
                split.left
            } else {
                split.right
            };
            node = &self.nodes[next as usize];
        }
        node.value
    }

    fn predict_binned(&self, binned: &[Vec<u8>], r: usize) -> f64 {
        let mut node = &self.nodes[0];
        while let Some(split) = &node.split {
            let next = if split.rule.left_bin(binned[split.feature as usize][r]) {
                split.left
            } else {
                split.right
            };
            node = &self.nodes[next as usize];
        }
        node.value
    }

    /// Adds each feature's share of this tree's prediction for `row` to
    /// `contributions` (the value change at each split on the row's path) and
    /// returns the root value; the two always sum to [`Tree::predict`].
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let mut node = &self.nodes[0];
        while let Some(split) = &node.split {
            let f = split.feature as usize;
            let next = if split.rule.left_raw(row[f]) {
                split.left
            } else {
                split.right
            };
            let child = &self.nodes[next as usize];
            contributions[f] += child.value - node.value;
            node = child;
        }
        self.nodes[0].value
    }
}

/// How one tree grows.
#[derive(Debug, Clone)]
pub struct GrowParams {
    pub max_leaves: usize,
    pub max_depth: usize,
    pub min_child_samples: u32,
    pub min_child_hessian: f64,
    /// L2 penalty on leaf values (0 for a forest's plain means).
    pub lambda: f64,
    pub min_split_gain: f64,
    /// A node's value is `-G / (H + lambda) * shrinkage`.
    pub shrinkage: f64,
    /// Features drawn at random for each node (a forest's `max_features`);
    /// `None` searches every allowed feature.
    pub features_per_node: Option<usize>,
}

/// Gradient and hessian sums of a bin, in f32 so that one 8-byte store
/// updates a bin (the split search adds and compares in f64). Row counts are
/// not kept per bin; like LightGBM, a child's count is estimated from its
/// hessian share, exactly so for a forest (h = 1).
#[derive(Debug, Clone, Copy, Default)]
struct HistBin {
    g: f32,
    h: f32,
}

/// Bins between the starts of two features' histograms. Measured: at
/// exactly 2 or 4 KiB, loads and stores of one row's updates to different
/// features alias (4K aliasing) and histogram building ran four times slower.
const STRIDE: usize = BINS + 8;

/// A row's gradient and hessian, in f32: half the bytes a histogram pass
/// reads per row (sums over nodes are taken in f64).
type GradPair = [f32; 2];

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    g: f64,
    h: f64,
}

struct Candidate {
    gain: f64,
    feature: usize,
    rule: SplitRule,
}

struct OpenLeaf {
    node: usize,
    start: usize,
    end: usize,
    depth: usize,
    hist: Vec<HistBin>,
    best: Option<Candidate>,
}

pub struct Grown {
    pub tree: Tree,
    pub rows: Vec<u32>,
    pub leaves: Vec<(usize, usize, usize)>,
}

/// Keeps about `fraction` of the rows for one tree: a hash of (seed, tree,
/// row), so the draw is reproducible and computed in parallel.
fn sampled(seed: u64, tree: u64, row: u64, threshold: u64) -> bool {
    let mut z =
        seed ^ tree.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) < threshold
}

/// Data shared by every tree of one training run.
pub struct TrainingData<'a> {
    pub binner: &'a Binner,
    pub binned: &'a [Vec<u8>],
    /// The same bins row by row, for histogram building.
    pub row_major: Vec<u8>,
}

impl<'a> TrainingData<'a> {
    pub fn new(binner: &'a Binner, binned: &'a [Vec<u8>]) -> Self {
        let rows = binned.first().map_or(0, Vec::len);
        let features = binned.len();
        let mut row_major = vec![0u8; rows * features];
        row_major
            .par_chunks_mut(features.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (f, cell) in row.iter_mut().enumerate() {
                    *cell = binned[f][r];
                }
            });
        TrainingData {
            binner,
            binned,
            row_major,
        }
    }
}

impl TrainingData<'_> {
    fn features(&self) -> usize {
        self.binned.len()
    }

    /// A node's histogram in one pass over its rows: each row's gradient
    /// pair is read once and its bins are contiguous (row-major copy), which
    /// beats a pass per feature. Big nodes split their rows across threads
    /// and add the partial histograms.
    /// Only the histograms of `allowed` (this tree's features) are filled.
    fn build_hist(&self, rows: &[u32], gradients: &[GradPair], allowed: &[usize]) -> Vec<HistBin> {
        let features = self.features();
        let build = |chunk: &[u32]| {
            let mut hist = vec![HistBin::default(); features * STRIDE];
            for &r in chunk {
                let r = r as usize;
                let [g, h] = gradients[r];
                let bins = &self.row_major[r * features..(r + 1) * features];
                for &f in allowed {
                    let cell = &mut hist[f * STRIDE + bins[f] as usize];
                    cell.g += g;
                    cell.h += h;
                }
            }
            hist
        };
        let threads = rayon::current_num_threads();
        if rows.len() < 16_384 || threads < 2 {
            return build(rows);
        }
        rows.par_chunks(rows.len().div_ceil(threads))
            .map(build)
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.g += y.g;
                    x.h += y.h;
                }
                a
            })
            .expect("at least one chunk")
    }

    fn best_split(
        &self,
        hist: &[HistBin],
        candidates: &[usize],
        params: &GrowParams,
        count: u32,
    ) -> Option<Candidate> {
        // Every searched feature's histogram sums to the node's totals.
        let first = *candidates.first()?;
        let total =
            hist[first * STRIDE..first * STRIDE + BINS]
                .iter()
                .fold(Sums::default(), |a, b| Sums {
                    g: a.g + b.g as f64,
                    h: a.h + b.h as f64,
                });
        let rows_per_hessian = count as f64 / total.h.max(f64::MIN_POSITIVE);
        let min_rows = params.min_child_samples as f64;
        let score = |g: f64, h: f64| g * g / (h + params.lambda);
        let parent = score(total.g, total.h);
        let acceptable = |left: &Sums| {
            let left_n = left.h * rows_per_hessian;
            let right_n = count as f64 - left_n;
            let right_h = total.h - left.h;
            left_n + 1e-6 >= min_rows
                && right_n + 1e-6 >= min_rows
                && left.h >= params.min_child_hessian
                && right_h >= params.min_child_hessian
        };
        let gain_of = |left: &Sums| {
            score(left.g, left.h) + score(total.g - left.g, total.h - left.h) - parent
        };
        let mut best: Option<Candidate> = None;
        for &f in candidates {
            let h = &hist[f * STRIDE..f * STRIDE + BINS];
            let mut offer = |gain: f64, rule: SplitRule| {
                if gain > params.min_split_gain && best.as_ref().is_none_or(|b| gain > b.gain) {
                    best = Some(Candidate {
                        gain,
                        feature: f,
                        rule,
                    });
                }
            };
            match self.binner.kinds[f] {
                ColumnKind::Numeric => {
                    let bins = self.binner.bin_count(f);
                    let mut left = Sums::default();
                    for (b, bin) in h.iter().enumerate().take(bins - 1) {
                        left.g += bin.g as f64;
                        left.h += bin.h as f64;
                        if bin.h == 0.0 || !acceptable(&left) {
                            continue;
                        }
                        // Only missing values go left; JSON has no -inf.
                        let value = if b == 0 {
                            f64::MIN
                        } else {
                            self.binner.edges[f][b - 1]
                        };
                        offer(
                            gain_of(&left),
                            SplitRule::Threshold {
                                bin: b as u8,
                                value,
                            },
                        );
                    }
                }
                ColumnKind::Categorical => {
                    let mut present: Vec<usize> = (0..BINS).filter(|&b| h[b].h > 0.0).collect();
                    if present.len() < 2 {
                        continue;
                    }
                    present.sort_by(|&a, &b| {
                        let ratio = |c: &HistBin| c.g as f64 / (c.h as f64 + CATEGORY_SMOOTHING);
                        let (ra, rb) = (ratio(&h[a]), ratio(&h[b]));
                        ra.total_cmp(&rb).then(a.cmp(&b))
                    });
                    let mut left = Sums::default();
                    let mut set = [0u64; 4];
                    for &b in &present[..present.len() - 1] {
                        left.g += h[b].g as f64;
                        left.h += h[b].h as f64;
                        set[b / 64] |= 1 << (b % 64);
                        if acceptable(&left) {
                            offer(gain_of(&left), SplitRule::Categories { bins: set });
                        }
                    }
                }
            }
        }
        best
    }

    /// Grows one tree on `rows` (repeats allowed: a bootstrap sample).
    /// Besides the tree, returns the rows regrouped by leaf and each leaf's
    /// (node, range in those rows), which spares predicting the rows again.
    pub fn grow(
        &self,
        mut rows: Vec<u32>,
        gradients: &[GradPair],
        allowed: &[bool],
        params: &GrowParams,
        rng: &mut ChaCha8Rng,
    ) -> Grown {
        let allowed_list: Vec<usize> = (0..self.features()).filter(|&f| allowed[f]).collect();
        let pick_features = |rng: &mut ChaCha8Rng| -> Vec<usize> {
            match params.features_per_node {
                Some(k) if k < allowed_list.len() => {
                    let mut chosen: Vec<usize> = sample(rng, allowed_list.len(), k)
                        .into_iter()
                        .map(|i| allowed_list[i])
                        .collect();
                    chosen.sort_unstable();
                    chosen
                }
                _ => allowed_list.clone(),
            }
        };
        let value_of = |g: f64, h: f64| -g / (h + params.lambda) * params.shrinkage;
        let (g0, h0) = rows.iter().fold((0.0, 0.0), |(g, h), &r| {
            let [gr, hr] = gradients[r as usize];
            (g + gr as f64, h + hr as f64)
        });
        let mut nodes = vec![Node {
            value: value_of(g0, h0),
            count: rows.len() as u32,
            split: None,
        }];
        let hist = self.build_hist(&rows, gradients, &allowed_list);
        let candidates = pick_features(rng);
        let best = (params.max_depth > 0)
            .then(|| self.best_split(&hist, &candidates, params, rows.len() as u32))
            .flatten();
        let mut open = vec![OpenLeaf {
            node: 0,
            start: 0,
            end: rows.len(),
            depth: 0,
            hist,
            best,
        }];
        let mut leaves = 1;
        let mut scratch: Vec<u32> = Vec::with_capacity(rows.len());
        while leaves < params.max_leaves {
            let Some(pick) = open
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.best.as_ref().map(|b| (i, b.gain)))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i)
            else {
                break;
            };
            let leaf = open.swap_remove(pick);
            let best = leaf.best.expect("picked leaves have a split");
            let column = &self.binned[best.feature];
            // Stable partition of the leaf's rows: left ones first.
            scratch.clear();
            let slice = &mut rows[leaf.start..leaf.end];
            let mut write = 0;
            for i in 0..slice.len() {
                let r = slice[i];
                if best.rule.left_bin(column[r as usize]) {
                    slice[write] = r;
                    write += 1;
                } else {
                    scratch.push(r);
                }
            }
            slice[write..].copy_from_slice(&scratch);
            let mid = leaf.start + write;

            let left_rows = &rows[leaf.start..mid];
            let right_rows = &rows[mid..leaf.end];
            let (small_rows, small_is_left) = if left_rows.len() <= right_rows.len() {
                (left_rows, true)
            } else {
                (right_rows, false)
            };
            let small_hist = self.build_hist(small_rows, gradients, &allowed_list);
            let mut large_hist = leaf.hist;
            for (l, s) in large_hist.iter_mut().zip(&small_hist) {
                l.g -= s.g;
                l.h -= s.h;
            }
            let (left_hist, right_hist) = if small_is_left {
                (small_hist, large_hist)
            } else {
                (large_hist, small_hist)
            };
            let sums = |hist: &[HistBin]| {
                let f = allowed_list[0];
                hist[f * STRIDE..f * STRIDE + BINS]
                    .iter()
                    .fold((0.0, 0.0), |(g, h), b| (g + b.g as f64, h + b.h as f64))
            };
            let depth = leaf.depth + 1;
            let left_index = nodes.len();
            let mut children = Vec::with_capacity(2);
            for (hist, start, end) in [(left_hist, leaf.start, mid), (right_hist, mid, leaf.end)] {
                let (g, h) = sums(&hist);
                let n = (end - start) as u32;
                nodes.push(Node {
                    value: value_of(g, h),
                    count: n,
                    split: None,
                });
                let splittable =
                    depth < params.max_depth && n >= 2 * params.min_child_samples.max(1);
                let best = if splittable {
                    let candidates = pick_features(rng);
                    self.best_split(&hist, &candidates, params, n)
                } else {
                    None
                };
                children.push(OpenLeaf {
                    node: nodes.len() - 1,
                    start,
                    end,
                    depth,
                    // A leaf that will not split needs no histogram.
                    hist: if best.is_some() { hist } else { Vec::new() },
                    best,
                });
            }
            nodes[leaf.node].split = Some(Split {
                feature: best.feature as u32,
                rule: best.rule,
                left: left_index as u32,
                right: left_index as u32 + 1,
            });
            open.extend(children);
            leaves += 1;
        }
        Grown {
            tree: Tree { nodes },
            leaves: open.iter().map(|l| (l.node, l.start, l.end)).collect(),
            rows,
        }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    pub binner: Binner,
    /// Log-odds every prediction starts from (the training base rate).
    pub base_margin: f64,
    pub trees: Vec<Tree>,
}

impl Booster {
    pub fn margin(&self, row: &[f64]) -> f64 {
        self.base_margin + self.trees.iter().map(|t| t.predict(row)).sum::<f64>()
    }

    pub fn probability(&self, row: &[f64]) -> f64 {
        sigmoid(self.margin(row))
    }

    /// Per-feature contributions in log-odds; they sum with the returned bias
    /// to [`Booster::margin`].
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let mut bias = self.base_margin;
        for tree in &self.trees {
            bias += tree.attribute(row, contributions);
        }
        bias
    }
}

fn log_loss_of(margins: &[f64], y: &[f64]) -> f64 {
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

/// Trains a booster; `on_tree(trees so far, validation log loss)` reports progress.
pub fn train_boosting(
    train: &Table,
    y: &[f64],
    valid: Option<(&Table, &[f64])>,
    params: &BoostingParams,
    on_tree: &mut dyn FnMut(usize, Option<f64>),
) -> Booster {
    let n = train.rows();
    let binner = Binner::fit(train, params.max_bins);
    let binned = binner.bin_table(train);
    let data = TrainingData::new(&binner, &binned);
    let rate = (y.iter().sum::<f64>() / n.max(1) as f64).clamp(1e-6, 1.0 - 1e-6);
    let base_margin = (rate / (1.0 - rate)).ln();
    let mut margins = vec![base_margin; n];
    let mut gradients: Vec<GradPair> = vec![[0.0; 2]; n];
    let valid_binned = valid.map(|(t, _)| binner.bin_table(t));
    let mut valid_margins = vec![base_margin; valid.map_or(0, |(t, _)| t.rows())];
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
    let mut best = (f64::INFINITY, 0usize);
    // Seconds in gradients and sampling, growing, updating margins.
    let mut spent = [0.0f64; 3];
    for iteration in 0..params.max_trees {
        let t0 = std::time::Instant::now();
        let threshold = (params.subsample.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        // One pass draws the sample and computes the gradients where this
        // tree reads them: the rows of its sample.
        let in_sample: Vec<bool> = gradients
            .par_iter_mut()
            .zip(margins.par_iter().zip(y.par_iter()))
            .enumerate()
            .map(|(r, (gh, (m, y)))| {
                let kept = params.subsample >= 1.0
                    || sampled(params.seed, iteration as u64, r as u64, threshold);
                if kept {
                    let p = sigmoid(*m);
                    *gh = [(p - y) as f32, (p * (1.0 - p)).max(1e-12) as f32];
                }
                kept
            })
            .collect();
        let rows: Vec<u32> = in_sample
            .iter()
            .enumerate()
            .filter(|(_, kept)| **kept)
            .map(|(r, _)| r as u32)
            .collect();
        let kept_features =
            ((features as f64 * params.colsample).ceil() as usize).clamp(1, features);
        let mut allowed = vec![false; features];
        for f in sample(&mut rng, features, kept_features) {
            allowed[f] = true;
        }
        let t1 = std::time::Instant::now();
        let grown = data.grow(rows, &gradients, &allowed, &grow, &mut rng);
        let t2 = std::time::Instant::now();
        let tree = grown.tree;
        for &(node, start, end) in &grown.leaves {
            let value = tree.nodes[node].value;
            for &r in &grown.rows[start..end] {
                margins[r as usize] += value;
            }
        }
        // Rows left out of this tree's sample still take its prediction.
        margins
            .par_iter_mut()
            .zip(in_sample.par_iter())
            .enumerate()
            .filter(|(_, (_, kept))| !**kept)
            .for_each(|(r, (m, _))| *m += tree.predict_binned(&binned, r));
        let mut valid_loss = None;
        if let (Some((_, vy)), Some(vb)) = (valid, &valid_binned) {
            valid_margins
                .par_iter_mut()
                .enumerate()
                .for_each(|(r, m)| *m += tree.predict_binned(vb, r));
            let loss = log_loss_of(&valid_margins, vy);
            valid_loss = Some(loss);
            if loss < best.0 - 1e-7 {
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
    if valid.is_some() && best.1 > 0 {
        trees.truncate(best.1);
    }
    Booster {
        binner,
        base_margin,
        trees,
    }
}

/// A random forest of regression trees on 0/1 labels: the mean of the trees'
/// leaf means is a probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForestParams {
    pub trees: usize,
    pub max_depth: usize,
    pub max_leaves: usize,
    pub min_child_samples: u32,
    /// Features tried at each node, as a fraction of all (0.0 = square root).
    pub max_features: f64,
    pub max_bins: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 200,
            max_depth: 14,
            max_leaves: 512,
            min_child_samples: 10,
            max_features: 0.0,
            max_bins: 255,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub binner: Binner,
    pub trees: Vec<Tree>,
    /// Platt scaling fitted on out-of-bag predictions: averaged leaf means
    /// are squeezed towards the base rate, so the raw mean is not a
    /// calibrated probability.
    pub calibration: Platt,
}

/// p' = sigmoid(a · logit(p) + b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

impl Platt {
    const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    fn logit(p: f64) -> f64 {
        let p = p.clamp(1e-4, 1.0 - 1e-4);
        (p / (1.0 - p)).ln()
    }

    pub fn apply(&self, p: f64) -> f64 {
        sigmoid(self.a * Self::logit(p) + self.b)
    }

    /// Newton's method on the log-loss of (a, b), lightly ridged.
    fn fit(scores: &[f64], y: &[f64]) -> Platt {
        let x: Vec<f64> = scores.iter().map(|p| Self::logit(*p)).collect();
        let (mut a, mut b) = (1.0, 0.0);
        for _ in 0..50 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
                (1e-3 * (a - 1.0), 1e-3 * b, 1e-3, 0.0, 1e-3);
            for (xi, yi) in x.iter().zip(y) {
                let p = sigmoid(a * xi + b);
                let w = (p * (1.0 - p)).max(1e-12);
                ga += (p - yi) * xi;
                gb += p - yi;
                haa += w * xi * xi;
                hab += w * xi;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-12 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            a -= da;
            b -= db;
            if da.abs() + db.abs() < 1e-9 {
                break;
            }
        }
        if a.is_finite() && b.is_finite() {
            Platt { a, b }
        } else {
            Self::IDENTITY
        }
    }
}

impl Forest {
    /// The trees' mean leaf value, before calibration.
    pub fn raw_probability(&self, row: &[f64]) -> f64 {
        self.trees.iter().map(|t| t.predict(row)).sum::<f64>() / self.trees.len().max(1) as f64
    }

    pub fn probability(&self, row: &[f64]) -> f64 {
        self.calibration.apply(self.raw_probability(row))
    }

    /// Per-feature contributions in (uncalibrated) probability; they sum with
    /// the returned bias (the training base rate) to [`Forest::raw_probability`].
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let scale = 1.0 / self.trees.len().max(1) as f64;
        let mut own = vec![0.0; contributions.len()];
        let mut bias = 0.0;
        for tree in &self.trees {
            bias += tree.attribute(row, &mut own);
        }
        for (c, o) in contributions.iter_mut().zip(own) {
            *c += o * scale;
        }
        bias * scale
    }
}

pub fn train_forest(
    train: &Table,
    y: &[f64],
    params: &ForestParams,
    on_tree: &(dyn Fn(usize) + Sync),
) -> Forest {
    let n = train.rows();
    let binner = Binner::fit(train, params.max_bins);
    let binned = binner.bin_table(train);
    let data = TrainingData::new(&binner, &binned);
    let features = train.kinds.len();
    let per_node = if params.max_features > 0.0 {
        (features as f64 * params.max_features).ceil() as usize
    } else {
        (features as f64).sqrt().ceil() as usize
    }
    .clamp(1, features.max(1));
    let grow = GrowParams {
        max_leaves: params.max_leaves,
        max_depth: params.max_depth,
        min_child_samples: params.min_child_samples,
        min_child_hessian: 0.0,
        lambda: 0.0,
        min_split_gain: 1e-12,
        shrinkage: 1.0,
        features_per_node: Some(per_node),
    };
    // Squared error around zero: with g = -y and h = 1 a node's value
    // -G/H is the mean label and the gain is the variance reduction.
    let gradients: Vec<GradPair> = y.iter().map(|y| [-*y as f32, 1.0]).collect();
    let allowed = vec![true; features];
    let done = std::sync::atomic::AtomicUsize::new(0);
    let bag = |t: usize| {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed ^ ((t as u64 + 1) * 0x9E37_79B9));
        let mut rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..n as u32)).collect();
        rows.sort_unstable();
        (rows, rng)
    };
    let trees: Vec<Tree> = (0..params.trees)
        .into_par_iter()
        .map(|t| {
            let (rows, mut rng) = bag(t);
            let tree = data.grow(rows, &gradients, &allowed, &grow, &mut rng).tree;
            on_tree(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            tree
        })
        .collect();
    // Out-of-bag predictions (each row scored only by trees that did not
    // see it) on a sample of rows are honest data for the calibration.
    let stride = (n / 50_000).max(1);
    let sample: Vec<usize> = (0..n).step_by(stride).collect();
    let mut oob = vec![(0.0f64, 0u32); sample.len()];
    for (t, tree) in trees.iter().enumerate() {
        let (rows, _) = bag(t);
        oob.par_iter_mut().zip(&sample).for_each(|(acc, &r)| {
            if rows.binary_search(&(r as u32)).is_err() {
                acc.0 += tree.predict_binned(&binned, r);
                acc.1 += 1;
            }
        });
    }
    let (scores, labels): (Vec<f64>, Vec<f64>) = oob
        .iter()
        .zip(&sample)
        .filter(|((_, count), _)| *count > 0)
        .map(|((sum, count), &r)| (sum / *count as f64, y[r]))
        .unzip();
    let calibration = if labels.iter().any(|y| *y > 0.5) && labels.iter().any(|y| *y < 0.5) {
        Platt::fit(&scores, &labels)
    } else {
        Platt::IDENTITY
    };
    Forest {
        binner,
        trees,
        calibration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 1 when x0 > 0.5 or category 2, with 10% label noise.
    fn toy(n: usize, seed: u64) -> (Table, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut table = Table::new(vec![
            ColumnKind::Numeric,
            ColumnKind::Categorical,
            ColumnKind::Numeric,
        ]);
        let mut y = Vec::new();
        for _ in 0..n {
            let x0: f64 = rng.random();
            let cat = rng.random_range(0..4) as f64;
            let noise: f64 = rng.random();
            let x0 = if rng.random::<f64>() < 0.05 {
                f64::NAN
            } else {
                x0
            };
            let truth = x0 > 0.5 || cat == 2.0;
            let label = if rng.random::<f64>() < 0.1 {
                !truth
            } else {
                truth
            };
            table.push_row(&[x0, cat, noise]);
            y.push(label as u8 as f64);
        }
        (table, y)
    }

    fn accuracy(p: impl Fn(&[f64]) -> f64, table: &Table, y: &[f64]) -> f64 {
        (0..table.rows())
            .filter(|&r| (p(&table.row(r)) > 0.5) == (y[r] > 0.5))
            .count() as f64
            / table.rows() as f64
    }

    #[test]
    fn binner_puts_values_at_or_below_an_edge_in_that_bin() {
        let mut table = Table::new(vec![ColumnKind::Numeric]);
        for v in [1.0, 2.0, 3.0, f64::NAN] {
            table.push_row(&[v]);
        }
        let binner = Binner::fit(&table, 255);
        assert_eq!(binner.edges[0], vec![1.5, 2.5]);
        let bins: Vec<u8> = [f64::NAN, 0.0, 1.0, 1.5, 2.0, 3.0, 99.0]
            .iter()
            .map(|v| binner.bin(0, *v))
            .collect();
        assert_eq!(bins, vec![0, 1, 1, 1, 2, 3, 3]);
    }

    #[test]
    fn boosting_learns_a_threshold_and_a_category() {
        let (train, y) = toy(4000, 1);
        let (valid, vy) = toy(1000, 2);
        let booster = train_boosting(
            &train,
            &y,
            Some((&valid, &vy)),
            &BoostingParams::default(),
            &mut |_, _| {},
        );
        let acc = accuracy(|r| booster.probability(r), &valid, &vy);
        assert!(acc > 0.87, "accuracy {acc}");
        assert!(booster.trees.len() < 1000, "early stopping never fired");
    }

    #[test]
    fn forest_learns_the_same_rule() {
        let (train, y) = toy(4000, 1);
        let (valid, vy) = toy(1000, 2);
        let forest = train_forest(&train, &y, &ForestParams::default(), &|_| {});
        let acc = accuracy(|r| forest.probability(r), &valid, &vy);
        assert!(acc > 0.85, "accuracy {acc}");
    }

    #[test]
    fn attributions_sum_to_the_prediction_and_blame_the_right_feature() {
        let (train, y) = toy(4000, 3);
        let booster = train_boosting(
            &train,
            &y,
            None,
            &BoostingParams {
                max_trees: 60,
                ..BoostingParams::default()
            },
            &mut |_, _| {},
        );
        let forest = train_forest(
            &train,
            &y,
            &ForestParams {
                trees: 30,
                ..ForestParams::default()
            },
            &|_| {},
        );
        let row = [0.9, 0.0, 0.3];
        let mut c = vec![0.0; 3];
        let bias = booster.attribute(&row, &mut c);
        assert!((bias + c.iter().sum::<f64>() - booster.margin(&row)).abs() < 1e-9);
        assert!(c[0] > 0.5 && c[0].abs() > c[2].abs() * 3.0, "{c:?}");
        let mut c = vec![0.0; 3];
        let bias = forest.attribute(&row, &mut c);
        assert!((bias + c.iter().sum::<f64>() - forest.raw_probability(&row)).abs() < 1e-9);
        assert!(c[0] > 0.1, "{c:?}");
    }

    #[test]
    fn training_is_deterministic() {
        let (train, y) = toy(2000, 4);
        let params = BoostingParams {
            max_trees: 20,
            ..BoostingParams::default()
        };
        let a = train_boosting(&train, &y, None, &params, &mut |_, _| {});
        let b = train_boosting(&train, &y, None, &params, &mut |_, _| {});
        assert_eq!(a, b);
        let fp = ForestParams {
            trees: 8,
            ..ForestParams::default()
        };
        assert_eq!(
            train_forest(&train, &y, &fp, &|_| {}),
            train_forest(&train, &y, &fp, &|_| {})
        );
    }
}
