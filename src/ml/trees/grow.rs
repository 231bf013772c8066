//! Growing one tree leaf-wise: the rows of each open leaf, partitioned by
//! the chosen split, until the leaf budget or the gain runs out.

use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::binning::{Binner, BINS};
use super::histogram::{GradPair, HistBin, STRIDE};
use super::tree::{in_set, Node, Split, SplitRule, Tree};

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

pub(super) struct Candidate {
    pub(super) gain: f64,
    pub(super) feature: usize,
    pub(super) rule: SplitRule,
}

pub(super) struct OpenLeaf {
    pub(super) node: usize,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) depth: usize,
    pub(super) hist: Vec<HistBin>,
    pub(super) best: Option<Candidate>,
}

/// Buffers reused from one tree to the next: fresh multi-megabyte
/// allocations every tree cost more in page faults than the work they held.
#[derive(Default)]
pub struct Workspace {
    pub(super) scratch: Vec<u32>,
    pub(super) free_hists: Vec<Vec<HistBin>>,
}

impl Workspace {
    /// A zeroed histogram for `features` features.
    pub(super) fn hist(&mut self, features: usize) -> Vec<HistBin> {
        match self.free_hists.pop() {
            Some(mut hist) => {
                hist.clear();
                hist.resize(features * STRIDE, HistBin::default());
                hist
            }
            None => vec![HistBin::default(); features * STRIDE],
        }
    }

    pub(super) fn give_back(&mut self, hist: Vec<HistBin>) {
        if hist.capacity() > 0 {
            self.free_hists.push(hist);
        }
    }
}

pub struct Grown {
    pub tree: Tree,
    pub rows: Vec<u32>,
    pub leaves: Vec<(usize, usize, usize)>,
}

/// Keeps about `fraction` of the rows for one tree: a hash of (seed, tree,
/// row), so the draw is reproducible and computed in parallel.
pub(super) fn sampled(seed: u64, tree: u64, row: u64, threshold: u64) -> bool {
    let mut z =
        seed ^ tree.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) < threshold
}

/// Rows below which a node's partition runs on one thread.
pub(super) const PARALLEL_PARTITION_ROWS: usize = 65_536;

/// Stable partition of a node's rows by the bin of each in `column`: rows
/// whose bin is in `left_bins` first. Returns how many went left. Big nodes
/// partition a chunk per thread and then join the chunks' sides.
pub(super) fn partition(
    rows: &mut [u32],
    scratch: &mut Vec<u32>,
    column: &[u8],
    left_bins: &[u64; 4],
) -> usize {
    scratch.clear();
    scratch.resize(rows.len(), 0);
    let threads = rayon::current_num_threads();
    if rows.len() < PARALLEL_PARTITION_ROWS || threads < 2 {
        let left = partition_chunk(rows, scratch, column, left_bins);
        let right = rows.len() - left;
        rows[left..].copy_from_slice(&scratch[..right]);
        return left;
    }
    let chunk = rows.len().div_ceil(threads);
    let lefts: Vec<usize> = rows
        .par_chunks_mut(chunk)
        .zip(scratch.par_chunks_mut(chunk))
        .map(|(rows, rights)| partition_chunk(rows, rights, column, left_bins))
        .collect();
    // Each chunk's left rows lead the chunk and its right rows lead the
    // chunk's part of `scratch`: move the lefts together, then the rights.
    let mut write = 0;
    for (c, &left) in lefts.iter().enumerate() {
        rows.copy_within(c * chunk..c * chunk + left, write);
        write += left;
    }
    let mut right_at = write;
    for (c, &left) in lefts.iter().enumerate() {
        let len = chunk.min(rows.len() - c * chunk);
        let rights = &scratch[c * chunk..c * chunk + len - left];
        rows[right_at..right_at + rights.len()].copy_from_slice(rights);
        right_at += rights.len();
    }
    write
}

/// Left rows to the front of `rows`, right rows to the front of `rights`
/// (as long as `rows`); returns how many went left. Each row is written to
/// both sides and only one side's cursor moves: a branch on the side would
/// be mispredicted every other row.
pub(super) fn partition_chunk(
    rows: &mut [u32],
    rights: &mut [u32],
    column: &[u8],
    left_bins: &[u64; 4],
) -> usize {
    let (mut left, mut right) = (0, 0);
    for i in 0..rows.len() {
        let r = rows[i];
        let b = column[r as usize];
        let goes_left = in_set(left_bins, b);
        rows[left] = r;
        rights[right] = r;
        left += goes_left;
        right += 1 - goes_left;
    }
    left
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
        TrainingData {
            binner,
            binned,
            row_major: row_major(binned),
        }
    }
}

/// Column-major bins copied row by row: a row's bins share a cache line,
/// which is what histogram building and tree walks read.
pub(super) fn row_major(binned: &[Vec<u8>]) -> Vec<u8> {
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
    row_major
}

impl TrainingData<'_> {
    pub(super) fn features(&self) -> usize {
        self.binned.len()
    }

    pub(super) fn row_bins(&self, r: usize) -> &[u8] {
        let features = self.features();
        &self.row_major[r * features..(r + 1) * features]
    }

    /// A node's histogram in one pass over its rows: each row's gradient
    /// pair is read once and its bins are contiguous (row-major copy), which
    /// beats a pass per feature. Big nodes split their rows across threads
    /// and add the partial histograms.
    /// Only the histograms of `allowed` (this tree's features) are filled.
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
        work: &mut Workspace,
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
        let hist = self.build_hist(&rows, gradients, &allowed_list, work);
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
        let mut scratch = std::mem::take(&mut work.scratch);
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
            let mid = leaf.start
                + partition(
                    &mut rows[leaf.start..leaf.end],
                    &mut scratch,
                    &self.binned[best.feature],
                    &best.rule.left_bins(),
                );

            let left_rows = &rows[leaf.start..mid];
            let right_rows = &rows[mid..leaf.end];
            let (small_rows, small_is_left) = if left_rows.len() <= right_rows.len() {
                (left_rows, true)
            } else {
                (right_rows, false)
            };
            let small_hist = self.build_hist(small_rows, gradients, &allowed_list, work);
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
                    hist: if best.is_some() {
                        hist
                    } else {
                        work.give_back(hist);
                        Vec::new()
                    },
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
        work.scratch = scratch;
        for leaf in &mut open {
            work.give_back(std::mem::take(&mut leaf.hist));
        }
        Grown {
            tree: Tree { nodes },
            leaves: open.iter().map(|l| (l.node, l.start, l.end)).collect(),
            rows,
        }
    }
}
