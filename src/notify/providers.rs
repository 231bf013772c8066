//! The provider APIs, as they document them: SendGrid v3 `mail/send` for
//! email, Twilio's Messages resource for SMS. Each answer is sorted into
//! sent, retry later (429 with its Retry-After, 5xx, timeouts) or rejected
//! for good (a 4xx that will never succeed).

use std::time::Duration;

use serde_json::json;

use crate::events::OutboundMessage;
use crate::templates::render;

use crate::config::notify::{SendGridConfig, TwilioConfig};

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// 429: wait `retry_after` (the provider's, when it said) and try again.
    #[error("rate limited by the provider: {reason}")]
    RateLimited {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// 5xx, a timeout, a refused connection, a bad credential: may succeed later.
    #[error("{0}")]
    Transient(String),
    /// A 4xx that will never succeed. `bounce`: the address itself is bad
    /// (or opted out), so the channel is stopped for the lead.
    #[error("rejected: {reason}")]
    Rejected { reason: String, bounce: bool },
}

pub const SENDGRID: &str = "sendgrid";
pub const TWILIO: &str = "twilio";

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    // The HTTP-date form.
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// SendGrid answers a 429 with `X-RateLimit-Reset` (epoch seconds).
fn sendgrid_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let reset: i64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let wait = reset - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(wait.max(0) as u64))
}

fn transport_error(e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::Transient(format!("timed out: {e}"))
    } else {
        SendError::Transient(format!("request failed: {e}"))
    }
}

/// Text from a provider's answer as it may be stored and reported: at most
/// `max` characters, NULs replaced (PostgreSQL cannot store one, and the
/// processor refuses a DeliveryEvent that carries one).
fn provider_text(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

/// Sorts a non-2xx answer; `rejected` turns the body of a permanent 4xx
/// into a reason and says whether it is a bounce.
fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    rejected: impl Fn(&str) -> (String, bool),
) -> SendError {
    let snippet = provider_text(body, 300);
    match status.as_u16() {
        429 => SendError::RateLimited {
            retry_after: retry_after(headers).or_else(|| sendgrid_reset(headers)),
            reason: format!("HTTP 429: {snippet}"),
        },
        // A bad credential or a suspended account: nothing about this
        // message, and an operator can fix it; retried, then dead-lettered.
        401 | 403 => SendError::Transient(format!("HTTP {status}: {snippet}")),
        408 => SendError::Transient(format!("HTTP 408: {snippet}")),
        400..=499 => {
            let (reason, bounce) = rejected(body);
            SendError::Rejected {
                reason: format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    provider_text(&reason, 1_000)
                ),
                bounce,
            }
        }
        _ => SendError::Transient(format!("HTTP {status}: {snippet}")),
    }
}

pub struct SendGrid {
    http: reqwest::Client,
    config: SendGridConfig,
}

impl SendGrid {
    pub fn new(config: SendGridConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(SendGrid {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            config,
        })
    }

    /// The documented body of `POST /v3/mail/send` with a dynamic template.
    pub fn request_body(&self, message: &OutboundMessage) -> Result<serde_json::Value, SendError> {
        let template_id = self
            .config
            .templates
            .get(&message.template)
            .ok_or_else(|| SendError::Rejected {
                reason: format!(
                    "no SendGrid template id for `{}` (notify.sendgrid.templates)",
                    message.template
                ),
                bounce: false,
            })?;
        let mut to = json!({ "email": message.to });
        let name = [
            message.data.get("first_name"),
            message.data.get("last_name"),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
        if !name.is_empty() {
            to["name"] = json!(name);
        }
        let mut from = json!({ "email": self.config.from_email });
        if !self.config.from_name.is_empty() {
            from["name"] = json!(self.config.from_name);
        }
        Ok(json!({
            "personalizations": [{
                "to": [to],
                "dynamic_template_data": message.data,
                "custom_args": {
                    "message_id": message.message_id,
                    "lead_ext_id": message.lead_ext_id,
                },
            }],
            "from": from,
            "template_id": template_id,
        }))
    }

    pub async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let body = self.request_body(message)?;
        let url = format!(
            "{}/v3/mail/send",
            self.config.base_url.trim_end_matches('/')
        );
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.config.api_key)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            let id = headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok(Receipt {
                provider_message_id: id,
            });
        }
        let text = response.text().await.unwrap_or_default();
        Err(classify(status, &headers, &text, sendgrid_rejection))
    }
}

/// SendGrid's error body: `{"errors": [{"message", "field", "help"}]}`. An
/// error on a recipient's `email` field means the address is bad: a bounce.
fn sendgrid_rejection(body: &str) -> (String, bool) {
    let Ok(parsed) = serde_json::from_str::<serde_json::Value>(body) else {
        return (body.chars().take(300).collect(), false);
    };
    let errors = parsed["errors"].as_array().cloned().unwrap_or_default();
    let mut bounce = false;
    let reasons: Vec<String> = errors
        .iter()
        .map(|e| {
            let field = e["field"].as_str().unwrap_or("");
            if field.starts_with("personalizations") && field.ends_with("email") {
                bounce = true;
            }
            match field {
                "" => e["message"].as_str().unwrap_or("").to_string(),
                f => format!("{f}: {}", e["message"].as_str().unwrap_or("")),
            }
        })
        .collect();
    if reasons.is_empty() {
        return (body.chars().take(300).collect(), false);
    }
    (reasons.join("; "), bounce)
}

