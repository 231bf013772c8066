//! An ensemble compiled for scoring one row at a time, the processor's and
//! `model score`'s case. All trees' nodes sit in one array of 24-byte
//! nodes; every node, a leaf too, computes left-or-right without a branch (a
//! leaf's children are itself), and the trees are walked eight at a time in
//! lockstep for the depth of the deepest of the eight, so the eight chains
//! of loads overlap instead of waiting on each other. Numbers are compared
//! with the split's raw threshold, as [`Tree::predict`] does, so a row is
//! not binned first (a binary search over up to 254 edges per feature);
//! categories are read as their bin.

use super::binning::{category_bin, Binner};
use super::tree::{in_set, SplitRule, Tree};
use crate::ml::derived::Derived;
use crate::ml::table::ColumnKind;

/// Trees walked together.
const LANES: usize = 8;

#[derive(Clone, Copy)]
struct CompiledNode {
    /// Left when the number is not above this (so a missing number goes
    /// left); -inf for categorical splits and leaves, which no row's number
    /// is at or below.
    threshold: f64,
    /// Index into the row's used features.
    feature: u32,
    /// Left when the category's bin is in this set (0, the empty set, for
    /// threshold splits).
    set: u32,
    /// Left child, then right; a leaf's are itself.
    children: [u32; 2],
}

pub(super) struct CompiledTrees {
    /// Node 0 is a leaf worth 0 that pads the last group to eight trees.
    nodes: Vec<CompiledNode>,
    values: Vec<f64>,
    sets: Vec<[u64; 4]>,
    roots: Vec<u32>,
    /// Per group of eight trees, the depth of its deepest.
    group_depths: Vec<usize>,
    /// The features some tree splits on, the only ones a row needs read; a
    /// node's `feature` indexes this list.
    used_features: Vec<usize>,
    /// Per used feature, whether it is a category (read as its bin).
    categorical: Vec<bool>,
}

/// Rows with this many used features are read onto the stack; more (rare: a
/// feature per column of a wide CSV) onto the heap.
const STACK_FEATURES: usize = 256;

/// A row as the walk reads it, by used feature: a number (0 for a
/// category), and a category's bin (0 for a number).
#[derive(Clone, Copy)]
struct Row<'a> {
    numbers: &'a [f64],
    bins: &'a [u8],
}

