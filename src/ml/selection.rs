//! Choosing a learner's parameters when the data are small. A few candidates,
//! from the configured parameters down to shallow and strongly regularised
//! ones, are compared by k-fold cross-validation (contiguous blocks in time
//! order when the rows have times, stratified random folds otherwise), by
//! log loss: a proper score, so the choice favours both ranking and
//! calibration. The forest compares its candidates on out-of-bag rows, which
//! costs no extra fits. Nothing here is tuned to one data set: the data pick.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::evaluation::evaluate;
use super::linear::{Logistic, LogisticParams};
use super::table::{sigmoid, Table};
use super::trees::{best_prefix, boost, fit_forest, BoostingParams, ForestFit, ForestParams};

/// Which fold each row is held out in.
#[derive(Debug, Clone)]
pub struct Folds {
    pub of_row: Vec<usize>,
    pub count: usize,
}

impl Folds {
    /// `count` folds over rows labelled `labels`: contiguous blocks when the
    /// rows are in time order (a fold's model never sees rows between the
    /// fold's first and last), otherwise each class dealt round-robin after a
    /// seeded shuffle, so that every fold has the data's positive rate.
    pub fn new(labels: &[f64], count: usize, timed: bool, seed: u64) -> Folds {
        let n = labels.len();
        let count = count.clamp(2, n.max(2));
        let of_row = if timed {
            (0..n).map(|i| i * count / n.max(1)).collect()
        } else {
            let mut of_row = vec![0; n];
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut dealt = 0;
            for positive in [false, true] {
                let mut rows: Vec<usize> =
                    (0..n).filter(|&i| (labels[i] > 0.5) == positive).collect();
                rows.shuffle(&mut rng);
                for r in rows {
                    of_row[r] = dealt % count;
                    dealt += 1;
                }
            }
            of_row
        };
        Folds { of_row, count }
    }

    /// The rows a fold's model fits on, and the rows it is held out on.
    pub fn split(&self, fold: usize) -> (Vec<usize>, Vec<usize>) {
        (0..self.of_row.len()).partition(|&r| self.of_row[r] != fold)
    }
}

/// One candidate and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tried {
    pub params: serde_json::Value,
    /// Mean held-out log loss (infinite when the candidate failed to fit).
    pub log_loss: f64,
}

/// The winning candidate, ready to fit on every row.
#[derive(Debug, Clone)]
pub struct Chosen<P> {
    pub params: P,
    /// Each row's probability from a model that did not see it (the
    /// winner's held-out predictions), in row order.
    pub held_out: Vec<f64>,
    pub tried: Vec<Tried>,
}

fn subset(table: &Table, y: &[f64], rows: &[usize]) -> (Table, Vec<f64>) {
    (table.select(rows), rows.iter().map(|&r| y[r]).collect())
}

fn mean_log_loss(probabilities: &[f64], y: &[f64]) -> f64 {
    evaluate(probabilities, y).log_loss
}

/// Candidates for gradient boosting: the configured parameters, then
/// shallower trees with larger leaves and a stronger L2 penalty, down to
/// stumps (an additive model), which is what small noisy data rewards.
pub fn boosting_candidates(base: &BoostingParams) -> Vec<BoostingParams> {
    let mut candidates = vec![base.clone()];
    for (leaves, depth, min_child, lambda) in [(8, 3, 20, 1.0), (4, 2, 40, 5.0), (2, 1, 40, 5.0)] {
        if depth < base.max_depth {
            candidates.push(BoostingParams {
                max_leaves: leaves.min(base.max_leaves),
                max_depth: depth,
                min_child_samples: min_child.max(base.min_child_samples),
                lambda: f64::max(lambda, base.lambda),
                ..base.clone()
            });
        }
    }
    candidates
}

/// How many fits [`choose_boosting`] reports through `on_fit`.
pub fn boosting_fits(base: &BoostingParams, logistic: &LogisticParams, folds: usize) -> usize {
    let linear = if base.linear_start_alpha.is_none() {
        logistic_candidates(logistic).len() + 1
    } else {
        0
    };
    (boosting_candidates(base).len() + linear) * folds
}

