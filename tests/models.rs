//! Conversion models end to end: point-in-time training data from the store,
//! the three learners against the rule score, the registry on both databases,
//! a hot swap in a running processor, and a drift-triggered retrain.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_config, TestSqlite};
use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::events::{InputEvent, LeadScore, MILLIS_PER_DAY};
use leadflow::kafka::{self, InputFormat};
use leadflow::ml::model::ModelType;
use leadflow::ml::training::{evaluate_model, NoProgress};
use leadflow::pipeline::replay::replay;
use leadflow::registry::{
    dataset_from_store, load_active, load_model, train_and_register, Activation, Registered,
    StoredMetrics,
};
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::{LeadStore, StoreError};

const JAN_2026: i64 = 1_767_225_600_000;

fn stream(seed: u64, leads: u32, days: u32, start: i64) -> Vec<InputEvent> {
    simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: Default::default(),
        seed,
        leads,
        days,
        start,
    })
}

async fn train<S: LeadStore>(
    store: &S,
    config: &Config,
    model_type: ModelType,
    activation: Activation,
) -> Registered {
    let mut scoring = config.scoring.clone();
    scoring.training.model_type = model_type;
    let dataset = dataset_from_store(store, &scoring, 365).await.unwrap();
    train_and_register(
        store,
        &scoring,
        dataset,
        "test",
        activation,
        Arc::new(NoProgress),
        chrono::Utc::now().timestamp_millis(),
        true,
    )
    .await
    .unwrap()
}

async fn models_beat_the_rule_score_and_live_in_the_registry<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let config = test_config(url);
    replay(&config, store.as_ref(), stream(21, 3000, 120, JAN_2026))
        .await
        .unwrap();

    let dataset = dataset_from_store(store.as_ref(), &config.scoring, 365)
        .await
        .unwrap();
    assert!(
        dataset.examples.len() > 1500,
        "{} closed leads",
        dataset.examples.len()
    );
    // Point in time: every row is the lead before its close, so no row can
    // carry the closed stage it is labelled with.
    let stage = dataset
        .features
        .iter()
        .position(|f| f.name == "stage")
        .unwrap();
    for e in &dataset.examples {
        let leadflow::ml::features::FeatureValue::Category(Some(s)) = &e.values[stage] else {
            panic!("stage missing")
        };
        assert!(
            !s.starts_with("closed"),
            "{} was labelled after its close",
            e.id
        );
    }

    let gb = train(
        store.as_ref(),
        &config,
        ModelType::GradientBoosting,
        Activation::IfNotWorse,
    )
    .await;
    let rf = train(
        store.as_ref(),
        &config,
        ModelType::RandomForest,
        Activation::Never,
    )
    .await;
    let lr = train(
        store.as_ref(),
        &config,
        ModelType::Logistic,
        Activation::Never,
    )
    .await;
    let rule = gb
        .outcome
        .evaluation
        .rule_score
        .clone()
        .expect("rule baseline");
    for r in [&gb, &rf, &lr] {
        let m = &r.outcome.evaluation.model;
        assert!(
            m.roc_auc > rule.roc_auc + 0.1,
            "{}: auc {} vs rule {}",
            r.outcome.model.model_type(),
            m.roc_auc,
            rule.roc_auc
        );
        assert!(m.log_loss < rule.log_loss && m.brier < rule.brier);
        assert!(
            m.calibration_error < 0.06,
            "{} calibration {}",
            r.outcome.model.model_type(),
            m.calibration_error
        );
        assert_eq!(m.rows, r.outcome.holdout_rows);
    }
    assert!(
        gb.activated,
        "the first model is activated when none is active"
    );
    assert!(!rf.activated && !lr.activated);
    assert_eq!(rf.previous.as_ref().map(|p| p.0), Some(gb.version));

    // The registry keeps all three with their metrics; one is active.
    let listed = store.list_models().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|m| (m.version, m.entry.model_type.as_str(), m.active))
            .collect::<Vec<_>>(),
        vec![
            (gb.version, "gradient_boosting", true),
            (rf.version, "random_forest", false),
            (lr.version, "logistic", false),
        ]
    );
    let stored: StoredMetrics = serde_json::from_str(&listed[0].entry.metrics).unwrap();
    assert_eq!(stored.evaluation, gb.outcome.evaluation);
    assert!(listed[0].entry.window_start.unwrap() < listed[0].entry.window_end.unwrap());

    // The stored model predicts exactly what the trained one did.
    let loaded = load_model(store.as_ref(), rf.version)
        .await
        .unwrap()
        .unwrap();
    let holdout = rf.outcome.evaluated.clone();
    assert_eq!(
        evaluate_model(&loaded.model, &dataset, holdout.clone()).model,
        evaluate_model(&rf.outcome.model, &dataset, holdout.clone()).model
    );

    store.activate_model(lr.version, 1).await.unwrap();
    assert_eq!(
        store.active_model_version().await.unwrap(),
        Some(lr.version)
    );
    assert_eq!(
        load_active(store.as_ref()).await.unwrap().unwrap().version,
        lr.version
    );
    assert!(matches!(
        store.activate_model(999, 1).await,
        Err(StoreError::ModelNotFound(999))
    ));
    assert_eq!(
        store.active_model_version().await.unwrap(),
        Some(lr.version)
    );
}

