//! The delivery worker (`leadflow notify`): consumes `outbound-messages`,
//! sends each message once through SendGrid (email) or Twilio (SMS), and
//! reports the outcome on `message-deliveries`. See docs/DELIVERY.md.

pub mod limiter;
pub mod providers;
pub mod worker;