/// Boosting candidates by cross-validation: the tree candidates, then the
/// most regularised trees (stumps) boosted from a logistic regression (its
/// penalty chosen by the same folds), which wins where a linear model is
/// most of the answer. Stumps, not the trees that won from the base rate:
/// on top of a linear model deeper trees add variance that a few hundred
/// rows' folds cannot see (docs/MODELS.md has the measurement).
pub fn choose_boosting(
    table: &Table,
    y: &[f64],
    folds: &Folds,
    base: &BoostingParams,
    logistic: &LogisticParams,
    on_fit: &(dyn Fn() + Sync),
) -> Chosen<BoostingParams> {
    let mut best: Option<(f64, BoostingParams, Vec<f64>)> = None;
    let mut tried = Vec::new();
    let mut consider = |candidate: BoostingParams,
                        best: &mut Option<(f64, BoostingParams, Vec<f64>)>| {
        let Some((log_loss, params, held_out)) =
            cross_validate_boosting(table, y, folds, candidate, on_fit)
        else {
            return;
        };
        tried.push(Tried {
            params: serde_json::to_value(&params).expect("plain data"),
            log_loss,
        });
        if best.as_ref().is_none_or(|(b, ..)| log_loss < *b) {
            *best = Some((log_loss, params, held_out));
        }
    };
    for candidate in boosting_candidates(base) {
        consider(candidate, &mut best);
    }
    if base.linear_start_alpha.is_none() {
        if let Some(linear) = choose_logistic(table, y, folds, logistic, on_fit) {
            let most_regularised = boosting_candidates(base).pop().expect("the base at least");
            let candidate = BoostingParams {
                linear_start_alpha: Some(linear.params.alpha),
                ..most_regularised
            };
            consider(candidate, &mut best);
        }
    }
    let (_, params, held_out) = best.expect("at least one candidate");
    Chosen {
        params,
        held_out,
        tried,
    }
}

/// One boosting candidate over the folds. Each fold stops early on its own
/// held-out rows; the folds' loss curves (from before the first tree) are
/// averaged, a fold that stopped keeping its last loss, and the number of
/// trees at the averaged minimum is the one the candidate refits with.
/// Returns the mean held-out log loss there, the parameters with that
/// number of trees, and each row's held-out probability.
fn cross_validate_boosting(
    table: &Table,
    y: &[f64],
    folds: &Folds,
    candidate: BoostingParams,
    on_fit: &(dyn Fn() + Sync),
) -> Option<(f64, BoostingParams, Vec<f64>)> {
    let runs: Vec<_> = (0..folds.count)
        .into_par_iter()
        .map(|fold| {
            let (fit_rows, held_rows) = folds.split(fold);
            let (fit, fit_y) = subset(table, y, &fit_rows);
            let (held, held_y) = subset(table, y, &held_rows);
            let run = boost(
                &fit,
                &fit_y,
                Some((&held, &held_y)),
                &candidate,
                &mut |_, _| {},
            );
            on_fit();
            // Loss after 0, 1, 2, ... trees.
            let curve: Vec<f64> = run
                .start_loss
                .into_iter()
                .chain(run.valid_losses.iter().copied())
                .collect();
            (run.booster, curve, held_rows, held)
        })
        .collect();
    let longest = runs.iter().map(|(_, c, ..)| c.len()).max().unwrap_or(0);
    let curve: Vec<f64> = (0..longest)
        .map(|i| {
            runs.iter()
                .map(|(_, c, ..)| c[i.min(c.len() - 1)])
                .sum::<f64>()
                / runs.len() as f64
        })
        .collect();
    let trees = best_prefix(&curve)? - 1;
    let mut held_out = vec![0.0; y.len()];
    for (booster, _, held_rows, held) in &runs {
        for (i, &r) in held_rows.iter().enumerate() {
            held_out[r] = sigmoid(booster.margin_of_first(trees, &held.row(i)));
        }
    }
    let params = BoostingParams {
        max_trees: trees,
        ..candidate
    };
    Some((curve[trees], params, held_out))
}

/// Candidates for the forest: the configured leaf size, smaller and larger
/// leaves, and a third of the features per split instead of the square root.
pub fn forest_candidates(base: &ForestParams) -> Vec<ForestParams> {
    let mut candidates = vec![base.clone()];
    for leaf in [
        (base.min_child_samples / 3).max(1),
        base.min_child_samples * 3,
    ] {
        if leaf != base.min_child_samples {
            candidates.push(ForestParams {
                min_child_samples: leaf,
                ..base.clone()
            });
        }
    }
    if base.max_features == 0.0 {
        candidates.push(ForestParams {
            max_features: 1.0 / 3.0,
            ..base.clone()
        });
    }
    candidates
}

