//! A random forest of regression trees on 0/1 labels: bootstrap rows and a
//! random feature subset per node.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::binning::Binner;
use super::calibration::Platt;
use super::compiled::CompiledCache;
use super::grow::{GrowParams, TrainingData, Workspace};
use super::histogram::GradPair;
use super::tree::{BinTree, Tree};
use crate::ml::table::Table;

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
    #[serde(skip)]
    compiled: CompiledCache,
}

impl Forest {
    /// The trees' mean leaf value, before calibration.
    pub fn raw_probability(&self, row: &[f64]) -> f64 {
        self.compiled.get(&self.trees, &self.binner).sum(|f| row[f])
            / self.trees.len().max(1) as f64
    }

    pub fn probability(&self, row: &[f64]) -> f64 {
        self.calibration.apply(self.raw_probability(row))
    }

    /// Per-feature contributions in (uncalibrated) probability; they sum with
    /// the returned bias (the training base rate) to [`Forest::raw_probability`].
    pub fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let scale = 1.0 / self.trees.len().max(1) as f64;
        let mut own = vec![0.0; contributions.len()];
        let bias = self
            .compiled
            .get(&self.trees, &self.binner)
            .attribute(|f| row[f], &mut own);
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
    fit_forest(train, y, params, on_tree).forest
}

/// A forest with its out-of-bag probabilities.
pub struct ForestFit {
    pub forest: Forest,
    /// (row, calibrated probability from the trees that did not draw the
    /// row) for every row up to 50,000 (a strided sample above), rows that
    /// every tree drew left out.
    pub out_of_bag: Vec<(usize, f64)>,
}

pub fn fit_forest(
    train: &Table,
    y: &[f64],
    params: &ForestParams,
    on_tree: &(dyn Fn(usize) + Sync),
) -> ForestFit {
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
        .map_init(Workspace::default, |work, t| {
            let (rows, mut rng) = bag(t);
            let tree = data
                .grow(rows, &gradients, &allowed, &grow, &mut rng, work)
                .tree;
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
        let walk = BinTree::new(tree);
        oob.par_iter_mut().zip(&sample).for_each(|(acc, &r)| {
            if rows.binary_search(&(r as u32)).is_err() {
                acc.0 += walk.predict(data.row_bins(r));
                acc.1 += 1;
            }
        });
    }
    let (rows, scores): (Vec<usize>, Vec<f64>) = oob
        .iter()
        .zip(&sample)
        .filter(|((_, count), _)| *count > 0)
        .map(|((sum, count), &r)| (r, sum / *count as f64))
        .unzip();
    let labels: Vec<f64> = rows.iter().map(|&r| y[r]).collect();
    let calibration = if labels.iter().any(|y| *y > 0.5) && labels.iter().any(|y| *y < 0.5) {
        Platt::fit(&scores, &labels)
    } else {
        Platt::IDENTITY
    };
    ForestFit {
        out_of_bag: rows
            .into_iter()
            .zip(scores)
            .map(|(r, s)| (r, calibration.apply(s)))
            .collect(),
        forest: Forest {
            binner,
            trees,
            calibration,
            compiled: CompiledCache::default(),
        },
    }
}
