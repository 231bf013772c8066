//! Prometheus metrics of the processor and the delivery worker, served at
//! `/metrics`.
//!
//! Every metric is declared once, here, with its name and help. Nothing
//! outside this module writes one: code reports what happened by emitting
//! an [`internal_events`] struct, which logs it and counts it, so a log
//! line and its counter cannot drift apart. Readers (the readiness probe,
//! tests, benches) use [`Metrics::value`] with the exposed name, the same
//! name an SRE queries.
//!
//! One registry per processor (not the global one), so tests and several
//! pipelines in one process do not mix their counts.

pub mod internal_events;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use internal_events::InternalEvent;

pub struct Metrics {
    registry: Registry,
    /// Every metric registered here by its name, for [`Metrics::value`]:
    /// it collects only the one asked for (a benchmark polls it every few
    /// milliseconds, and a full gather reads /proc) and refuses a typo.
    by_name: Vec<(String, Box<dyn Collector>)>,
    events_consumed: IntCounterVec,
    consumer_errors: IntCounterVec,
    log_discontinuities: IntCounterVec,
    events_applied: IntCounter,
    events_duplicate: IntCounter,
    events_dropped_erased: IntCounter,
    leads_erased: IntCounter,
    retention_erasures: IntCounter,
    retention_failures: IntCounter,
    messages_shredded: IntCounter,
    outputs_written: IntCounter,
    dead_letters: IntCounterVec,
    batch_commit_seconds: Histogram,
    batch_events: Histogram,
    store_retries: IntCounter,
    consumer_lag: IntGaugeVec,
    assigned_partitions: IntGauge,
    outbox_depth: IntGauge,
    outputs_published: IntCounterVec,
    relay_errors: IntCounter,
    model_version: IntGauge,
    model_swaps: IntCounter,
    feature_psi: GaugeVec,
    model_retrains: IntCounterVec,
    timers_fired: IntCounter,
    forecasts_made: IntCounterVec,
    forecasts_not_made: IntCounterVec,
    forecast_last_slot: IntGauge,
    forecast_slots_skipped: IntCounter,
    analytics_days: IntCounter,
    analytics_rows: IntCounter,
    api_requests: IntCounterVec,
    api_request_seconds: HistogramVec,
    api_rate_limited: IntCounterVec,
    notify_messages: IntCounterVec,
    notify_retries: IntCounterVec,
    notify_provider_seconds: HistogramVec,
    notify_rate_limit_waits: IntCounterVec,
    notify_rate_limit_wait_seconds: CounterVec,
    notify_dedupe_hits: IntCounter,
}

/// The registry being filled, and what was registered so far by name.
struct Registrar {
    registry: Registry,
    by_name: Vec<(String, Box<dyn Collector>)>,
}

/// Registers `collector` and hands it back. Names are fixed strings of this
/// module, so a failure is a programming error caught by any test.
fn register<C: Collector + Clone + 'static>(r: &mut Registrar, collector: C) -> C {
    for desc in collector.desc() {
        r.by_name
            .push((desc.fq_name.clone(), Box::new(collector.clone())));
    }
    r.registry
        .register(Box::new(collector.clone()))
        .expect("unique, valid metric");
    collector
}

fn counter(r: &mut Registrar, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &mut Registrar, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(r, c)
}