/// Forest candidates by their out-of-bag log loss; the winner's forest is
/// returned with it (it already saw every row).
pub fn choose_forest(
    table: &Table,
    y: &[f64],
    base: &ForestParams,
    on_fit: &(dyn Fn() + Sync),
) -> (Chosen<ForestParams>, ForestFit) {
    let mut best: Option<(f64, ForestParams, ForestFit)> = None;
    let mut tried = Vec::new();
    for candidate in forest_candidates(base) {
        let fit = fit_forest(table, y, &candidate, &|_| {});
        on_fit();
        let (p, labels): (Vec<f64>, Vec<f64>) =
            fit.out_of_bag.iter().map(|&(r, p)| (p, y[r])).unzip();
        let log_loss = mean_log_loss(&p, &labels);
        tried.push(Tried {
            params: serde_json::to_value(&candidate).expect("plain data"),
            log_loss,
        });
        if best.as_ref().is_none_or(|(b, ..)| log_loss < *b) {
            best = Some((log_loss, candidate, fit));
        }
    }
    let (_, params, fit) = best.expect("at least one candidate");
    // A row every tree drew (vanishingly rare with a hundred trees) has no
    // out-of-bag prediction; it takes the forest's own.
    let mut held_out: Vec<Option<f64>> = vec![None; y.len()];
    for &(r, p) in &fit.out_of_bag {
        held_out[r] = Some(p);
    }
    let held_out = held_out
        .into_iter()
        .enumerate()
        .map(|(r, p)| p.unwrap_or_else(|| fit.forest.probability(&table.row(r))))
        .collect();
    (
        Chosen {
            params,
            held_out,
            tried,
        },
        fit,
    )
}

/// Candidates for logistic regression: the configured L2 penalty and four
/// more a factor of ten apart around it.
pub fn logistic_candidates(base: &LogisticParams) -> Vec<LogisticParams> {
    [1.0, 0.1, 10.0, 0.01, 100.0]
        .iter()
        .map(|factor| LogisticParams {
            alpha: base.alpha * factor,
        })
        .collect()
}

