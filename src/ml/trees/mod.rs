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

mod binning;
mod boosting;
mod calibration;
mod compiled;
mod forest;
mod grow;
mod histogram;
mod tree;

pub use binning::Binner;
pub use boosting::{best_prefix, boost, train_boosting, Boosted, Booster, BoostingParams};
pub use calibration::Platt;
pub use forest::{fit_forest, train_forest, Forest, ForestFit, ForestParams};
pub use grow::{GrowParams, Grown, TrainingData, Workspace};
pub use tree::{Node, Split, SplitRule, Tree};

#[cfg(test)]
mod tests;
