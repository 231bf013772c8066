//! Prometheus metrics of the processor, served at `/metrics`.
//!
//! One registry per processor (not the global one), so tests and several
//! pipelines in one process do not mix their counts.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_applied: IntCounter,
    pub events_duplicate: IntCounter,
    pub outputs_written: IntCounter,
    pub dead_letters: IntCounterVec,
    pub batch_commit_seconds: Histogram,
    pub batch_events: Histogram,
    pub store_retries: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub outbox_depth: IntGauge,
    pub outputs_published: IntCounterVec,
    pub relay_errors: IntCounter,
    pub model_version: IntGauge,
    pub model_swaps: IntCounter,
    pub feature_psi: GaugeVec,
    pub model_retrains: IntCounterVec,
    pub timers_fired: IntCounter,
    pub notify_messages: IntCounterVec,
    pub notify_retries: IntCounterVec,
    pub notify_provider_seconds: HistogramVec,
    pub notify_rate_limit_waits: IntCounterVec,
    pub notify_rate_limit_wait_seconds: prometheus::CounterVec,
    pub notify_dedupe_hits: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            registry
                .register(Box::new(process))
                .expect("process collector");
        }
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "leadflow_consumer_lag",
                "Messages between the partition's high watermark and the next offset to apply",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let feature_psi = GaugeVec::new(
            Opts::new(
                "leadflow_model_feature_psi",
                "Population stability index of each model feature: recent traffic against the active model's reference",
            ),
            &["feature"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(feature_psi.clone()))
            .expect("unique metric");
        Metrics {
            events_consumed: counter_vec(
                &registry,
                "leadflow_events_consumed_total",
                "Messages read from an input topic",
                &["topic"],
            ),
            events_applied: counter(
                &registry,
                "leadflow_events_applied_total",
                "Input events applied to lead state",
            ),
            events_duplicate: counter(
                &registry,
                "leadflow_events_duplicate_total",
                "Input events skipped because their event_id had been applied already",
            ),
            outputs_written: counter(
                &registry,
                "leadflow_outputs_written_total",
                "Output events written to the outbox",
            ),
            timers_fired: counter(
                &registry,
                "leadflow_nurture_timers_fired_total",
                "Leads whose due nurturing timers a tick fired (a message, a postponement, a skip or a reactivation)",
            ),
            dead_letters: counter_vec(
                &registry,
                "leadflow_dead_letters_total",
                "Messages sent to the dead-letter topic, by reason",
                &["reason"],
            ),
            batch_commit_seconds: histogram(
                &registry,
                "leadflow_batch_commit_duration_seconds",
                "Time to apply a batch and commit it to the store",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets"),
            ),
            batch_events: histogram(
                &registry,
                "leadflow_batch_events",
                "Input events per committed batch",
                prometheus::exponential_buckets(1.0, 2.0, 14).expect("buckets"),
            ),
            store_retries: counter(
                &registry,
                "leadflow_store_retries_total",
                "Store operations retried after a transient failure",
            ),
            consumer_lag,
            assigned_partitions: gauge(
                &registry,
                "leadflow_assigned_partitions",
                "Input topic-partitions assigned to this instance",
            ),
            outbox_depth: gauge(
                &registry,
                "leadflow_outbox_depth",
                "Output events not yet acknowledged by the broker",
            ),
            outputs_published: counter_vec(
                &registry,
                "leadflow_outputs_published_total",
                "Output events published and acknowledged, by topic",
                &["topic"],
            ),
            relay_errors: counter(
                &registry,
                "leadflow_outbox_relay_errors_total",
                "Failed attempts to publish outbox rows (retried)",
            ),
            model_version: gauge(
                &registry,
                "leadflow_model_active_version",
                "Registry version of the model scoring leads (0: rules only)",
            ),
            model_swaps: counter(
                &registry,
                "leadflow_model_swaps_total",
                "Times this processor switched to a newly activated model",
            ),
            feature_psi,
            model_retrains: counter_vec(
                &registry,
                "leadflow_model_retrains_total",
                "Retraining runs started by this processor, by reason and result",
                &["reason", "result"],
            ),
            notify_messages: counter_vec(
                &registry,
                "leadflow_notify_messages_total",
                "Outbound messages handled by `leadflow notify`, by channel, template and \
                 outcome (sent, failed, bounced, dropped)",
                &["channel", "template", "outcome"],
            ),
            notify_retries: counter_vec(
                &registry,
                "leadflow_notify_retries_total",
                "Provider requests repeated after a 429, a 5xx or a timeout",
                &["channel", "template"],
            ),
            notify_provider_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "leadflow_notify_provider_request_seconds",
                        "Latency of provider API requests, by provider and HTTP status class",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["provider", "status"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            notify_rate_limit_waits: counter_vec(
                &registry,
                "leadflow_notify_rate_limit_waits_total",
                "Sends that waited for the channel's rate limit",
                &["channel"],
            ),
            notify_rate_limit_wait_seconds: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "leadflow_notify_rate_limit_wait_seconds_total",
                        "Time sends spent waiting for the channel's rate limit",
                    ),
                    &["channel"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            notify_dedupe_hits: counter(
                &registry,
                "leadflow_notify_dedupe_hits_total",
                "Outbound messages skipped because their message_id was already handled",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
