//! `leadflow forecast` as a user runs it: on a daily CSV (good, damaged, too
//! short) and on the leads a replay of simulated traffic left in the
//! database, SQLite and PostgreSQL alike.

mod common;

use common::{output_text as text, run_cli as leadflow};

use chrono::{Days, NaiveDate};
use common::{TestPg, TestSqlite};
use leadflow::events::MILLIS_PER_DAY;
use leadflow::simulate::{self, SimulationParams};
use leadflow::store::prelude::*;

/// A weekday-shaped series with a trend: busy weekdays, quiet weekends
/// (Sundays without a lead at all).
fn daily_csv(days: usize) -> String {
    let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(); // a Monday
    let mut csv = String::from("date,count\n");
    for day in 0..days {
        let weekday = day % 7;
        let base = [12, 14, 13, 12, 10, 3, 0][weekday] as f64;
        let count = (base * (1.0 + day as f64 / 200.0) + ((day * 7919) % 5) as f64 - 2.0)
            .max(0.0)
            .round();
        if weekday == 6 {
            continue; // a missing day is a day without leads
        }
        csv.push_str(&format!("{},{count}\n", start + Days::new(day as u64)));
    }
    csv
}

#[test]
fn a_daily_csv_is_forecast_and_a_bad_or_short_one_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestSqlite::new();
    let good = dir.path().join("daily.csv");
    std::fs::write(&good, daily_csv(141)).unwrap();
    let out_path = dir.path().join("out.csv");
    let run = leadflow(
        &db.url,
        &[
            "forecast",
            "lead-generation",
            "--input",
            good.to_str().unwrap(),
            "--horizon",
            "14",
            "--output",
            out_path.to_str().unwrap(),
        ],
    );
    let (_, err) = text(&run);
    assert!(run.status.success(), "{err}");
    let out = std::fs::read_to_string(&out_path).unwrap();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("date,forecast,lower_80,upper_80,lower_95,upper_95")
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 14);
    assert_eq!(rows[0][0], "2026-05-26", "the day after the last one given");
    for row in &rows {
        let v: Vec<f64> = row[1..].iter().map(|c| c.parse().unwrap()).collect();
        let (f, l80, u80, l95, u95) = (v[0], v[1], v[2], v[3], v[4]);
        assert!(l95 <= l80 && l80 <= f && f <= u80 && u80 <= u95, "{row:?}");
        assert!(l95 >= 0.0, "no negative leads: {row:?}");
    }
    // Sundays (2026-05-31) are forecast near zero, weekdays well above.
    let sunday = rows.iter().find(|r| r[0] == "2026-05-31").unwrap();
    let monday = rows.iter().find(|r| r[0] == "2026-06-01").unwrap();
    let value = |r: &Vec<String>| r[1].parse::<f64>().unwrap();
    assert!(
        value(sunday) < 2.0 && value(monday) > 10.0,
        "{sunday:?} {monday:?}"
    );

    let refused = |body: String| {
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, body).unwrap();
        let run = leadflow(
            &db.url,
            &[
                "forecast",
                "lead-generation",
                "--input",
                path.to_str().unwrap(),
            ],
        );
        assert!(!run.status.success(), "a bad file must not be forecast");
        assert!(run.stdout.is_empty(), "nothing invented on standard output");
        text(&run).1
    };
    let mut bad_date = daily_csv(141);
    bad_date.push_str("2026-02-30,4\n");
    let err = refused(bad_date);
    let bad_line = daily_csv(141).lines().count() + 1;
    assert!(
        err.contains(&format!(
            "line {bad_line}: date `2026-02-30` is not an ISO date (YYYY-MM-DD)"
        )),
        "{err}"
    );
    let negative = daily_csv(141).replacen("2026-01-06,16", "2026-01-06,-3", 1);
    assert_ne!(negative, daily_csv(141), "the row to damage exists");
    let err = refused(negative);
    assert!(err.contains("line 3: count -3 is negative"), "{err}");
    let err = refused(daily_csv(141).replacen("date,count", "day,count", 1));
    assert!(
        err.contains("the header must name the columns `date` and `count`; it has: day,count"),
        "{err}"
    );
    let err = refused(daily_csv(40));
    assert!(
        err.contains("the series has 40 days; forecasting 14 days ahead")
            && err.contains("needs at least 61"),
        "{err}"
    );
}

