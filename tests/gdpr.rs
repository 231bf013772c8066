//! GDPR retention through the real broker, on both stores: a processor with
//! `gdpr.inactive_retention_days` erases, through the log, exactly the
//! leads whose latest event is older than the period on their partition's
//! event-time clock, worked out here from the raw events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use leadflow::events::{Millis, MILLIS_PER_DAY};
use leadflow::kafka::partition_for_key;
use leadflow::store::LeadStore;

use common::test_config;

const RETENTION_DAYS: u32 = 20;

async fn retention_erases_the_leads_inactive_past_the_period<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let mut config = test_config(url);
    config.gdpr.inactive_retention_days = RETENTION_DAYS;
    config.gdpr.retention_check_interval_s = 1;
    let events = common::publish_simulated(&config, 7, 150, 60).await;

    // Each lead's latest event, each partition's clock (its latest event).
    let mut latest: BTreeMap<String, Millis> = BTreeMap::new();
    let mut clock: BTreeMap<i32, Millis> = BTreeMap::new();
    for e in &events {
        let id = e.lead_ext_id().to_string();
        let partition = partition_for_key(id.as_bytes(), config.kafka.partitions);
        let at = e.occurred_at();
        let lead = latest.entry(id).or_insert(at);
        *lead = (*lead).max(at);
        let p = clock.entry(partition).or_insert(at);
        *p = (*p).max(at);
    }
    let period = RETENTION_DAYS as Millis * MILLIS_PER_DAY;
    let expected: BTreeSet<&str> = latest
        .iter()
        .filter(|(id, at)| {
            let partition = partition_for_key(id.as_bytes(), config.kafka.partitions);
            **at < clock[&partition] - period
        })
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < latest.len(),
        "the stream should have both inactive and active leads: {} of {}",
        expected.len(),
        latest.len()
    );

    let (task, metrics) = common::spawn_pipeline(&config, store.clone(), Duration::from_secs(6));
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.dead_lettered, 0);

    let mut erased = BTreeSet::new();
    for id in latest.keys() {
        let state = store.get_lead(id).await.unwrap().unwrap();
        if let Some(at) = state.erased_at {
            erased.insert(id.as_str());
            // Erased as of the instant its retention ran out, keeping nothing personal.
            assert_eq!(at, latest[id] + period, "{id}");
            assert!(
                state.email.is_none() && state.consent_ledger.is_empty(),
                "{id}"
            );
            let audit = store.audit_of(id).await.unwrap();
            assert!(
                audit
                    .iter()
                    .any(|a| a.action == "erase_requested" && a.actor == "retention"),
                "{id}: {audit:?}"
            );
            assert!(
                audit.iter().any(|a| a.action == "erased"),
                "{id}: {audit:?}"
            );
        }
    }
    assert_eq!(erased, expected);
    assert_eq!(
        store.lead_count().await.unwrap() as usize,
        latest.len() - expected.len()
    );
    let applied = metrics.value("leadflow_gdpr_erasures_total", &[]);
    assert_eq!(applied as usize, expected.len());
    assert!(metrics.value("leadflow_gdpr_retention_erasures_total", &[]) >= applied);
}

backend_tests!(retention_erases_the_leads_inactive_past_the_period);