pub struct Twilio {
    http: reqwest::Client,
    config: TwilioConfig,
}

/// Twilio error codes that mean the number cannot receive our SMS: invalid
/// `To` (21211), not a mobile number (21614), the recipient opted out (21610).
const TWILIO_BAD_RECIPIENT: [i64; 3] = [21211, 21614, 21610];

impl Twilio {
    pub fn new(config: TwilioConfig, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Twilio {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            config,
        })
    }

    /// The documented form of `POST /2010-04-01/Accounts/{Sid}/Messages.json`.
    pub fn request_form(
        &self,
        message: &OutboundMessage,
    ) -> Result<Vec<(String, String)>, SendError> {
        let template = self
            .config
            .templates
            .get(&message.template)
            .ok_or_else(|| SendError::Rejected {
                reason: format!(
                    "no SMS template for `{}` (notify.twilio.templates)",
                    message.template
                ),
                bounce: false,
            })?;
        let body = render(template, message).map_err(|reason| SendError::Rejected {
            reason,
            bounce: false,
        })?;
        let mut form = vec![("To".to_string(), message.to.clone())];
        if !self.config.messaging_service_sid.is_empty() {
            form.push((
                "MessagingServiceSid".into(),
                self.config.messaging_service_sid.clone(),
            ));
        } else {
            form.push(("From".into(), self.config.from.clone()));
        }
        form.push(("Body".into(), body));
        Ok(form)
    }

    pub async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let form = self.request_form(message)?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_sid
        );
        let response = self
            .http
            .post(url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let sid = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["sid"].as_str().map(|sid| provider_text(sid, 200)));
            return Ok(Receipt {
                provider_message_id: sid,
            });
        }
        Err(classify(status, &headers, &text, twilio_rejection))
    }
}

/// Twilio's error body: `{"code", "message", "more_info", "status"}`.
fn twilio_rejection(body: &str) -> (String, bool) {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v["code"].is_i64() => {
            let code = v["code"].as_i64().unwrap_or(0);
            (
                format!(
                    "Twilio error {code}: {}",
                    v["message"].as_str().unwrap_or("")
                ),
                TWILIO_BAD_RECIPIENT.contains(&code),
            )
        }
        _ => (body.chars().take(300).collect(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::placeholders;

    #[test]
    fn provider_text_is_bounded_and_free_of_nuls() {
        let body = format!(
            r#"{{"code": 21211, "message": "bad\u0000number{}"}}"#,
            "x".repeat(5_000)
        );
        let err = classify(
            reqwest::StatusCode::BAD_REQUEST,
            &reqwest::header::HeaderMap::new(),
            &body,
            twilio_rejection,
        );
        let SendError::Rejected { reason, .. } = err else {
            panic!("{err:?}")
        };
        assert!(
            !reason.contains('\0') && reason.contains("bad\u{fffd}number"),
            "{reason}"
        );
        assert!(reason.chars().count() <= 1_020, "{}", reason.len());
    }

    fn message(template: &str, data: &[(&str, &str)]) -> OutboundMessage {
        OutboundMessage {
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..crate::testing::outbound_message(
                "WEB-1",
                crate::events::Channel::Sms,
                "+15550001",
                template,
            )
        }
    }

    #[test]
    fn sms_templates_are_filled_from_the_data_and_a_hole_is_an_error() {
        let m = message("t", &[("first_name", "Ana")]);
        assert_eq!(render("Hi {{first_name}}!", &m).unwrap(), "Hi Ana!");
        assert_eq!(render("Hi {{ first_name }}!", &m).unwrap(), "Hi Ana!");
        let err = render("Hi {{company}}", &m).unwrap_err();
        assert!(err.contains("needs `company`"), "{err}");
        assert!(placeholders("Hi {{first_name").is_err());
        assert!(placeholders("Hi {{first name}}").is_err());
    }

    #[test]
    fn provider_error_bodies_become_reasons_and_bounces() {
        let (reason, bounce) = sendgrid_rejection(
            r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":null}]}"#,
        );
        assert!(bounce);
        assert!(
            reason.contains("Does not contain a valid address."),
            "{reason}"
        );
        let (reason, bounce) = sendgrid_rejection(
            r#"{"errors":[{"message":"The template_id must be a valid GUID","field":"template_id"}]}"#,
        );
        assert!(!bounce, "{reason}");
        let (reason, bounce) = twilio_rejection(
            r#"{"code": 21211, "message": "The 'To' number 123 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        );
        assert!(bounce);
        assert!(reason.contains("21211"), "{reason}");
    }
}