/// Simulated traffic with a weekly rhythm and growing inflow, replayed into
/// the database at `url`.
async fn replayed<S: LeadStore>(url: &str, store: &S) -> i64 {
    let config = common::test_config(url);
    let start = 1_767_225_600_000; // 2026-01-01
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 1.0,
        source_shares: Default::default(),
        seed: 16,
        leads: 4000,
        days: 200,
        start,
    });
    leadflow::pipeline::replay::replay(&config, store, events)
        .await
        .unwrap();
    start
}

fn json(db: &str, args: &[&str]) -> serde_json::Value {
    let run = leadflow(db, args);
    let (out, err) = text(&run);
    assert!(run.status.success(), "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

async fn forecasts_from_the_store<S: LeadStore>(url: &str, store: &S) {
    let start = replayed(url, store).await;
    // The replay ran the weekly schedule on event time: every Monday from
    // the first one after the first lead, each kind once per slot as soon
    // as the data allow it (lead generation needs nine weeks of history).
    let scheduled = store.forecasts(None, 1_000).await.unwrap();
    assert!(scheduled.iter().all(|r| r.scheduled));
    let first_monday = start + 4 * MILLIS_PER_DAY;
    let week = 7 * MILLIS_PER_DAY;
    for kind in ["pipeline_value", "time_to_close", "lead_generation"] {
        let mut slots: Vec<i64> = scheduled
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.generated_at)
            .collect();
        slots.sort();
        assert!(slots.len() >= 15, "{kind}: {} slots", slots.len());
        assert!(
            slots.iter().all(|t| (t - first_monday) % week == 0),
            "{kind} on Mondays"
        );
        assert!(
            slots.windows(2).all(|w| w[1] - w[0] == week),
            "{kind} every week, once"
        );
        assert_eq!(
            *slots.last().unwrap(),
            first_monday + 27 * week,
            "{kind}: up to the last Monday"
        );
    }
    let first_pipeline = scheduled
        .iter()
        .filter(|r| r.kind == "pipeline_value")
        .map(|r| r.generated_at)
        .min();
    assert_eq!(first_pipeline, Some(first_monday));
    let generation = scheduled
        .iter()
        .find(|r| r.kind == "lead_generation")
        .unwrap();
    let event: leadflow::events::ForecastEvent = serde_json::from_str(&generation.event).unwrap();
    let daily = &event.lead_generation.as_ref().unwrap().daily;
    assert_eq!(daily.len(), 14);
    assert_eq!(
        daily[0].date,
        chrono::DateTime::from_timestamp_millis(generation.generated_at)
            .unwrap()
            .date_naive()
            .to_string(),
        "the forecast starts on its slot's day"
    );
    let open = store
        .all_lead_states()
        .await
        .unwrap()
        .iter()
        .filter(|l| !l.stage.is_closed())
        .count();

    let value = json(url, &["forecast", "pipeline-value", "--json"]);
    assert_eq!(value["open_leads"].as_u64().unwrap() as usize, open);
    let f = |k: &str| value[k].as_f64().unwrap();
    assert!(f("forecasted_value") > 0.0);
    assert!(f("forecasted_value") < f("current_pipeline_value"));
    assert!(f("forecasted_within_horizon") <= f("forecasted_value"));
    let interval = &value["intervals"][0];
    assert_eq!(interval["level"], 0.8);
    let (lower, upper) = (
        interval["lower"].as_f64().unwrap(),
        interval["upper"].as_f64().unwrap(),
    );
    assert!(
        lower < f("forecasted_value") && f("forecasted_value") < upper,
        "{interval}"
    );
    let expected_by_source: f64 = value["by_source"]
        .as_object()
        .unwrap()
        .values()
        .map(|g| g["expected_value"].as_f64().unwrap())
        .sum();
    assert!((expected_by_source - f("forecasted_value")).abs() < 1e-6 * f("forecasted_value"));
    assert!(
        (f("historical_estimate") - f("conversion_rate") * f("avg_deal_value") * open as f64).abs()
            < 1e-6 * f("historical_estimate")
    );
    // Same data, same figures: the Monte Carlo has a fixed seed.
    assert_eq!(json(url, &["forecast", "pipeline-value", "--json"]), value);

    let close = json(url, &["forecast", "time-to-close", "--json"]);
    let overall = &close["overall"];
    assert_eq!(overall["open"].as_u64().unwrap() as usize, open);
    let q = |o: &serde_json::Value, k: &str| o[k].as_f64().unwrap();
    let won = &overall["to_win"];
    assert!(q(won, "p25") <= q(won, "median") && q(won, "median") <= q(won, "p75"));
    assert!(q(won, "p75") <= q(won, "p90"));
    assert!(close["by_source"].as_object().unwrap().len() >= 3);
    assert!(
        close["from_stage"]["negotiation"]["any_close"]["median"]
            .as_f64()
            .unwrap()
            < overall["any_close"]["median"].as_f64().unwrap(),
        "deals in negotiation are closer to a close than new leads"
    );

    // A forecast made on day 100 sees only what had happened by then.
    let at = chrono::DateTime::from_timestamp_millis(start + 100 * MILLIS_PER_DAY)
        .unwrap()
        .to_rfc3339();
    let earlier = json(url, &["forecast", "time-to-close", "--json", "--at", &at]);
    assert!(
        earlier["overall"]["observations"].as_u64() < overall["observations"].as_u64(),
        "leads created after the forecast's time are not counted"
    );

    // Recorded once per forecast_id, however often it is made.
    for _ in 0..2 {
        json(url, &["forecast", "pipeline-value", "--json", "--record"]);
        json(url, &["forecast", "time-to-close", "--json", "--record"]);
    }
    let again = leadflow(url, &["forecast", "pipeline-value", "--record"]);
    assert!(
        text(&again)
            .1
            .contains("was already recorded; nothing stored"),
        "{}",
        text(&again).1
    );
    let stored: Vec<_> = store
        .forecasts(None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.scheduled)
        .collect();
    let mut kinds: Vec<&str> = stored.iter().map(|r| r.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["pipeline_value", "time_to_close"]);
    for record in &stored {
        let event: leadflow::events::ForecastEvent = serde_json::from_str(&record.event).unwrap();
        assert_eq!(event.forecast_id, record.forecast_id);
        assert_eq!(event.kind.as_str(), record.kind);
    }
    // Each waits in the outbox for partition 0's owner to publish it.
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
    let pipeline = stored.iter().find(|r| r.kind == "pipeline_value").unwrap();
    assert_eq!(pipeline.leads_counted as usize, open);
    assert_eq!(pipeline.confidence, 0.8);
    let recorded: serde_json::Value = serde_json::from_str(&pipeline.detail).unwrap();
    assert_eq!(recorded, value, "the whole result is kept");

    let backtest = json(
        url,
        &[
            "forecast",
            "backtest",
            "--json",
            "--origins",
            "20",
            "--step",
            "4",
        ],
    );
    let lead_generation = &backtest["lead_generation"];
    assert!(
        lead_generation["mase"].as_f64().unwrap()
            <= lead_generation["seasonal_naive_mase"].as_f64().unwrap()
    );
    let pipeline = &backtest["pipeline_value"];
    assert_eq!(pipeline["origins"].as_array().unwrap().len(), 20);
    let held_80 = pipeline["coverage"][0][1].as_f64().unwrap();
    assert!(
        (0.5..=1.0).contains(&held_80),
        "the 80% interval held at {held_80} of 20 past origins"
    );
    for origin in pipeline["origins"].as_array().unwrap() {
        assert!(origin["wins"].as_u64().unwrap() > 0, "{origin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_from_a_sqlite_store() {
    let db = TestSqlite::new();
    let store = db.store().await;
    forecasts_from_the_store(&db.url, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_from_a_postgres_store() {
    let db = TestPg::new().await;
    let store = db.store().await;
    forecasts_from_the_store(&db.url, &store).await;
}

/// The schedule on the wall clock (a hand-moved one): a slot is made once
/// the clock is the grace period past it and the processor has caught up
/// on its partitions, from every event up to the slot; after a long stop
/// only the latest `backfill_slots` are made up.
async fn the_schedule_follows_the_wall_clock<S: LeadStore + 'static>(
    store: std::sync::Arc<S>,
    url: &str,
) {
    use leadflow::core::clock::ManualClock;
    use leadflow::forecast::scheduled::{forecasts_as_of, ForecastPlan};
    use std::sync::Arc;

    let mut config = common::test_config(url);
    config.processor.clock = leadflow::config::ClockMode::Wall;
    config.nurture.enabled = false;
    config.forecast.backfill_slots = 2;
    leadflow::kafka::create_topics(&config).await.unwrap();
    let start = 1_767_225_600_000; // Thursday 2026-01-01
    let events = simulate::generate(&SimulationParams {
        inflow_growth: 0.5,
        source_shares: Default::default(),
        seed: 5,
        // A backlog that takes the processor some seconds to read, so a
        // clock not held back while it catches up would make the first
        // slot from part of it.
        leads: 3000,
        days: 45,
        start,
    });
    leadflow::kafka::publish_inputs(
        &config,
        &leadflow::codec::Codec::new(None),
        &events,
        leadflow::kafka::InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
    let day = MILLIS_PER_DAY;
    let monday = |week: i64| start + 4 * day + week * 7 * day;
    // Half an hour into Monday the 12th: the 5th is due, the 12th is not yet.
    let clock = Arc::new(ManualClock::new(monday(1) + 1_800_000));
    let metrics = Arc::new(leadflow::metrics::Metrics::new());
    let (stop, task) =
        common::spawn_pipeline_on_clock(&config, store.clone(), metrics.clone(), clock.clone());
    let slots_made = |store: Arc<S>| async move {
        let mut slots: Vec<i64> = store
            .forecasts(Some("pipeline_value"), 100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.generated_at)
            .collect();
        slots.sort();
        slots
    };
    let wait_for = |want: Vec<i64>| {
        let store = store.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
            loop {
                let made = slots_made(store.clone()).await;
                if made == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "slots made: {made:?}, waiting for {want:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(vec![monday(0)]).await;
    // Until all of it is applied, the processor is catching up and the
    // clock is held back: nothing else may be made meanwhile.
    let total = events.len() as i64;
    while common::committed_messages(store.as_ref(), &config).await < total {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(slots_made(store.clone()).await, vec![monday(0)]);
    // Four weeks on: five slots are due, the latest two are made up.
    clock.set(monday(5) + 2 * 3_600_000);
    wait_for(vec![monday(0), monday(4), monday(5)]).await;
    assert_eq!(
        metrics.value("leadflow_forecast_slots_skipped_total", &[]),
        3.0
    );
    assert_eq!(
        metrics.value("leadflow_forecast_last_slot_timestamp_seconds", &[]),
        (monday(5) / 1_000) as f64
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Each was made from everything up to its slot, nothing after: the same
    // as the forecasts made now, from the whole store, as of the slot.
    let leads = store.all_lead_states().await.unwrap();
    let plan = ForecastPlan {
        horizon_days: config.forecast.horizon_days,
        lead_generation_days: config.forecast.lead_generation_days,
        levels: &config.forecast.levels,
    };
    let stored = store.forecasts(None, 100).await.unwrap();
    for slot in [monday(0), monday(4), monday(5)] {
        let (made, _) = forecasts_as_of(&leads, slot, &plan);
        assert!(!made.is_empty());
        for m in made {
            let row = stored
                .iter()
                .find(|r| r.forecast_id == m.event.forecast_id)
                .unwrap_or_else(|| panic!("{:?} of {slot} stored", m.event.kind));
            let event: leadflow::events::ForecastEvent = serde_json::from_str(&row.event).unwrap();
            assert_eq!(event, m.event);
        }
    }
    let published = common::published_forecasts(&config).await;
    let ids: std::collections::BTreeSet<&str> =
        published.iter().map(|f| f.forecast_id.as_str()).collect();
    let stored_ids: std::collections::BTreeSet<&str> =
        stored.iter().map(|r| r.forecast_id.as_str()).collect();
    assert_eq!(ids, stored_ids, "each stored forecast published");
}

backend_tests!(the_schedule_follows_the_wall_clock);
