//! The delivery worker's settings (`[notify]`): providers, retries and
//! recipient caps, checked at start-up like the rest of the configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The worker's consumer group (not the processor's).
    pub group_id: String,
    /// Address of the worker's `/metrics`, `/health` and `/ready`.
    pub http_listen: String,
    /// Messages handled at once, over all partitions. A message waiting for
    /// a retry holds one; the others go on.
    pub max_in_flight: usize,
    /// How long a worker's claim on a message lasts before another worker
    /// may take it over (renewed before every provider request).
    pub claim_lease_ms: u64,
    /// Timeout of one provider request; a hanging connection counts as a
    /// transient failure.
    pub request_timeout_ms: u64,
    pub retry: RetryConfig,
    pub recipient_cap: RecipientCap,
    pub sendgrid: SendGridConfig,
    pub twilio: TwilioConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            group_id: "leadflow-notify".into(),
            http_listen: "127.0.0.1:9465".into(),
            max_in_flight: 64,
            claim_lease_ms: 60_000,
            request_timeout_ms: 10_000,
            retry: RetryConfig::default(),
            recipient_cap: RecipientCap::default(),
            sendgrid: SendGridConfig::default(),
            twilio: TwilioConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Provider requests per message, the first included; after the last
    /// the message is reported failed and dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 6,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

/// At most `max_messages` sent to one address in `window_hours`, whatever
/// sequence they come from; more are dropped with a reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientCap {
    pub max_messages: u32,
    pub window_hours: u32,
}

impl Default for RecipientCap {
    fn default() -> Self {
        RecipientCap {
            max_messages: 3,
            window_hours: 24,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendGridConfig {
    pub base_url: String,
    /// Also `SENDGRID_API_KEY`.
    pub api_key: String,
    pub from_email: String,
    pub from_name: String,
    /// The account's limit: requests per second.
    pub rate_per_second: u32,
    /// Our template name → SendGrid dynamic template id (`d-…`).
    pub templates: BTreeMap<String, String>,
}

impl Default for SendGridConfig {
    fn default() -> Self {
        SendGridConfig {
            base_url: "https://api.sendgrid.com".into(),
            api_key: String::new(),
            from_email: String::new(),
            from_name: String::new(),
            rate_per_second: 100,
            templates: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    pub base_url: String,
    /// Also `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// Also `TWILIO_AUTH_TOKEN`.
    pub auth_token: String,
    /// The sending number (E.164), or
    pub from: String,
    /// a Messaging Service (`MG…`), which Twilio prefers when both are set.
    pub messaging_service_sid: String,
    pub rate_per_second: u32,
    /// Our template name → message body; `{{field}}` is replaced by the
    /// message's data field.
    pub templates: BTreeMap<String, String>,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: String::new(),
            from: String::new(),
            messaging_service_sid: String::new(),
            rate_per_second: 10,
            templates: BTreeMap::from([(
                "high_priority_followup".to_string(),
                "Hi {{first_name}}, following up on your interest in us: \
                 when would suit you for a short call? Reply STOP to opt out."
                    .to_string(),
            )]),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl NotifyConfig {
    /// What `leadflow notify` needs before it starts; `run` does not check
    /// it, a processor needs no provider credentials.
    pub fn check(&self) -> Result<(), ConfigError> {
        let sg = &self.sendgrid;
        let tw = &self.twilio;
        let required = [
            (
                "notify.sendgrid.api_key",
                &sg.api_key,
                "empty: set it or SENDGRID_API_KEY",
            ),
            (
                "notify.sendgrid.from_email",
                &sg.from_email,
                "empty: the sender address SendGrid has verified",
            ),
            (
                "notify.twilio.account_sid",
                &tw.account_sid,
                "empty: set it or TWILIO_ACCOUNT_SID",
            ),
            (
                "notify.twilio.auth_token",
                &tw.auth_token,
                "empty: set it or TWILIO_AUTH_TOKEN",
            ),
        ];
        for (key, value, reason) in required {
            if value.trim().is_empty() {
                return Err(invalid(key, reason));
            }
        }
        if tw.from.trim().is_empty() && tw.messaging_service_sid.trim().is_empty() {
            return Err(invalid(
                "notify.twilio.from",
                "set a sending number or notify.twilio.messaging_service_sid",
            ));
        }
        for (key, url) in [
            ("notify.sendgrid.base_url", &sg.base_url),
            ("notify.twilio.base_url", &tw.base_url),
        ] {
            if let Err(e) = reqwest::Url::parse(url) {
                return Err(invalid(key, format!("not a URL ({e})")));
            }
        }
        for (key, rate) in [
            ("notify.sendgrid.rate_per_second", sg.rate_per_second),
            ("notify.twilio.rate_per_second", tw.rate_per_second),
        ] {
            if rate == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("notify.retry.max_attempts", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("notify.max_in_flight", "must be at least 1"));
        }
        for (name, id) in &sg.templates {
            if id.trim().is_empty() {
                return Err(invalid(
                    &format!("notify.sendgrid.templates.{name}"),
                    "empty template id",
                ));
            }
        }
        for (name, body) in &tw.templates {
            if let Err(reason) = crate::templates::placeholders(body) {
                return Err(invalid(&format!("notify.twilio.templates.{name}"), reason));
            }
        }
        Ok(())
    }
}
