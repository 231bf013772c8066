//! The model workflow as a user runs it: `leadflow import` a CRM export with a
//! few bad rows, `model train` on the database and on a CSV, `model list`,
//! `model evaluate`, `model score`.

mod common;

use common::{output_text as text, run_cli as leadflow};

use common::TestSqlite;
use leadflow::core::state::LeadState;
use leadflow::events::Stage;
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;
use std::path::Path;

fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .to_rfc3339()
}

/// A CRM export of closed leads built from simulated history.
fn export(leads: &[LeadState], path: &Path) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record([
        "lead_ext_id",
        "created_at",
        "closed_at",
        "outcome",
        "source",
        "owner",
        "estimated_value",
        "probability",
        "industry",
        "company_size",
    ])
    .unwrap();
    for l in leads {
        let outcome = if l.stage == Stage::ClosedWon {
            "won"
        } else {
            "lost"
        };
        w.write_record([
            l.lead_ext_id.clone(),
            rfc3339(l.created_at.unwrap()),
            rfc3339(l.stage_entered_at.unwrap()),
            outcome.to_string(),
            l.source.clone().unwrap_or_default(),
            l.owner.clone().unwrap_or_default(),
            l.estimated_value.map(|v| v.to_string()).unwrap_or_default(),
            l.probability.map(|v| v.to_string()).unwrap_or_default(),
            l.attributes.get("industry").cloned().unwrap_or_default(),
            l.attributes
                .get("company_size")
                .cloned()
                .unwrap_or_default(),
        ])
        .unwrap();
    }
    w.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_train_list_evaluate_and_score_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // History to export, from a scratch store.
    let scratch_db = TestSqlite::new();
    let scratch = scratch_db.store().await;
    let config = common::test_config(&scratch_db.url);
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed: 51,
        leads: 2500,
        days: 120,
        start: 1_767_225_600_000,
    });
    leadflow::pipeline::replay::replay(&config, &scratch, events)
        .await
        .unwrap();
    let closed: Vec<LeadState> = scratch.closed_leads(0).await.unwrap();
    assert!(closed.len() > 1000);

    let good = dir.path().join("crm.csv");
    export(&closed, &good);
    let mut with_bad_rows = std::fs::read_to_string(&good).unwrap();
    with_bad_rows.push_str("BAD-1,2026-03-01,2026-02-01T00:00:00Z,won,web,,,,,\n");
    with_bad_rows.push_str("BAD-2,2026-03-01,2026-03-09T00:00:00Z,perhaps,web,,,,,\n");
    let bad = dir.path().join("crm-with-errors.csv");
    std::fs::write(&bad, with_bad_rows).unwrap();
    let bad_line = closed.len() + 2;

    let db = TestSqlite::new();
    let refused = leadflow(&db.url, &["import", bad.to_str().unwrap()]);
    let (_, err) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        err.contains(&format!("line {bad_line}: closed_at is before created_at")),
        "{err}"
    );
    assert!(
        err.contains(&format!("line {}: outcome `perhaps`", bad_line + 1)),
        "{err}"
    );
    assert!(err.contains("nothing imported"), "{err}");
    let store = db.store().await;
    assert_eq!(
        store.lead_count().await.unwrap(),
        0,
        "a refused file imports nothing"
    );

    let skipped = leadflow(
        &db.url,
        &["import", bad.to_str().unwrap(), "--on-error", "skip"],
    );
    let (out, err) = text(&skipped);
    assert!(skipped.status.success(), "{err}");
    assert!(
        out.contains(&format!("imported {} leads", closed.len())),
        "{out}"
    );
    assert!(out.contains("2 rows skipped"), "{out}");
    assert_eq!(store.lead_count().await.unwrap(), closed.len() as i64);
    let again = leadflow(&db.url, &["import", good.to_str().unwrap()]);
    assert!(
        text(&again).0.contains("0 events applied"),
        "re-import changes nothing"
    );

    // Train on the imported leads: the window is up to the newest close.
    let trained = leadflow(&db.url, &["model", "train", "--window-days", "365"]);
    let (out, err) = text(&trained);
    assert!(trained.status.success(), "{err}");
    assert!(out.contains("model 1 (gradient_boosting)"), "{out}");
    assert!(out.contains("rule-based score"), "{out}");
    assert!(out.contains("model 1 is now active"), "{out}");

    // A CSV of features straight from a data scientist's notebook.
    let features = dir.path().join("features.csv");
    {
        let mut w = csv::Writer::from_path(&features).unwrap();
        w.write_record([
            "id",
            "closed",
            "estimated_value",
            "probability",
            "source",
            "converted",
        ])
        .unwrap();
        for l in &closed {
            w.write_record([
                l.lead_ext_id.clone(),
                l.stage_entered_at.unwrap().to_string(),
                l.estimated_value.unwrap_or_default().to_string(),
                l.probability.map(|p| p.to_string()).unwrap_or_default(),
                l.source.clone().unwrap_or_default(),
                ((l.stage == Stage::ClosedWon) as u8).to_string(),
            ])
            .unwrap();
        }
        w.flush().unwrap();
    }
    let from_csv = leadflow(
        &db.url,
        &[
            "model",
            "train",
            "--type",
            "random-forest",
            "--activate",
            "never",
            "--csv",
            features.to_str().unwrap(),
            "--target",
            "converted",
            "--time-column",
            "closed",
            "--id-column",
            "id",
        ],
    );
    let (out, err) = text(&from_csv);
    assert!(from_csv.status.success(), "{err}");
    assert!(out.contains("model 2 (random_forest)"), "{out}");
    assert!(out.contains("not activated"), "{out}");

    let listed = leadflow(&db.url, &["model", "list"]);
    let (out, _) = text(&listed);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].contains("gradient_boosting") && lines[1].trim_end().ends_with('*'));
    assert!(lines[2].contains("random_forest") && lines[2].contains("csv:"));

    let evaluated = leadflow(&db.url, &["model", "evaluate", "--window-days", "365"]);
    let (out, err) = text(&evaluated);
    assert!(evaluated.status.success(), "{err}");
    assert!(out.starts_with("model 1"), "{out}");

    let scored_path = dir.path().join("scored.csv");
    let scored = leadflow(
        &db.url,
        &[
            "model",
            "score",
            "--version",
            "2",
            "--input",
            features.to_str().unwrap(),
            "--output",
            scored_path.to_str().unwrap(),
        ],
    );
    assert!(scored.status.success(), "{}", text(&scored).1);
    let mut reader = csv::Reader::from_path(&scored_path).unwrap();
    assert_eq!(
        reader.headers().unwrap().iter().next_back(),
        Some("conversion_probability")
    );
    let probabilities: Vec<(f64, f64)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[6].parse().unwrap(), r[5].parse().unwrap())
        })
        .collect();
    assert_eq!(probabilities.len(), closed.len());
    assert!(probabilities.iter().all(|(p, _)| (0.0..=1.0).contains(p)));
    // The rep's probability and the source carry signal: the scores rank
    // won above lost far better than chance.
    let (p, y): (Vec<f64>, Vec<f64>) = probabilities.into_iter().unzip();
    let auc = leadflow::ml::evaluation::roc_auc(&p, &y);
    assert!(auc > 0.65, "auc {auc}");

    let unknown = leadflow(&db.url, &["model", "activate", "77"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).1.contains("no model version 77"));
}
