//! Analytics from the stage transitions the commit path writes, on both
//! stores: the funnel of a replayed stream equals the one worked out here
//! from the input events alone, through `leadflow analytics funnel`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use leadflow::analytics::funnel::{step_of, STEPS};
use leadflow::events::{InputEvent, LeadEventKind, Stage};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::LeadStore;

const DAY: i64 = 86_400_000;

/// Per lead created in `[from, until)` (by its earliest Created event): the
/// furthest funnel step of its distinct stage changes, and whether it was
/// lost. Then reached per step, and the lost count.
fn expected_funnel(events: &[InputEvent], from: i64, until: i64) -> (Vec<i64>, i64) {
    let mut created: BTreeMap<&str, i64> = BTreeMap::new();
    let mut changes: BTreeMap<&str, BTreeSet<(&str, Stage)>> = BTreeMap::new();
    for event in events {
        match event {
            InputEvent::Lead(e) if e.kind == LeadEventKind::Created => {
                let at = created.entry(&e.lead_ext_id).or_insert(e.occurred_at);
                *at = (*at).min(e.occurred_at);
            }
            InputEvent::StageChange(e) => {
                changes
                    .entry(&e.lead_ext_id)
                    .or_default()
                    .insert((&e.event_id, e.to_stage));
            }
            _ => {}
        }
    }
    let mut reached = vec![0i64; STEPS.len()];
    let mut lost = 0;
    for (lead, at) in created {
        if at < from || at >= until {
            continue;
        }
        let seen = changes.get(lead).cloned().unwrap_or_default();
        let furthest = seen
            .iter()
            .filter_map(|(_, to)| step_of(*to))
            .max()
            .unwrap_or(0);
        for r in reached.iter_mut().take(furthest + 1) {
            *r += 1;
        }
        lost += seen.iter().any(|(_, to)| *to == Stage::ClosedLost) as i64;
    }
    (reached, lost)
}

fn funnel_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["analytics", "funnel", "--json"];
    all.extend_from_slice(args);
    let run = common::run_cli(url, &all);
    let (out, err) = common::output_text(&run);
    assert!(run.status.success(), "{all:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn reached_and_lost(report: &serde_json::Value) -> (Vec<i64>, i64) {
    let reached = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect();
    (reached, report["lost"].as_i64().unwrap())
}

async fn funnel_of_a_replayed_stream_is_the_inputs<S: LeadStore>(store: Arc<S>, url: &str) {
    let config = common::test_config(url);
    let start = 1_767_225_600_000; // 2026-01-01
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.5,
        source_shares: Default::default(),
        seed: 23,
        leads: 1500,
        days: 90,
        start,
    });
    leadflow::pipeline::replay::replay(&config, store.as_ref(), events.clone())
        .await
        .unwrap();
    let whole = funnel_json(url, &[]);
    let expected = expected_funnel(&events, i64::MIN, i64::MAX);
    assert_eq!(reached_and_lost(&whole), expected);
    // Not a degenerate stream: leads went all the way, and were lost.
    assert!(
        expected.0[0] > 1000 && expected.0[5] > 20 && expected.1 > 20,
        "{expected:?}"
    );
    let won = expected.0[5] as f64;
    let to_won = whole["steps"][0]["to_won"].as_f64().unwrap();
    assert!((to_won - won / expected.0[0] as f64).abs() < 1e-12);
    // A cohort: leads created from day 30 to day 59, inclusive.
    let cohort = funnel_json(url, &["--from", "2026-01-31", "--to", "2026-03-01"]);
    let expected = expected_funnel(&events, start + 30 * DAY, start + 60 * DAY);
    assert_eq!(reached_and_lost(&cohort), expected);
    assert!(expected.0[0] > 200 && expected.0[0] < whole["created"].as_i64().unwrap());
    // A period that ends before it starts says so.
    let run = common::run_cli(
        url,
        &[
            "analytics",
            "funnel",
            "--from",
            "2026-02-02",
            "--to",
            "2026-02-01",
        ],
    );
    let (_, err) = common::output_text(&run);
    assert!(
        !run.status.success() && err.contains("--from is after --to"),
        "{err}"
    );
}

backend_tests!(funnel_of_a_replayed_stream_is_the_inputs);