impl CompiledTrees {
    pub(super) fn new(trees: &[Tree], binner: &Binner) -> CompiledTrees {
        let mut used_features: Vec<usize> = trees
            .iter()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| n.split.as_ref().map(|s| s.feature as usize))
            .collect();
        used_features.sort_unstable();
        used_features.dedup();
        let mut dense = vec![0u32; used_features.last().map_or(0, |f| f + 1)];
        for (i, &f) in used_features.iter().enumerate() {
            dense[f] = i as u32;
        }
        let leaf = |at: u32| CompiledNode {
            threshold: f64::NEG_INFINITY,
            feature: 0,
            set: 0,
            children: [at; 2],
        };
        let mut nodes = vec![leaf(0)];
        let mut values = vec![0.0];
        let mut sets = vec![[0u64; 4]];
        let mut roots = Vec::with_capacity(trees.len().next_multiple_of(LANES));
        for tree in trees {
            let offset = nodes.len() as u32;
            roots.push(offset);
            for (i, node) in tree.nodes.iter().enumerate() {
                values.push(node.value);
                nodes.push(match &node.split {
                    None => leaf(offset + i as u32),
                    Some(split) => {
                        let (threshold, set) = match &split.rule {
                            SplitRule::Threshold { value, .. } => (*value, 0),
                            SplitRule::Categories { bins } => {
                                sets.push(*bins);
                                (f64::NEG_INFINITY, sets.len() as u32 - 1)
                            }
                        };
                        CompiledNode {
                            threshold,
                            feature: dense[split.feature as usize],
                            set,
                            children: [offset + split.left, offset + split.right],
                        }
                    }
                });
            }
        }
        let group_depths = trees
            .chunks(LANES)
            .map(|group| group.iter().map(Tree::depth).max().unwrap_or(0))
            .collect();
        roots.resize(trees.len().next_multiple_of(LANES), 0);
        let categorical = used_features
            .iter()
            .map(|&f| binner.kinds[f] == ColumnKind::Categorical)
            .collect();
        CompiledTrees {
            nodes,
            values,
            sets,
            roots,
            group_depths,
            used_features,
            categorical,
        }
    }

    /// Calls `walk_row` with the used features read by `value_of(feature)`:
    /// numbers as they are, categories as their bin (0 when missing). Scoring
    /// runs once per event, so the row lives on the stack rather than in a
    /// fresh allocation.
    #[inline(always)]
    fn with_row<T>(
        &self,
        value_of: impl Fn(usize) -> f64,
        walk_row: impl FnOnce(Row<'_>) -> T,
    ) -> T {
        let used = self.used_features.len();
        let mut stack_numbers = [0f64; STACK_FEATURES];
        let mut stack_bins = [0u8; STACK_FEATURES];
        let (mut heap_numbers, mut heap_bins) = (Vec::new(), Vec::new());
        let (numbers, bins): (&mut [f64], &mut [u8]) = if used <= STACK_FEATURES {
            (&mut stack_numbers[..used], &mut stack_bins[..used])
        } else {
            heap_numbers.resize(used, 0.0);
            heap_bins.resize(used, 0);
            (&mut heap_numbers, &mut heap_bins)
        };
        for (i, (&f, &categorical)) in self.used_features.iter().zip(&self.categorical).enumerate()
        {
            let v = value_of(f);
            if categorical {
                // The number stays 0, above a set node's -inf threshold.
                bins[i] = if v.is_nan() { 0 } else { category_bin(v) };
            } else {
                numbers[i] = v;
            }
        }
        walk_row(Row { numbers, bins })
    }

    // `!(v > t)` is meant: it is also true for NaN (a missing number goes
    // left), which `v <= t` is not.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    #[inline(always)]
    fn step(&self, at: u32, row: Row<'_>) -> u32 {
        let node = &self.nodes[at as usize];
        let i = node.feature as usize;
        // A number's bin is 0, tested against the empty set.
        let left = (!(row.numbers[i] > node.threshold)) as usize
            | in_set(&self.sets[node.set as usize], row.bins[i]);
        node.children[1 - left]
    }

    /// Calls `visit(lanes)` with each group's leaf per lane, after
    /// `on_step(from, to)` for every step taken.
    #[inline(always)]
    fn walk(
        &self,
        row: Row<'_>,
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
    pub(super) fn sum(&self, value_of: impl Fn(usize) -> f64) -> f64 {
        self.with_row(value_of, |row| {
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
        })
    }

    /// Adds the value change at every split on each tree's path to the
    /// split's feature and returns the sum of the root values, so that the
    /// two add up to [`CompiledTrees::sum`] (up to rounding).
    pub(super) fn attribute(
        &self,
        value_of: impl Fn(usize) -> f64,
        contributions: &mut [f64],
    ) -> f64 {
        // Padding roots are node 0, worth 0.
        let bias = self.roots.iter().map(|&r| self.values[r as usize]).sum();
        self.with_row(value_of, |row| {
            self.walk(
                row,
                |from, to| {
                    let feature = self.used_features[self.nodes[from as usize].feature as usize];
                    // A leaf steps to itself: the change is exactly 0.
                    contributions[feature] += self.values[to as usize] - self.values[from as usize];
                },
                |_| {},
            )
        });
        bias
    }
}

/// The compiled form, built on first use (see [`Derived`]).
pub(super) type CompiledCache = Derived<CompiledTrees>;

impl CompiledCache {
    pub(super) fn get(&self, trees: &[Tree], binner: &Binner) -> &CompiledTrees {
        self.get_or_init(|| CompiledTrees::new(trees, binner))
    }
}
