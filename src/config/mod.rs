//! Configuration: a TOML file (every key optional, unknown keys refused)
//! plus environment overrides.
//!
//! Overrides, applied in this order on top of the file:
//! - `LEADFLOW__<SECTION>__<KEY>=value` sets any key (`__` separates path
//!   segments; the value is read as a TOML value when it parses as one, else
//!   as a string, and taken as typed for a key that holds a string), e.g.
//!   `LEADFLOW__KAFKA__GROUP_ID=leadflow-eu`.
//! - `DATABASE_URL` sets `database.url`; `KAFKA_BOOTSTRAP_SERVERS` sets
//!   `kafka.bootstrap_servers`; `SENDGRID_API_KEY`, `TWILIO_ACCOUNT_SID` and
//!   `TWILIO_AUTH_TOKEN` set the delivery worker's credentials (the names
//!   operators already use).
//!
//! Every error names the key and the reason, so start-up stops with a message
//! the operator can act on.
//!
//! One file past 600 lines on purpose: every section's keys and their
//! validation, so that one file says what a configuration may contain.

pub mod analytics;
pub mod api;
pub mod forecast;
pub mod gdpr;
pub mod notify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::nurture::sequences::{SequenceError, SequenceSet};
use crate::core::nurture::{NurtureConfig, Sequences};
use crate::events::InputStream;
use crate::ml::ScoringConfig;

