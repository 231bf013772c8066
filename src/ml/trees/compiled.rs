//! An ensemble compiled for scoring one row at a time, the processor's and
//! `model score`'s case. The row is binned once by the training binner (a
//! threshold split on a value is the same split on its bin); all trees'
//! nodes sit in one array of 20-byte nodes; every node, a leaf too, computes
//! left-or-right from the row's bin without a branch (a leaf's children are
//! itself), and the trees are walked eight at a time in lockstep for the
//! depth of the deepest of the eight, so the eight chains of loads overlap
//! instead of waiting on each other.

use super::binning::Binner;
use super::tree::{in_set, SplitRule, Tree};
use crate::ml::derived::Derived;

/// Trees walked together.
const LANES: usize = 8;

#[derive(Clone, Copy)]
struct BinNode {
    feature: u32,
    /// Left when the bin is at most this (-1 for categorical splits and leaves).
    threshold: i32,
    /// Left when the bin is in this set (0, the empty set, for threshold splits).
    set: u32,
    /// Left child, then right; a leaf's are itself.
    children: [u32; 2],
}

pub(super) struct CompiledTrees {
    /// Node 0 is a leaf worth 0 that pads the last group to eight trees.
    nodes: Vec<BinNode>,
    values: Vec<f64>,
    sets: Vec<[u64; 4]>,
    roots: Vec<u32>,
    /// Per group of eight trees, the depth of its deepest.
    group_depths: Vec<usize>,
    /// The features some tree splits on, the only ones a row needs binned.
    used_features: Vec<usize>,
}

/// Rows this wide are binned on the stack; wider ones (rare: a feature per
/// column of a wide CSV) on the heap.
const STACK_FEATURES: usize = 256;

impl CompiledTrees {
    pub(super) fn new(trees: &[Tree]) -> CompiledTrees {
        let leaf = |at: u32| BinNode {
            feature: 0,
            threshold: -1,
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
                            SplitRule::Threshold { bin, .. } => (*bin as i32, 0),
                            SplitRule::Categories { bins } => {
                                sets.push(*bins);
                                (-1, sets.len() as u32 - 1)
                            }
                        };
                        BinNode {
                            feature: split.feature,
                            threshold,
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
        let mut used_features: Vec<usize> = trees
            .iter()
            .flat_map(|t| &t.nodes)
            .filter_map(|n| n.split.as_ref().map(|s| s.feature as usize))
            .collect();
        used_features.sort_unstable();
        used_features.dedup();
        CompiledTrees {
            nodes,
            values,
            sets,
            roots,
            group_depths,
            used_features,
        }
    }

    /// Calls `walk_bins` with the row's bins; features no tree splits on are
    /// left at 0 (no node reads them). Scoring runs once per event, so the
    /// bins live on the stack rather than in a fresh allocation.
    #[inline(always)]
    fn with_bins<T>(&self, binner: &Binner, row: &[f64], walk_bins: impl FnOnce(&[u8]) -> T) -> T {
        let mut stack = [0u8; STACK_FEATURES];
        let mut heap = Vec::new();
        let bins: &mut [u8] = if row.len() <= STACK_FEATURES {
            &mut stack[..row.len()]
        } else {
            heap.resize(row.len(), 0);
            &mut heap
        };
        for &f in &self.used_features {
            bins[f] = binner.bin(f, row[f]);
        }
        walk_bins(bins)
    }

    #[inline(always)]
    fn step(&self, at: u32, bins: &[u8]) -> u32 {
        let node = &self.nodes[at as usize];
        let b = bins[node.feature as usize];
        let left =
            ((b as i32) <= node.threshold) as usize | in_set(&self.sets[node.set as usize], b);
        node.children[1 - left]
    }

    /// Calls `visit(lanes)` with each group's leaf per lane, after
    /// `on_step(from, to)` for every step taken.
    #[inline(always)]
    fn walk(
        &self,
        bins: &[u8],
        mut on_step: impl FnMut(u32, u32),
        mut visit: impl FnMut(&[u32; LANES]),
    ) {
        for (group, depth) in self.group_depths.iter().enumerate() {
            let mut at: [u32; LANES] = std::array::from_fn(|l| self.roots[group * LANES + l]);
            for _ in 0..*depth {
                for at in at.iter_mut() {
                    let next = self.step(*at, bins);
                    on_step(*at, next);
                    *at = next;
                }
            }
            visit(&at);
        }
    }

    /// The trees' predictions summed in tree order (the same bits as
    /// summing [`Tree::predict`] one tree after another).
    pub(super) fn sum(&self, binner: &Binner, row: &[f64]) -> f64 {
        self.with_bins(binner, row, |bins| {
            let mut total = 0.0;
            self.walk(
                bins,
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
    pub(super) fn attribute(&self, binner: &Binner, row: &[f64], contributions: &mut [f64]) -> f64 {
        // Padding roots are node 0, worth 0.
        let bias = self.roots.iter().map(|&r| self.values[r as usize]).sum();
        self.with_bins(binner, row, |bins| {
            self.walk(
                bins,
                |from, to| {
                    let feature = self.nodes[from as usize].feature as usize;
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
    pub(super) fn get(&self, trees: &[Tree]) -> &CompiledTrees {
        self.get_or_init(|| CompiledTrees::new(trees))
    }
}