/// Scores published on the test's topic, in topic order.
async fn published_scores(config: &Config) -> Vec<LeadScore> {
    let codec = Codec::new(None);
    let mut out = Vec::new();
    for m in common::read_topic(config, &config.topics.scores) {
        out.push(codec.decode(&m.payload.unwrap()).await.unwrap());
    }
    out
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn activated_model_takes_over_without_a_restart<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let mut config = test_config(url);
    config.scoring.model.poll_interval_ms = 200;
    kafka::create_topics(&config)
        .await
        .expect("create topics (is the broker up? `make broker`)");

    // Two models, trained on history kept in a scratch store.
    let scratch_db = TestSqlite::new();
    let scratch = scratch_db.store().await;
    replay(&config, &scratch, stream(31, 1500, 90, JAN_2026))
        .await
        .unwrap();
    for (model_type, activation) in [
        (ModelType::GradientBoosting, Activation::Always),
        (ModelType::Logistic, Activation::Never),
    ] {
        let mut scoring = config.scoring.clone();
        scoring.training.model_type = model_type;
        let dataset = dataset_from_store(&scratch, &scoring, 365).await.unwrap();
        train_and_register(
            store.as_ref(),
            &scoring,
            dataset,
            "test",
            activation,
            Arc::new(NoProgress),
            1,
            false,
        )
        .await
        .unwrap();
    }
    let [first, second] = [1, 2].map(|v: i64| v.to_string());

    let events = stream(32, 300, 30, JAN_2026 + 100 * MILLIS_PER_DAY);
    let half = events.len() / 2;
    let codec = Codec::new(None);
    kafka::publish_inputs(&config, &codec, &events[..half], InputFormat::Avro, 0)
        .await
        .unwrap();
    let (task, metrics) = common::spawn_pipeline(&config, store.clone(), Duration::from_secs(6));
    wait_for("the first half", Duration::from_secs(60), async || {
        common::committed_messages(store.as_ref(), &config).await == half as i64
    })
    .await;
    assert_eq!(metrics.value("leadflow_model_active_version", &[]), 1.0);

    store.activate_model(2, 2).await.unwrap();
    wait_for("the switch", Duration::from_secs(10), async || {
        metrics.value("leadflow_model_active_version", &[]) == 2.0
    })
    .await;
    kafka::publish_inputs(&config, &codec, &events[half..], InputFormat::Avro, 0)
        .await
        .unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.applied, events.len() as u64, "no event lost");
    assert_eq!(
        metrics.value("leadflow_model_swaps_total", &[]),
        2.0,
        "rules -> 1 at start, 1 -> 2 live"
    );

    let scores = published_scores(&config).await;
    let versions: Vec<&str> = scores
        .iter()
        .map(|s| {
            s.model_version
                .as_deref()
                .expect("every score names its model")
        })
        .collect();
    assert!(versions.contains(&first.as_str()) && versions.contains(&second.as_str()));
    // Per lead, the version never goes back (scores of one lead are in order).
    let mut last: std::collections::HashMap<&str, &str> = Default::default();
    for (s, v) in scores.iter().zip(&versions) {
        if let Some(prev) = last.insert(&s.lead_ext_id, v) {
            assert!(
                !(prev == second && *v == first),
                "lead {} went back",
                s.lead_ext_id
            );
        }
    }
    for s in &scores {
        let p = s.ml_conversion_probability.expect("probability");
        assert!((0.0..=1.0).contains(&p));
        assert!((s.ml_score.unwrap() - 100.0 * p).abs() < 1e-9);
        let blended = 0.6 * 100.0 * p + 0.4 * s.initial_score;
        assert!((s.final_score - blended).abs() < 1e-9);
        assert!(s.top_factors.len() <= 5);
    }
    assert!(scores.iter().filter(|s| !s.top_factors.is_empty()).count() > scores.len() / 2);
    // Every lead the second half touched was rescored by model 2.
    let touched: std::collections::BTreeSet<&str> =
        events[half..].iter().map(|e| e.lead_ext_id()).collect();
    for lead in touched {
        assert_eq!(
            last.get(lead).copied(),
            Some(second.as_str()),
            "lead {lead}"
        );
    }
}

