//! A grown tree, its path attributions, and the compiled form that walks
//! binned rows in lockstep.

use serde::{Deserialize, Serialize};

use super::binning::category_bin;
use super::histogram::prefetch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRule {
    /// Left when the bin is at most `bin` (raw: missing, or at most `value`).
    Threshold { bin: u8, value: f64 },
    /// Left when the bin is in the set (bit i of word i/64 for bin i).
    Categories { bins: [u64; 4] },
}

/// 1 when bin `b` is in the 256-bit `set` (bit i of word i/64 for bin i),
/// else 0: a number, so that callers can index or count by it without a
/// branch.
#[inline(always)]
pub(super) fn in_set(set: &[u64; 4], b: u8) -> usize {
    (set[b as usize / 64] >> (b % 64) & 1) as usize
}

impl SplitRule {
    pub(super) fn left_bin(&self, b: u8) -> bool {
        match self {
            SplitRule::Threshold { bin, .. } => b <= *bin,
            SplitRule::Categories { bins } => in_set(bins, b) == 1,
        }
    }

    /// The bins that go left, as a set (bit i of word i/64 for bin i).
    pub(super) fn left_bins(&self) -> [u64; 4] {
        match self {
            SplitRule::Categories { bins } => *bins,
            SplitRule::Threshold { bin, .. } => {
                let mut set = [0u64; 4];
                for b in 0..=*bin as usize {
                    set[b / 64] |= 1 << (b % 64);
                }
                set
            }
        }
    }

    pub(super) fn left_raw(&self, v: f64) -> bool {
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

    /// Splits on the longest path from the root.
    pub(super) fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(0usize, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            if let Some(split) = &self.nodes[node].split {
                stack.push((split.left as usize, depth + 1));
                stack.push((split.right as usize, depth + 1));
            }
        }
        deepest
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

/// A tree compiled for walking binned rows. Every node, a leaf too, sends a
/// row left when its bin is in the node's 256-bit set, and a leaf's children
/// are the leaf itself, so a walk is always `depth` steps: no branch depends
/// on the data, and a batch of rows walks in lockstep, each step's loads
/// independent of the other rows'. Measured at 1M rows: scoring the rows
/// left out of each tree's sample and the validation rows took 0.85 s in
/// all, against 2.0 s following [`Tree`]'s nodes one row at a time.
pub(super) struct BinTree {
    pub(super) nodes: Vec<BinNode>,
    pub(super) values: Vec<f64>,
    pub(super) depth: usize,
}

#[derive(Clone, Copy)]
pub(super) struct BinNode {
    pub(super) left_bins: [u64; 4],
    pub(super) feature: u32,
    /// Left child, then right.
    pub(super) children: [u32; 2],
}

/// Rows one lockstep walk carries.
pub(super) const LANES: usize = 8;

impl BinTree {
    pub(super) fn new(tree: &Tree) -> BinTree {
        let nodes = tree
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match &node.split {
                None => BinNode {
                    left_bins: [0; 4],
                    feature: 0,
                    children: [i as u32; 2],
                },
                Some(split) => BinNode {
                    left_bins: split.rule.left_bins(),
                    feature: split.feature,
                    children: [split.left, split.right],
                },
            })
            .collect();
        BinTree {
            nodes,
            values: tree.nodes.iter().map(|n| n.value).collect(),
            depth: tree.depth(),
        }
    }

    #[inline(always)]
    pub(super) fn step(&self, node: u32, bins: &[u8]) -> u32 {
        let node = &self.nodes[node as usize];
        let b = bins[node.feature as usize];
        node.children[1 - in_set(&node.left_bins, b)]
    }

    /// Calls `emit(i, prediction)` for rows `0..count`, row `i` given by
    /// `bins_of(i)`.
    pub(super) fn for_rows<'b>(
        &self,
        count: usize,
        bins_of: impl Fn(usize) -> &'b [u8],
        mut emit: impl FnMut(usize, f64),
    ) {
        let mut start = 0;
        while start + LANES <= count {
            // Rows two batches ahead are usually not cached yet (rows left
            // out of a sample are scattered over the table).
            for i in (start + 2 * LANES..count).take(LANES) {
                let bins = bins_of(i);
                if let (Some(first), Some(last)) = (bins.first(), bins.last()) {
                    prefetch(first);
                    prefetch(last);
                }
            }
            let rows: [&[u8]; LANES] = std::array::from_fn(|l| bins_of(start + l));
            let mut at = [0u32; LANES];
            for _ in 0..self.depth {
                for (at, bins) in at.iter_mut().zip(rows) {
                    *at = self.step(*at, bins);
                }
            }
            for (l, node) in at.iter().enumerate() {
                emit(start + l, self.values[*node as usize]);
            }
            start += LANES;
        }
        for i in start..count {
            emit(i, self.predict(bins_of(i)));
        }
    }

    /// The prediction for one row given as its bins.
    pub(super) fn predict(&self, bins: &[u8]) -> f64 {
        let mut at = 0;
        for _ in 0..self.depth {
            at = self.step(at, bins);
        }
        self.values[at as usize]
    }
}
