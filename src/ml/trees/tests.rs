//! The tree learners on toy data: what they learn, that attributions add
//! up, and that training is deterministic.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::binning::*;
use super::boosting::*;
use super::forest::*;
use super::grow::*;
use super::tree::*;
use crate::ml::table::*;

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

/// A booster of `trees` trees and a forest of `forest_trees`, both on `table`.
fn both_models(table: &Table, y: &[f64], trees: usize, forest_trees: usize) -> (Booster, Forest) {
    let booster = train_boosting(
        table,
        y,
        None,
        &BoostingParams {
            max_trees: trees,
            ..BoostingParams::default()
        },
        &mut |_, _| {},
    );
    let forest = train_forest(
        table,
        y,
        &ForestParams {
            trees: forest_trees,
            ..ForestParams::default()
        },
        &|_| {},
    );
    (booster, forest)
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
    let (booster, forest) = both_models(&train, &y, 60, 30);
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
fn a_linear_start_is_part_of_the_margin_its_attributions_and_the_stored_form() {
    let (train, y) = toy(3000, 4);
    let params = BoostingParams {
        max_trees: 40,
        linear_start_alpha: Some(1.0),
        ..BoostingParams::default()
    };
    let booster = train_boosting(&train, &y, None, &params, &mut |_, _| {});
    let linear = booster
        .linear
        .as_ref()
        .expect("fitted from the logistic start");
    let row = [0.9, 2.0, 0.3];
    let trees: f64 = booster.trees.iter().map(|t| t.predict(&row)).sum();
    assert!((booster.margin(&row) - (linear.margin(&row) + trees)).abs() < 1e-9);
    let mut c = vec![0.0; 3];
    let bias = booster.attribute(&row, &mut c);
    assert!((bias + c.iter().sum::<f64>() - booster.margin(&row)).abs() < 1e-9);
    // The trees still learn the threshold the linear start cannot draw.
    assert!(accuracy(|r| booster.probability(r), &train, &y) > 0.85);
    // Stored and read back, it scores the same; a booster stored before
    // linear starts existed (no `linear` field) reads as having none.
    let json = serde_json::to_value(&booster).unwrap();
    let back: Booster = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back.margin(&row), booster.margin(&row));
    let mut old = json;
    old.as_object_mut().unwrap().remove("linear");
    let old: Booster = serde_json::from_value(old).unwrap();
    assert!(old.linear.is_none());
    let plain = serde_json::to_value(both_models(&train, &y, 5, 1).0).unwrap();
    assert!(plain.get("linear").is_none());
}

#[test]
fn compiled_walk_predicts_what_the_tree_predicts() {
    // 1,003 rows: the lockstep batches and the leftover rows both run.
    let (table, y) = toy(1003, 5);
    let booster = train_boosting(
        &table,
        &y,
        None,
        &BoostingParams {
            max_trees: 30,
            ..BoostingParams::default()
        },
        &mut |_, _| {},
    );
    let categorical_splits = booster
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter(|n| {
            matches!(
                n.split,
                Some(Split {
                    rule: SplitRule::Categories { .. },
                    ..
                })
            )
        })
        .count();
    assert!(
        categorical_splits > 0,
        "the toy data should split on its category"
    );
    let bins = row_major(&booster.binner.bin_table(&table));
    let width = table.kinds.len();
    for tree in &booster.trees {
        let mut walked = vec![f64::NAN; table.rows()];
        BinTree::new(tree).for_rows(
            table.rows(),
            |r| &bins[r * width..(r + 1) * width],
            |r, v| walked[r] = v,
        );
        for (r, v) in walked.iter().enumerate() {
            assert_eq!(*v, tree.predict(&table.row(r)), "row {r}");
        }
    }
}

#[test]
fn partition_is_stable_and_follows_the_bins() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let column: Vec<u8> = (0..300_000).map(|_| rng.random()).collect();
    let rule = SplitRule::Categories {
        bins: [0x00ff_00ff_0f0f_3333, 0, u64::MAX, 1 << 63],
    };
    let left_bins = rule.left_bins();
    // Above and below the size where the partition goes parallel.
    for n in [1_000, 300_000] {
        let mut rows: Vec<u32> = (0..n as u32).filter(|r| r % 3 != 1).rev().collect();
        let goes_left = |r: &u32| rule.left_bin(column[*r as usize]);
        let expected: Vec<u32> = rows
            .iter()
            .copied()
            .filter(goes_left)
            .chain(rows.iter().copied().filter(|r| !goes_left(r)))
            .collect();
        let mut scratch = Vec::new();
        let left = partition(&mut rows, &mut scratch, &column, &left_bins);
        assert_eq!(left, rows.iter().filter(|r| goes_left(r)).count());
        assert_eq!(rows, expected, "{n} rows");
    }
}

#[test]
fn log_loss_gradient_is_p_minus_y_even_in_the_tails() {
    for m in [-40.0, -8.0, -0.5, 0.0, 0.5, 8.0, 40.0] {
        let p = sigmoid(m);
        for y in [0.0, 1.0, 0.25] {
            let [g, h] = log_loss_gradient(m, y);
            // At m = 40 and y = 1, p - 1 in f32 would be 0, not -4e-18.
            let expected = if y == 1.0 { -sigmoid(-m) } else { p - y };
            let tolerance = if y.fract() == 0.0 {
                1e-6 * expected.abs()
            } else {
                1e-6
            };
            assert!(
                (g as f64 - expected).abs() <= tolerance,
                "m {m} y {y}: {g} vs {expected}"
            );
            let expected_h = (p * (1.0 - p)).max(1e-12);
            assert!(
                (h as f64 - expected_h).abs() <= 1e-6 * expected_h,
                "m {m}: {h}"
            );
        }
    }
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

#[test]
fn compiled_ensemble_scores_what_the_trees_score_one_by_one() {
    // 30 trees: three full groups of eight and a padded one. Rows with a
    // missing number, an unseen category and values past every edge.
    let (table, y) = toy(2000, 9);
    let (booster, forest) = both_models(&table, &y, 30, 13);
    let mut rows: Vec<Vec<f64>> = (0..200).map(|r| table.row(r)).collect();
    rows.push(vec![f64::NAN, f64::NAN, f64::NAN]);
    rows.push(vec![7.0, 300.0, -5.0]);
    for row in &rows {
        let one_by_one = booster.trees.iter().map(|t| t.predict(row)).sum::<f64>();
        assert_eq!(
            booster.margin(row),
            booster.base_margin + one_by_one,
            "{row:?}"
        );
        let mean = forest.trees.iter().map(|t| t.predict(row)).sum::<f64>() / 13.0;
        assert_eq!(forest.raw_probability(row), mean, "{row:?}");
        // The compiled attributions equal the trees' own, feature by feature.
        let (mut compiled, mut own) = (vec![0.0; 3], vec![0.0; 3]);
        let bias = booster.attribute(row, &mut compiled);
        let own_bias = booster.base_margin
            + booster
                .trees
                .iter()
                .map(|t| t.attribute(row, &mut own))
                .sum::<f64>();
        assert!((bias - own_bias).abs() < 1e-12);
        for (a, b) in compiled.iter().zip(&own) {
            assert!((a - b).abs() < 1e-12, "{compiled:?} vs {own:?}");
        }
    }
}