/// Logistic candidates by cross-validation. A candidate that fails to fit on
/// some fold is out; `None` when every candidate failed.
pub fn choose_logistic(
    table: &Table,
    y: &[f64],
    folds: &Folds,
    base: &LogisticParams,
    on_fit: &(dyn Fn() + Sync),
) -> Option<Chosen<LogisticParams>> {
    let mut best: Option<(f64, LogisticParams, Vec<f64>)> = None;
    let mut tried = Vec::new();
    for candidate in logistic_candidates(base) {
        let runs: Vec<Option<(Vec<usize>, Vec<f64>)>> = (0..folds.count)
            .into_par_iter()
            .map(|fold| {
                let (fit_rows, held_rows) = folds.split(fold);
                let (fit, fit_y) = subset(table, y, &fit_rows);
                let model = Logistic::fit(&fit, &fit_y, &candidate).ok();
                on_fit();
                let model = model?;
                let p = held_rows
                    .iter()
                    .map(|&r| model.probability(&table.row(r)))
                    .collect();
                Some((held_rows, p))
            })
            .collect();
        let mut held_out = vec![0.0; y.len()];
        let mut complete = true;
        for run in &runs {
            match run {
                Some((rows, p)) => {
                    for (&r, &p) in rows.iter().zip(p) {
                        held_out[r] = p;
                    }
                }
                None => complete = false,
            }
        }
        let log_loss = if complete {
            mean_log_loss(&held_out, y)
        } else {
            f64::INFINITY
        };
        tried.push(Tried {
            params: serde_json::to_value(&candidate).expect("plain data"),
            log_loss,
        });
        if complete && best.as_ref().is_none_or(|(b, ..)| log_loss < *b) {
            best = Some((log_loss, candidate, held_out));
        }
    }
    let (_, params, held_out) = best?;
    Some(Chosen {
        params,
        held_out,
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_folds_share_the_positive_rate_and_cover_every_row_once() {
        let labels: Vec<f64> = (0..1000).map(|i| (i % 10 == 0) as u8 as f64).collect();
        let folds = Folds::new(&labels, 5, false, 1);
        for fold in 0..5 {
            let (fit, held) = folds.split(fold);
            assert_eq!(fit.len() + held.len(), 1000);
            assert_eq!(held.len(), 200);
            let positives = held.iter().filter(|&&r| labels[r] > 0.5).count();
            assert_eq!(positives, 20, "fold {fold}");
        }
        // Shuffled: not simply every fifth row.
        assert!((0..1000).any(|r| folds.of_row[r] != r % 5));
    }

    #[test]
    fn timed_folds_are_contiguous_blocks_in_row_order() {
        let labels = vec![0.0; 10];
        let folds = Folds::new(&labels, 5, true, 1);
        assert_eq!(folds.of_row, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn candidates_start_with_the_configured_parameters() {
        let base = BoostingParams::default();
        let candidates = boosting_candidates(&base);
        assert_eq!(candidates[0], base);
        assert!(candidates[1..].iter().all(|c| c.max_depth < base.max_depth));
        // Configured already as shallow as a stump: nothing shallower to try.
        let stump = BoostingParams {
            max_depth: 1,
            ..base
        };
        assert_eq!(boosting_candidates(&stump), vec![stump]);
    }
}

#[cfg(test)]
mod choice_tests {
    use super::*;
    use crate::ml::table::ColumnKind;

    /// `signal` numeric columns that add up in the log-odds (plus noise
    /// columns), or with `interaction` a label that depends on the product of
    /// the first two.
    fn data(n: usize, noise: usize, interaction: bool, seed: u64) -> (Table, Vec<f64>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut table = Table::new(vec![ColumnKind::Numeric; 2 + noise]);
        let mut y = Vec::new();
        for _ in 0..n {
            let row: Vec<f64> = (0..2 + noise)
                .map(|_| rng.random::<f64>() * 2.0 - 1.0)
                .collect();
            let logit = if interaction {
                8.0 * row[0] * row[1]
            } else {
                1.2 * row[0] + 0.8 * row[1]
            };
            y.push((rng.random::<f64>() < sigmoid(logit)) as u8 as f64);
            table.push_row(&row);
        }
        (table, y)
    }

    /// The boosting search over five stratified folds, from the defaults.
    fn search(table: &Table, y: &[f64]) -> Chosen<BoostingParams> {
        let folds = Folds::new(y, 5, false, 7);
        let logistic = LogisticParams::default();
        choose_boosting(
            table,
            y,
            &folds,
            &BoostingParams::default(),
            &logistic,
            &|| {},
        )
    }

    #[test]
    fn noisy_additive_data_choose_shallow_trees_and_an_interaction_keeps_depth() {
        let base = BoostingParams::default();
        let (table, y) = data(1500, 20, false, 3);
        let additive = search(&table, &y);
        assert!(
            additive.params.max_depth < base.max_depth,
            "additive data chose depth {}",
            additive.params.max_depth
        );
        // The tree candidates and stumps from a linear start.
        assert_eq!(additive.tried.len(), boosting_candidates(&base).len() + 1);
        assert!(additive.params.max_trees <= base.max_trees);
        // The held-out predictions are honest: one per row, in (0, 1).
        assert_eq!(additive.held_out.len(), y.len());
        assert!(additive.held_out.iter().all(|p| *p > 0.0 && *p < 1.0));

        let (table, y) = data(1500, 2, true, 4);
        let interaction = search(&table, &y);
        // Stumps cannot express x0 * x1.
        assert!(
            interaction.params.max_depth >= 2,
            "interaction chose depth {}",
            interaction.params.max_depth
        );
    }

    #[test]
    fn log_odds_linear_in_few_columns_choose_the_linear_start() {
        let (table, y) = data(1500, 2, false, 3);
        let chosen = search(&table, &y);
        let alpha = chosen.params.linear_start_alpha;
        assert!(
            alpha.is_some(),
            "trees from the base rate won: {:?}",
            chosen.tried
        );
        let linear = chosen.tried.last().unwrap();
        assert_eq!(linear.params["linear_start_alpha"].as_f64(), alpha);
        assert!(chosen.tried.iter().all(|t| t.log_loss >= linear.log_loss));
        // What the winner refits into: a booster that starts from the
        // logistic regression and scores it (plus its trees, if any).
        let booster =
            crate::ml::trees::train_boosting(&table, &y, None, &chosen.params, &mut |_, _| {});
        let start = booster.linear.as_ref().expect("a linear start");
        assert_eq!(booster.trees.len(), chosen.params.max_trees);
        assert_eq!(booster.base_margin, 0.0);
        if booster.trees.is_empty() {
            let row = table.row(0);
            assert_eq!(booster.margin(&row), start.margin(&row));
        }
    }

    #[test]
    fn logistic_penalty_is_chosen_among_the_candidates() {
        let (table, y) = data(600, 30, false, 5);
        let folds = Folds::new(&y, 5, false, 7);
        let base = LogisticParams::default();
        let chosen = choose_logistic(&table, &y, &folds, &base, &|| {}).expect("fits");
        let alphas: Vec<f64> = logistic_candidates(&base).iter().map(|c| c.alpha).collect();
        assert!(alphas.contains(&chosen.params.alpha));
        let best = chosen
            .tried
            .iter()
            .map(|t| t.log_loss)
            .fold(f64::INFINITY, f64::min);
        let winner = chosen
            .tried
            .iter()
            .find(|t| t.params["alpha"].as_f64() == Some(chosen.params.alpha))
            .unwrap();
        assert_eq!(winner.log_loss, best);
    }
}
