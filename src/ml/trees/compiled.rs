//! An ensemble compiled for scoring one row of raw values at a time, the
//! processor's and `model score`'s case. All trees' nodes sit in one array;
//! every node, a leaf too, computes its left-or-right from the row's value
//! without a branch (a leaf's children are itself), and the trees are walked
//! eight at a time in lockstep for the depth of the deepest of the eight, so
//! the eight chains of loads overlap instead of waiting on each other and no
//! branch depends on the data. Following each tree's nodes one by one
//! mispredicts about every other split.

use std::sync::OnceLock;

use super::binning::category_bin;
use super::tree::{in_set, SplitRule, Tree};

/// Trees walked together.
const LANES: usize = 8;

#[derive(Clone, Copy)]
struct RawNode {
    /// Numeric split: left when the value is missing or at most this.
    threshold: f64,
    /// Categorical split: left when the value's bin is in the set.
    left_bins: [u64; 4],
    feature: u32,
    /// 1 for a categorical split, 0 otherwise.
    categorical: u32,
    /// Left child, then right; a leaf's are itself.
    children: [u32; 2],
}

pub(super) struct CompiledTrees {
    /// Node 0 is a leaf worth 0 that pads the last group to eight trees.
    nodes: Vec<RawNode>,
    values: Vec<f64>,
    roots: Vec<u32>,
    /// Per group of eight trees, the depth of its deepest.
    group_depths: Vec<usize>,
}

impl CompiledTrees {
    pub(super) fn new(trees: &[Tree]) -> CompiledTrees {
        let leaf = |at: u32| RawNode {
            threshold: 0.0,
            left_bins: [0; 4],
            feature: 0,
            categorical: 0,
            children: [at; 2],
        };
        let mut nodes = vec![leaf(0)];
        let mut values = vec![0.0];
        let mut roots = Vec::with_capacity(trees.len().next_multiple_of(LANES));
        for tree in trees {
            let offset = nodes.len() as u32;
            roots.push(offset);
            for (i, node) in tree.nodes.iter().enumerate() {
                values.push(node.value);
                nodes.push(match &node.split {
                    None => leaf(offset + i as u32),
                    Some(split) => {
                        let (threshold, left_bins, categorical) = match &split.rule {
                            SplitRule::Threshold { value, .. } => (*value, [0; 4], 0),
                            SplitRule::Categories { bins } => (0.0, *bins, 1),
                        };
                        RawNode {
                            threshold,
                            left_bins,
                            feature: split.feature,
                            categorical,
                            children: [offset + split.left, offset + split.right],
                        }
                    }
                });
            }
        }
        let group_depths = trees
            .chunks(LANES)
            .map(|group| group.iter().map(Tree::depth).max().unwrap_or(0));
        let group_depths = group_depths.collect();
        roots.resize(trees.len().next_multiple_of(LANES), 0);
        CompiledTrees {
            nodes,
            values,
            roots,
            group_depths,
        }
    }

    #[inline(always)]
    fn step(&self, at: u32, row: &[f64]) -> u32 {
        let node = &self.nodes[at as usize];
        let v = row[node.feature as usize];
        let missing = v.is_nan();
        let numeric_left = (missing || v <= node.threshold) as usize;
        let bin = if missing { 0 } else { category_bin(v) };
        let categorical_left = in_set(&node.left_bins, bin);
        let c = node.categorical as usize;
        let left = c * categorical_left + (1 - c) * numeric_left;
        node.children[1 - left]
    }

    /// Calls `visit(group, lanes)` with each group's leaf per lane, after
    /// `on_step(from, to)` for every step taken.
    #[inline(always)]
    fn walk(
        &self,
        row: &[f64],
        mut on_step: impl FnMut(u32, u32),
        mut visit: impl FnMut(&[u32; LANES]),
    ) {
        for (group, depth) in self.group_depths.iter().enumerate() {
            let mut at: [u32; LANES] = std::array::from_fn(|l| self.roots[group * LANES + l]);
            for _ in 0..*depth {
                for at in at.iter_mut() {
                    let next = self.step(*at, row);
                    on_step(*at, next);
                    *at = next;
                }
            }
            visit(&at);
        }
    }

    /// The trees' predictions summed in tree order (the same bits as
    /// summing [`Tree::predict`] one tree after another).
    pub(super) fn sum(&self, row: &[f64]) -> f64 {
        let mut total = 0.0;
        self.walk(
            row,
            |_, _| {},
            |leaves| {
                for leaf in leaves {
                    total += self.values[*leaf as usize];
                }
            },
        );
        total
    }

    /// Adds the value change at every split on each tree's path to the
    /// split's feature and returns the sum of the root values, so that the
    /// two add up to [`CompiledTrees::sum`] (up to rounding).
    pub(super) fn attribute(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        // Padding roots are node 0, worth 0.
        let bias = self.roots.iter().map(|&r| self.values[r as usize]).sum();
        self.walk(
            row,
            |from, to| {
                let feature = self.nodes[from as usize].feature as usize;
                // A leaf steps to itself: the change is exactly 0.
                contributions[feature] += self.values[to as usize] - self.values[from as usize];
            },
            |_| {},
        );
        bias
    }
}

/// A compiled form built on first use and never serialised: models are
/// scored long after they were trained or loaded, and the trees do not
/// change once trained. Two caches always compare equal (the cache is not
/// part of what a model is), and a clone starts empty.
#[derive(Default)]
pub(super) struct CompiledCache(OnceLock<CompiledTrees>);

impl CompiledCache {
    pub(super) fn get(&self, trees: &[Tree]) -> &CompiledTrees {
        self.0.get_or_init(|| CompiledTrees::new(trees))
    }
}

impl Clone for CompiledCache {
    fn clone(&self) -> Self {
        CompiledCache::default()
    }
}

impl PartialEq for CompiledCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for CompiledCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "compiled"
        } else {
            "not compiled"
        })
    }
}