pub const ENV_PREFIX: &str = "LEADFLOW__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}: key `{key}`: {reason}")]
    Env {
        var: String,
        key: String,
        reason: String,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("nurturing sequences (nurture.sequences_file): {0}")]
    Sequences(#[from] SequenceError),
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub database: DatabaseConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub processor: ProcessorConfig,
    pub http: HttpConfig,
    pub scoring: ScoringConfig,
    pub nurture: NurtureConfig,
    pub notify: notify::NotifyConfig,
    pub forecast: forecast::ForecastConfig,
    pub analytics: analytics::AnalyticsConfig,
    pub gdpr: gdpr::GdprConfig,
    pub api: api::ApiConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/health`, `/ready` and the REST API.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Partitions for topics that `leadflow topics create` makes. The input
    /// topics (with `message-deliveries`) must share one count: they are
    /// co-partitioned.
    pub partitions: i32,
    pub replication_factor: i32,
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties for every client (security, SASL, ...).
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "leadflow".into(),
            partitions: 6,
            replication_factor: 1,
            session_timeout_ms: 45_000,
            client: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub leads: String,
    pub interactions: String,
    pub stage_changes: String,
    pub scores: String,
    pub outbound: String,
    pub deliveries: String,
    pub forecasts: String,
    pub dlq: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            leads: "leads".into(),
            interactions: "lead-interactions".into(),
            stage_changes: "lead-stage-changes".into(),
            scores: "lead-scores".into(),
            outbound: "outbound-messages".into(),
            deliveries: "message-deliveries".into(),
            forecasts: "lead-forecasts".into(),
            dlq: "leadflow-dlq".into(),
        }
    }
}

impl TopicsConfig {
    pub fn input(&self, stream: InputStream) -> &str {
        match stream {
            InputStream::Leads => &self.leads,
            InputStream::Interactions => &self.interactions,
            InputStream::StageChanges => &self.stage_changes,
            InputStream::Deliveries => &self.deliveries,
        }
    }

    pub fn stream_of(&self, topic: &str) -> Option<InputStream> {
        InputStream::ALL
            .into_iter()
            .find(|s| self.input(*s) == topic)
    }

    /// Every topic with the key whose value it is, for checks and admin.
    pub fn all(&self) -> [(&'static str, &str); 8] {
        [
            ("topics.leads", &self.leads),
            ("topics.interactions", &self.interactions),
            ("topics.stage_changes", &self.stage_changes),
            ("topics.scores", &self.scores),
            ("topics.outbound", &self.outbound),
            ("topics.deliveries", &self.deliveries),
            ("topics.forecasts", &self.forecasts),
            ("topics.dlq", &self.dlq),
        ]
    }

    /// Prefixes every topic name; tests use this to isolate themselves on a shared broker.
    pub fn with_prefix(&self, prefix: &str) -> TopicsConfig {
        let p = |t: &str| format!("{prefix}{t}");
        TopicsConfig {
            leads: p(&self.leads),
            interactions: p(&self.interactions),
            stage_changes: p(&self.stage_changes),
            scores: p(&self.scores),
            outbound: p(&self.outbound),
            deliveries: p(&self.deliveries),
            forecasts: p(&self.forecasts),
            dlq: p(&self.dlq),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (embedded default) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/leadflow.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL of a Confluent-compatible registry; empty means none, and
    /// leadflow writes Avro single-object encoding instead.
    pub url: String,
    pub timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Most events applied and committed in one database transaction.
    pub batch_size: usize,
    /// Longest wait for a batch to fill before it is applied anyway.
    pub batch_linger_ms: u64,
    /// Recent event ids remembered per lead to drop re-delivered events.
    pub dedup_window: usize,
    /// Longest a partition group waits for an empty input stream before it
    /// applies the others without it (see `pipeline::merge`).
    pub max_merge_wait_ms: u64,
    /// Largest input value accepted; a larger one is dead-lettered as `too_large`.
    pub max_message_bytes: usize,
    /// Largest dead letter written (key, value and headers); a larger one
    /// is cut to fit, with headers saying so. At most the DLQ topic's
    /// `max.message.bytes`; the producer's `message.max.bytes` is raised to it.
    pub dead_letter_max_bytes: usize,
    /// Events dated earlier than this (RFC 3339) are dead-lettered as
    /// `event_time_out_of_range`: seconds sent as milliseconds land in 1970.
    pub earliest_event_time: String,
    /// Events dated more than this after their record's Kafka timestamp are
    /// dead-lettered as `event_time_out_of_range` (microseconds, year 9999).
    pub max_event_time_ahead_ms: u64,
    /// Messages over which the share of dead letters is measured.
    pub dead_letter_window: usize,
    /// Share of the window that may be dead letters before the processor
    /// stops as misconfigured.
    pub dead_letter_max_ratio: f64,
    /// The clock nurturing timers follow: `wall` (production), or
    /// `event_time` (each partition's clock is the latest event time applied
    /// in it, as in a replay; for backfills and deterministic runs).
    pub clock: ClockMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    #[default]
    Wall,
    EventTime,
}

impl ProcessorConfig {
    /// `earliest_event_time` as milliseconds (checked at start-up).
    pub fn earliest_event_time_millis(&self) -> crate::events::Millis {
        crate::events::timestamp::parse_rfc3339(&self.earliest_event_time).unwrap_or(0)
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            batch_size: 500,
            batch_linger_ms: 100,
            dedup_window: 64,
            max_merge_wait_ms: 2_000,
            max_message_bytes: 1_048_576,
            dead_letter_max_bytes: 1_000_000,
            earliest_event_time: "2000-01-01T00:00:00Z".into(),
            max_event_time_ahead_ms: 86_400_000,
            dead_letter_window: 1_000,
            dead_letter_max_ratio: 0.5,
            clock: ClockMode::Wall,
        }
    }
}

impl Config {
    /// Loads `path` (or the built-in defaults when `None`) and applies the
    /// process environment on top.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    pub fn load_with_env(
        path: Option<&Path>,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "<defaults>".into());
        Self::from_toml_with_env(&text, &origin, vars)
    }

    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        // Parse the file alone first: toml's errors then carry the line and column.
        let from_file: Config = toml::from_str(text).map_err(|e| ConfigError::File {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let overrides = env_overrides(vars);
        let config = if overrides.is_empty() {
            from_file
        } else {
            let mut tree = toml::Value::try_from(&from_file).map_err(|e| ConfigError::File {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
            for o in &overrides {
                set_path(&mut tree, &o.path, o.value.clone(), &o.raw).map_err(|reason| {
                    ConfigError::Env {
                        var: o.var.clone(),
                        key: o.path.join("."),
                        reason,
                    }
                })?;
            }
            serde_path_to_error::deserialize(tree).map_err(|e| {
                let key = e.path().to_string();
                let var = overrides
                    .iter()
                    .rev()
                    .find(|o| {
                        key.starts_with(&o.path.join(".")) || o.path.join(".").starts_with(&key)
                    })
                    .map(|o| o.var.clone())
                    .unwrap_or_else(|| "(environment)".into());
                ConfigError::Env {
                    var,
                    key,
                    reason: e.into_inner().to_string(),
                }
            })?
        };
        let mut config = config;
        config.validate()?;
        config.load_sequences(origin)?;
        Ok(config)
    }

    /// Reads and checks `nurture.sequences_file` (relative to the config
    /// file's directory); the built-in sequences when it is empty.
    fn load_sequences(&mut self, origin: &Path) -> Result<(), ConfigError> {
        let file = self.nurture.sequences_file.trim();
        if file.is_empty() {
            return Ok(());
        }
        let path = Path::new(file);
        let path = match origin.parent() {
            Some(dir) if path.is_relative() && origin.is_file() => dir.join(path),
            _ => path.to_path_buf(),
        };
        self.nurture.sequences = Sequences(std::sync::Arc::new(SequenceSet::load(&path)?));
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if k.partitions < 1 {
            return Err(invalid(
                "kafka.partitions",
                format!("{} is less than 1", k.partitions),
            ));
        }
        if k.replication_factor < 1 {
            return Err(invalid(
                "kafka.replication_factor",
                format!("{} is less than 1", k.replication_factor),
            ));
        }
        if !(1_000..=3_600_000).contains(&k.session_timeout_ms) {
            return Err(invalid(
                "kafka.session_timeout_ms",
                format!("{} is outside 1000..=3600000", k.session_timeout_ms),
            ));
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, topic) in self.topics.all() {
            if let Err(reason) = check_topic_name(topic) {
                return Err(invalid(key, reason));
            }
            if let Some(other) = seen.insert(topic, key) {
                return Err(invalid(
                    key,
                    format!("`{topic}` is already used by {other}"),
                ));
            }
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                format!("`{url}` is neither sqlite://... nor postgres://..."),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        let registry = &self.schema_registry.url;
        if !(registry.is_empty()
            || registry.starts_with("http://")
            || registry.starts_with("https://"))
        {
            return Err(invalid(
                "schema_registry.url",
                format!("`{registry}` is not an http:// or https:// URL"),
            ));
        }
        let p = &self.processor;
        if p.batch_size == 0 {
            return Err(invalid("processor.batch_size", "must be at least 1"));
        }
        if p.batch_linger_ms > 60_000 {
            return Err(invalid(
                "processor.batch_linger_ms",
                format!("{} ms is more than a minute", p.batch_linger_ms),
            ));
        }
        if p.dedup_window == 0 {
            return Err(invalid("processor.dedup_window", "must be at least 1"));
        }
        if p.max_merge_wait_ms > 600_000 {
            return Err(invalid(
                "processor.max_merge_wait_ms",
                format!("{} ms is more than ten minutes", p.max_merge_wait_ms),
            ));
        }
        if p.max_message_bytes < 1_024 {
            return Err(invalid(
                "processor.max_message_bytes",
                format!("{} is less than 1024", p.max_message_bytes),
            ));
        }
        if p.dead_letter_max_bytes < 4_096 {
            return Err(invalid(
                "processor.dead_letter_max_bytes",
                format!("{} is less than 4096", p.dead_letter_max_bytes),
            ));
        }
        if let Err(e) = crate::events::timestamp::parse_rfc3339(&p.earliest_event_time) {
            return Err(invalid("processor.earliest_event_time", e));
        }
        if p.dead_letter_window == 0 {
            return Err(invalid(
                "processor.dead_letter_window",
                "must be at least 1",
            ));
        }
        if !(p.dead_letter_max_ratio > 0.0 && p.dead_letter_max_ratio <= 1.0) {
            return Err(invalid(
                "processor.dead_letter_max_ratio",
                format!("{} is outside (0, 1]", p.dead_letter_max_ratio),
            ));
        }
        if let Err(e) = self.http.listen.parse::<std::net::SocketAddr>() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not host:port: {e}", self.http.listen),
            ));
        }
        self.scoring
            .validate()
            .map_err(|(key, reason)| invalid(&format!("scoring.{key}"), reason))?;
        self.nurture
            .validate()
            .map_err(|(key, reason)| invalid(&format!("nurture.{key}"), reason))?;
        self.forecast.check()?;
        self.analytics.check()?;
        self.gdpr.check()?;
        self.api.check()
    }
}

/// Kafka's own rule: 1..=249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!("topic name `{name}` must have 1 to 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name `{name}` is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name `{name}` has `{c}`; only A-Z a-z 0-9 . _ - are allowed"
        ));
    }
    Ok(())
}

struct Override {
    var: String,
    path: Vec<String>,
    value: toml::Value,
    /// The variable's text, for a key that holds a string.
    raw: String,
}

fn env_overrides(vars: &[(String, String)]) -> Vec<Override> {
    let mut out = Vec::new();
    let mut prefixed: Vec<&(String, String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order whatever the environment's order is.
    prefixed.sort();
    for (var, value) in [
        ("DATABASE_URL", "database.url"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
        ("SENDGRID_API_KEY", "notify.sendgrid.api_key"),
        ("TWILIO_ACCOUNT_SID", "notify.twilio.account_sid"),
        ("TWILIO_AUTH_TOKEN", "notify.twilio.auth_token"),
    ] {
        if let Some((_, v)) = vars.iter().find(|(k, _)| k == var) {
            out.push(Override {
                var: var.to_string(),
                path: value.split('.').map(str::to_string).collect(),
                value: toml::Value::String(v.clone()),
                raw: v.clone(),
            });
        }
    }
    for (var, raw) in prefixed {
        let path = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        out.push(Override {
            var: var.clone(),
            path,
            value: parse_env_value(raw),
            raw: raw.clone(),
        });
    }
    out
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(
    tree: &mut toml::Value,
    path: &[String],
    value: toml::Value,
    raw: &str,
) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node = tree;
    for segment in parents {
        if segment.is_empty() {
            return Err("empty key segment".into());
        }
        let table = node.as_table_mut().ok_or("is not a table")?;
        node = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| format!("`{}` is not a table", parents.join(".")))?;
    // A string for a key that holds a number in the defaults is kept as the
    // string the user typed, so the type error below quotes it verbatim.
    // The other way round, a key that holds a string takes the text as
    // typed: `+15550000` is a phone number there, not an integer.
    let value = match table.get(last) {
        Some(toml::Value::String(_)) if !value.is_str() => toml::Value::String(raw.to_string()),
        _ => value,
    };
    table.insert(last.clone(), value);
    Ok(())
}