fn gauge(r: &mut Registrar, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(r: &mut Registrar, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    register(r, h)
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = &mut Registrar {
            registry: Registry::new(),
            by_name: Vec::new(),
        };
        #[cfg(target_os = "linux")]
        r.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        Metrics {
            events_consumed: counter_vec(
                r,
                "leadflow_events_consumed_total",
                "Messages read from an input topic",
                &["topic"],
            ),
            consumer_errors: counter_vec(
                r,
                "leadflow_consumer_errors_total",
                "Errors the Kafka consumer reported while fetching (the consumer retries)",
                &["consumer"],
            ),
            log_discontinuities: counter_vec(
                r,
                "leadflow_log_discontinuities_total",
                "Assigned partitions whose first message was not at the stored offset \
                 (topic recreated, data lost or expired)",
                &["topic"],
            ),
            events_applied: counter(
                r,
                "leadflow_events_applied_total",
                "Input events applied to lead state",
            ),
            events_duplicate: counter(
                r,
                "leadflow_events_duplicate_total",
                "Input events skipped because their event_id had been applied already",
            ),
            events_dropped_erased: counter(
                r,
                "leadflow_events_dropped_erased_total",
                "Input events dropped because their lead had been erased (GDPR)",
            ),
            leads_erased: counter(
                r,
                "leadflow_gdpr_erasures_total",
                "Leads erased by the processor (GDPR), each applied once",
            ),
            retention_erasures: counter(
                r,
                "leadflow_gdpr_retention_erasures_total",
                "Erasures of leads inactive past gdpr.inactive_retention_days, published",
            ),
            retention_failures: counter(
                r,
                "leadflow_gdpr_retention_failures_total",
                "Retention sweeps stopped because an erasure could not be published",
            ),
            messages_shredded: counter(
                r,
                "leadflow_gdpr_messages_shredded_total",
                "Outbound messages not published or not sent: their lead's data key was shredded by its erasure",
            ),
            outputs_written: counter(
                r,
                "leadflow_outputs_written_total",
                "Output events written to the outbox",
            ),
            timers_fired: counter(
                r,
                "leadflow_nurture_timers_fired_total",
                "Leads whose due nurturing timers a tick fired (a message, a postponement, a skip or a reactivation)",
            ),
            forecasts_made: counter_vec(
                r,
                "leadflow_forecasts_total",
                "Scheduled forecasts made and written to the outbox, by kind",
                &["kind"],
            ),
            forecasts_not_made: counter_vec(
                r,
                "leadflow_forecasts_not_made_total",
                "Scheduled forecasts the data did not allow yet (too short a series, too few wins), by kind",
                &["kind"],
            ),
            forecast_last_slot: gauge(
                r,
                "leadflow_forecast_last_slot_timestamp_seconds",
                "The slot of the latest scheduled forecasts this instance made, as a Unix time",
            ),
            forecast_slots_skipped: counter(
                r,
                "leadflow_forecast_slots_skipped_total",
                "Missed forecast slots older than forecast.backfill_slots, not made up",
            ),
            analytics_days: counter(
                r,
                "leadflow_analytics_days_total",
                "Days of the analytics history stored in lead_analytics",
            ),
            analytics_rows: counter(
                r,
                "leadflow_analytics_rows_total",
                "Rows of the analytics history stored in lead_analytics",
            ),
            api_requests: counter_vec(
                r,
                "leadflow_api_requests_total",
                "REST API requests answered, by route and HTTP status",
                &["route", "status"],
            ),
            api_request_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "leadflow_api_request_seconds",
                        "Time to answer a REST API request, by route",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            api_rate_limited: counter_vec(
                r,
                "leadflow_api_rate_limited_total",
                "REST API requests refused with 429 by the per-key rate limit, by scope",
                &["scope"],
            ),
            dead_letters: counter_vec(
                r,
                "leadflow_dead_letters_total",
                "Messages sent to the dead-letter topic, by reason",
                &["reason"],
            ),
            batch_commit_seconds: histogram(
                r,
                "leadflow_batch_commit_duration_seconds",
                "Time to apply a batch and commit it to the store",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets"),
            ),
            batch_events: histogram(
                r,
                "leadflow_batch_events",
                "Input events per committed batch",
                prometheus::exponential_buckets(1.0, 2.0, 14).expect("buckets"),
            ),
            store_retries: counter(
                r,
                "leadflow_store_retries_total",
                "Store operations retried after a transient failure",
            ),
            consumer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "leadflow_consumer_lag",
                        "Messages between the partition's high watermark and the next offset to apply",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric"),
            ),
            assigned_partitions: gauge(
                r,
                "leadflow_assigned_partitions",
                "Input topic-partitions assigned to this instance",
            ),
            outbox_depth: gauge(
                r,
                "leadflow_outbox_depth",
                "Output events not yet acknowledged by the broker",
            ),
            outputs_published: counter_vec(
                r,
                "leadflow_outputs_published_total",
                "Output events published and acknowledged, by topic",
                &["topic"],
            ),
            relay_errors: counter(
                r,
                "leadflow_outbox_relay_errors_total",
                "Failed attempts to publish outbox rows (retried)",
            ),
            model_version: gauge(
                r,
                "leadflow_model_active_version",
                "Registry version of the model scoring leads (0: rules only)",
            ),
            model_swaps: counter(
                r,
                "leadflow_model_swaps_total",
                "Times this processor switched to a newly activated model",
            ),
            feature_psi: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "leadflow_model_feature_psi",
                        "Population stability index of each model feature: recent traffic against the active model's reference",
                    ),
                    &["feature"],
                )
                .expect("valid metric"),
            ),
            model_retrains: counter_vec(
                r,
                "leadflow_model_retrains_total",
                "Retraining runs started by this processor, by reason and result",
                &["reason", "result"],
            ),
            notify_messages: counter_vec(
                r,
                "leadflow_notify_messages_total",
                "Outbound messages handled by `leadflow notify`, by channel, template and \
                 outcome (sent, failed, bounced, dropped)",
                &["channel", "template", "outcome"],
            ),
            notify_retries: counter_vec(
                r,
                "leadflow_notify_retries_total",
                "Provider requests repeated after a 429, a 5xx or a timeout",
                &["channel", "template"],
            ),
            notify_provider_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "leadflow_notify_provider_request_seconds",
                        "Latency of provider API requests, by provider and HTTP status class",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["provider", "status"],
                )
                .expect("valid metric"),
            ),
            notify_rate_limit_waits: counter_vec(
                r,
                "leadflow_notify_rate_limit_waits_total",
                "Sends that waited for the channel's rate limit",
                &["channel"],
            ),
            notify_rate_limit_wait_seconds: register(
                r,
                CounterVec::new(
                    Opts::new(
                        "leadflow_notify_rate_limit_wait_seconds_total",
                        "Time sends spent waiting for the channel's rate limit",
                    ),
                    &["channel"],
                )
                .expect("valid metric"),
            ),
            notify_dedupe_hits: counter(
                r,
                "leadflow_notify_dedupe_hits_total",
                "Outbound messages skipped because their message_id was already handled",
            ),
            // Last: the fields above are evaluated first and fill `r`.
            registry: r.registry.clone(),
            by_name: std::mem::take(&mut r.by_name),
        }
    }

    /// Logs and counts `event`.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }

    /// The value of the metric exposed as `name`, summed over the series
    /// whose labels include every pair of `labels` (a histogram counts its
    /// observations). 0 for a series never written.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Some((_, collector)) = self.by_name.iter().find(|(n, _)| n == name) else {
            panic!("no metric is named {name}");
        };
        let families = collector.collect();
        // A labelled metric with no series yet has no samples.
        let Some(family) = families.iter().find(|f| f.name() == name) else {
            return 0.0;
        };
        family
            .get_metric()
            .iter()
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|pair| pair.name() == *k && pair.value() == *v)
                })
            })
            .map(|m| match family.get_field_type() {
                MetricType::COUNTER => m.get_counter().value(),
                MetricType::GAUGE => m.get_gauge().value(),
                MetricType::HISTOGRAM => m.get_histogram().sample_count() as f64,
                _ => 0.0,
            })
            .sum()
    }

    /// Whether this instance owns partitions (the readiness probe).
    pub fn has_assigned_partitions(&self) -> bool {
        self.assigned_partitions.get() > 0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::internal_events::{BatchCommitted, DeadLettered, PartitionsRevoked, ProviderRetry};
    use super::*;

    #[test]
    fn an_event_counts_what_it_reports() {
        let m = Metrics::new();
        m.emit(BatchCommitted {
            events: 7,
            applied: 4,
            duplicates: 1,
            dropped_after_erasure: 2,
            erased: 1,
            outputs: 3,
            duration: Duration::from_millis(12),
        });
        assert_eq!(m.value("leadflow_events_applied_total", &[]), 4.0);
        assert_eq!(m.value("leadflow_events_duplicate_total", &[]), 1.0);
        assert_eq!(m.value("leadflow_events_dropped_erased_total", &[]), 2.0);
        assert_eq!(m.value("leadflow_gdpr_erasures_total", &[]), 1.0);
        assert_eq!(m.value("leadflow_outbox_depth", &[]), 3.0);
        assert_eq!(
            m.value("leadflow_batch_events", &[]),
            1.0,
            "one observation"
        );
        for reason in ["invalid_message", "invalid_message", "schema_mismatch"] {
            m.emit(DeadLettered {
                topic: "lead-events",
                partition: 0,
                offset: 7,
                reason,
                error: "bad",
            });
        }
        assert_eq!(m.value("leadflow_dead_letters_total", &[]), 3.0);
        assert_eq!(
            m.value(
                "leadflow_dead_letters_total",
                &[("reason", "invalid_message")]
            ),
            2.0
        );
        assert_eq!(
            m.value("leadflow_dead_letters_total", &[("reason", "other")]),
            0.0
        );
    }

    #[test]
    fn value_sums_the_series_that_match_and_reads_unwritten_ones_as_zero() {
        let m = Metrics::new();
        assert_eq!(m.value("leadflow_notify_retries_total", &[]), 0.0);
        for template in ["welcome", "welcome", "reminder"] {
            m.emit(ProviderRetry {
                message_id: "m",
                channel: "email",
                template,
                attempt: 1,
                error: &"503",
                retry_in: Duration::from_millis(1),
            });
        }
        assert_eq!(
            m.value("leadflow_notify_retries_total", &[("channel", "email")]),
            3.0
        );
        assert_eq!(
            m.value(
                "leadflow_notify_retries_total",
                &[("channel", "email"), ("template", "welcome")]
            ),
            2.0
        );
        m.emit(internal_events::PartitionsAssigned { partitions: 3 });
        assert!(m.has_assigned_partitions());
        m.emit(PartitionsRevoked {
            partitions: 3,
            error: None,
        });
        assert!(!m.has_assigned_partitions());
    }

    #[test]
    #[should_panic(expected = "no metric is named leadflow_typo_total")]
    fn value_refuses_a_name_that_was_never_declared() {
        Metrics::new().value("leadflow_typo_total", &[]);
    }
}