async fn source_drift_raises_psi_and_retrains<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let mut config = test_config(url);
    config.scoring.model.poll_interval_ms = 200;
    config.scoring.model.drift_check_interval_s = 1;
    config.scoring.model.drift_min_rows = 100;
    kafka::create_topics(&config)
        .await
        .expect("create topics (is the broker up? `make broker`)");

    let history = stream(41, 2500, 90, JAN_2026);
    replay(&config, store.as_ref(), history).await.unwrap();
    let first = train(
        store.as_ref(),
        &config,
        ModelType::GradientBoosting,
        Activation::Always,
    )
    .await;

    let (task, metrics) = common::spawn_pipeline(&config, store.clone(), Duration::from_secs(120));
    let source_psi = || metrics.value("leadflow_model_feature_psi", &[("feature", "source")]);
    // Activated or kept the previous one: a retrain that did not fail.
    let retrains = || {
        metrics.value("leadflow_model_retrains_total", &[("reason", "drift")])
            - metrics.value(
                "leadflow_model_retrains_total",
                &[("reason", "drift"), ("result", "failed")],
            )
    };
    // The first checks see the traffic the model was trained with.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = source_psi();
    assert!(before < 0.05, "PSI of source before the shift: {before}");
    assert_eq!(retrains(), 0.0);

    // New leads now come mostly from social and paid search.
    let shifted = simulate::generate(&SimulationParams {
        inflow_growth: 0.0,
        source_shares: [
            ("social".to_string(), 3.0),
            ("paid_search".to_string(), 1.0),
        ]
        .into_iter()
        .collect(),
        seed: 42,
        leads: 500,
        days: 20,
        start: JAN_2026 + 91 * MILLIS_PER_DAY,
    });
    kafka::publish_inputs(&config, &Codec::new(None), &shifted, InputFormat::Avro, 0)
        .await
        .unwrap();
    // The highest PSI seen: once a retrained model is activated, the gauge
    // measures against its reference, the shifted traffic itself.
    let mut after = 0.0f64;
    wait_for("a drift retrain", Duration::from_secs(90), async || {
        after = after.max(source_psi());
        retrains() >= 1.0
    })
    .await;
    assert!(
        after > config.scoring.model.drift_threshold,
        "PSI of source after the shift: {after}"
    );
    let models = store.list_models().await.unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[1].entry.reason, "drift");
    let stored: StoredMetrics = serde_json::from_str(&models[1].entry.metrics).unwrap();
    assert_eq!(
        stored.previous.map(|p| p.0),
        Some(first.version),
        "compared with the active model"
    );
    task.abort();
}

async fn an_old_model_is_retrained_on_schedule<S: LeadStore + 'static>(store: Arc<S>, url: &str) {
    let mut config = test_config(url);
    config.scoring.model.drift_check_interval_s = 1;
    config.scoring.model.drift_threshold = 0.0;
    config.scoring.model.retrain_interval_days = 30;
    replay(&config, store.as_ref(), stream(61, 1500, 90, JAN_2026))
        .await
        .unwrap();
    let window = config.scoring.training.window_days;
    let dataset = dataset_from_store(store.as_ref(), &config.scoring, window)
        .await
        .unwrap();
    let month_ago = chrono::Utc::now().timestamp_millis() - 31 * MILLIS_PER_DAY;
    let old = train_and_register(
        store.as_ref(),
        &config.scoring,
        dataset,
        "cli",
        Activation::Always,
        Arc::new(NoProgress),
        month_ago,
        true,
    )
    .await
    .unwrap();
    let metrics = Arc::new(leadflow::metrics::Metrics::new());
    let watcher = leadflow::pipeline::models::ModelWatcher {
        store: store.clone(),
        scoring: config.scoring.clone(),
        slot: Arc::new(Default::default()),
        metrics: metrics.clone(),
        clock: Arc::new(leadflow::core::clock::WallClock),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watcher.run(stopped));
    wait_for("a scheduled retrain", Duration::from_secs(60), async || {
        store.list_models().await.unwrap().len() == 2
    })
    .await;
    let models = store.list_models().await.unwrap();
    assert_eq!(models[1].entry.reason, "schedule");
    // Same data, same seed: the new model is exactly as good, so it is activated.
    let retrained = models[1].version;
    wait_for(
        "the new model in the slot",
        Duration::from_secs(10),
        async || metrics.value("leadflow_model_active_version", &[]) == retrained as f64,
    )
    .await;
    assert_eq!(store.active_model_version().await.unwrap(), Some(retrained));
    assert_eq!(
        metrics.value(
            "leadflow_model_retrains_total",
            &[("reason", "schedule"), ("result", "activated")]
        ),
        1.0
    );
    // A fresh model is not due: no second retrain.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(store.list_models().await.unwrap().len(), 2);
    assert_ne!(old.version, retrained);
    stop.send(true).unwrap();
    task.await.unwrap();
}

backend_tests!(
    an_old_model_is_retrained_on_schedule,
    models_beat_the_rule_score_and_live_in_the_registry,
    activated_model_takes_over_without_a_restart,
    source_drift_raises_psi_and_retrains,
);
