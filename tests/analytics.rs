//! Analytics from the stage transitions the commit path writes, on both
//! stores: the funnel, the time in stage, the breakdowns and the stored
//! daily history of a replayed stream equal the ones worked out here from
//! the input events alone, through `leadflow analytics`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::expected::{expected_funnel, expected_groups, expected_stays, open_at, Tally, DAY};
use leadflow::events::Stage;
use leadflow::forecast::time_to_close::{CloseCurve, Outcome};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::LeadStore;

fn tally_of(report: &serde_json::Value) -> Tally {
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let n = |f: &str| g[f].as_u64().unwrap();
            let value = g["won_value"].as_f64().unwrap();
            (
                g["value"].as_str().unwrap().to_string(),
                (n("leads"), n("won"), n("lost"), value),
            )
        })
        .collect()
}

fn assert_same_tally(seen: &Tally, expected: &Tally, what: &str) {
    let keys = |t: &Tally| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(seen), keys(expected), "{what}");
    for (key, (leads, won, lost, value)) in expected {
        let got = &seen[key];
        assert_eq!((got.0, got.1, got.2), (*leads, *won, *lost), "{what} {key}");
        assert!(
            (got.3 - value).abs() <= 1e-6 * value.max(1.0),
            "{what} {key} won value"
        );
    }
}

fn cli_json(url: &str, args: &[&str]) -> serde_json::Value {
    let run = common::run_cli(url, args);
    let (out, err) = common::output_text(&run);
    assert!(run.status.success(), "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn funnel_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["analytics", "funnel", "--json"];
    all.extend_from_slice(args);
    cli_json(url, &all)
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

async fn analytics_of_a_replayed_stream_are_the_inputs<S: LeadStore>(store: Arc<S>, url: &str) {
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
    // Time in stage, with the leads still in a stage censored.
    let report = cli_json(url, &["analytics", "time-in-stage", "--json"]);
    let stays = expected_stays(&events);
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 5, "the open stages");
    for row in report {
        let stage: Stage = row["stage"].as_str().unwrap().parse().unwrap();
        let seen = stays.get(&stage).cloned().unwrap_or_default();
        let left = seen.iter().filter(|o| o.outcome != Outcome::Open).count();
        assert_eq!(
            row["entered"].as_u64().unwrap() as usize,
            seen.len(),
            "{stage:?}"
        );
        assert_eq!(row["left"].as_u64().unwrap() as usize, left, "{stage:?}");
        let curve = CloseCurve::estimate(&seen);
        let close = |field: &str, expected: Option<f64>| match (row[field].as_f64(), expected) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{stage:?} {field}: {a} != {b}"),
            (a, b) => assert_eq!(a, b, "{stage:?} {field}"),
        };
        close(
            "mean_days",
            (!seen.is_empty()).then(|| curve.restricted_mean_days()),
        );
        close("median_days", curve.quantile(0.5));
        close("p90_days", curve.quantile(0.9));
    }
    let new = &report[0];
    assert!(new["left"].as_u64().unwrap() > 1000 && new["still_in"].as_u64().unwrap() > 10);
    // Per owner and per source, and per day.
    let (by_owner, by_source, daily) = expected_groups(&events);
    let owners = cli_json(url, &["analytics", "breakdown", "--by", "owner", "--json"]);
    assert_same_tally(&tally_of(&owners), &by_owner, "per owner");
    assert!(
        by_owner.len() > 3 && by_owner.values().all(|t| t.1 > 0),
        "{by_owner:?}"
    );
    let sources = cli_json(url, &["analytics", "breakdown", "--by", "source", "--json"]);
    assert_same_tally(&tally_of(&sources), &by_source, "per source");
    let days = cli_json(url, &["analytics", "daily", "--json"]);
    let seen: BTreeMap<i64, (u64, u64)> = days
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let date =
                chrono::NaiveDate::parse_from_str(d["date"].as_str().unwrap(), "%Y-%m-%d").unwrap();
            let day = date
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
                / DAY;
            (
                day,
                (d["created"].as_u64().unwrap(), d["won"].as_u64().unwrap()),
            )
        })
        .filter(|(_, (created, won))| created + won > 0)
        .collect();
    assert_eq!(seen, daily, "per day: created, won");
    // Pipeline by stage: the open leads' current stages, as the states say.
    let pipeline = cli_json(url, &["analytics", "pipeline", "--json"]);
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    for state in common::all_states(store.as_ref()).await.values() {
        if state.created_at.is_some() && !state.stage.is_closed() {
            *open.entry(state.stage.as_str().to_string()).or_default() += 1;
        }
    }
    let seen: BTreeMap<String, u64> = pipeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["leads"].as_u64().unwrap() > 0)
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["leads"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, open, "open leads per stage");
    assert!(open.values().sum::<u64>() > 50, "{open:?}");
    // The daily history the replay stored, as the live processor would:
    // every day from the first creation to the last one its clock passed.
    let history = cli_json(url, &["analytics", "history", "--by", "all", "--json"]);
    let stored: BTreeMap<i64, (u64, u64)> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == "created" || r["metric"] == "won")
        .fold(BTreeMap::new(), |mut days, r| {
            let entry = days.entry(r["day"].as_i64().unwrap()).or_insert((0, 0));
            let n = r["value"].as_f64().unwrap() as u64;
            if r["metric"] == "created" {
                entry.0 = n;
            } else {
                entry.1 = n;
            }
            days
        });
    let first = *daily.keys().next().unwrap();
    let last = *stored.keys().last().unwrap();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>()
    );
    assert!(last >= daily.keys().last().unwrap() - 2, "{last}");
    for (day, counts) in &stored {
        assert_eq!(
            counts,
            daily.get(day).unwrap_or(&(0, 0)),
            "stored day {day}: created, won"
        );
    }
    // The open pipeline at the end of the last stored day, from the input.
    let end = (last + 1) * DAY;
    let open_then = open_at(&events, end);
    let stages = cli_json(
        url,
        &["analytics", "history", "--metric", "open_leads", "--json"],
    );
    let seen: BTreeMap<String, u64> = stages
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["day"].as_i64() == Some(last) && r["value"].as_f64().unwrap() > 0.0)
        .map(|r| {
            let n = r["value"].as_f64().unwrap() as u64;
            (r["dimension_value"].as_str().unwrap().to_string(), n)
        })
        .collect();
    assert_eq!(
        seen, open_then,
        "open leads per stage at the end of day {last}"
    );
    let owners = cli_json(url, &["analytics", "history", "--by", "owner", "--json"]);
    let owner_won: f64 = owners
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == "won")
        .map(|r| r["value"].as_f64().unwrap())
        .sum();
    assert_eq!(owner_won as u64, stored.values().map(|c| c.1).sum::<u64>());
    let run = common::run_cli(url, &["analytics", "history", "--by", "colour"]);
    let (_, err) = common::output_text(&run);
    assert!(
        !run.status.success() && err.contains("--by colour"),
        "{err}"
    );
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
        !run.status.success() && err.contains("from is after to"),
        "{err}"
    );
}

backend_tests!(analytics_of_a_replayed_stream_are_the_inputs);
