//! The dead-letter policy both consumers (the processor and the delivery
//! worker) follow: a message that cannot be processed goes to the
//! dead-letter topic with headers naming its source and the reason, is
//! logged and counted once, here, and is never dropped (the write is retried
//! until the broker acknowledges it). With a budget, most of a window of
//! messages being bad stops the consumer: that is a bad deploy or a wrong
//! topic, not bad data.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tracing::warn;

use crate::codec::CodecError;
use crate::events::Millis;
use crate::kafka::SharedProducer;
use crate::metrics::internal_events::DeadLettered;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// A consumed message, detached from the consumer's buffer.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record's Kafka timestamp (create or log-append time), if it has one.
    pub timestamp: Option<Millis>,
}

impl RawMessage {
    /// Detaches a consumed message.
    pub fn from_message<M: Message>(m: &M) -> Self {
        RawMessage {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
        }
    }
}

/// Why a message went to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub kind: &'static str,
    pub message: String,
}

impl From<&CodecError> for Rejection {
    fn from(e: &CodecError) -> Self {
        Rejection {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Dead-letter headers: where the message came from and why it was rejected.
pub mod dlq_headers {
    pub const SOURCE_TOPIC: &str = "leadflow.source.topic";
    pub const SOURCE_PARTITION: &str = "leadflow.source.partition";
    pub const SOURCE_OFFSET: &str = "leadflow.source.offset";
    pub const ERROR_KIND: &str = "leadflow.error.kind";
    pub const ERROR_MESSAGE: &str = "leadflow.error.message";
    /// Present ("true") when the key or value was cut to fit the topic.
    pub const TRUNCATED: &str = "leadflow.dlq.truncated";
    pub const ORIGINAL_KEY_BYTES: &str = "leadflow.original.key.bytes";
    pub const ORIGINAL_VALUE_BYTES: &str = "leadflow.original.value.bytes";
}

/// Most of a window of messages could not be processed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{invalid} of the last {window} messages could not be processed (most recent: {last_reason})"
)]
pub struct TooManyInvalid {
    pub invalid: usize,
    pub window: usize,
    pub last_reason: String,
}

/// Where a consumer's rejected messages go, and how many it tolerates.
pub struct DeadLetters {
    producer: Arc<SharedProducer>,
    topic: String,
    max_bytes: usize,
    metrics: Arc<Metrics>,
    budget: Option<Mutex<DeadLetterBudget>>,
}

impl DeadLetters {
    /// Dead letters of at most `max_bytes` to `topic`, with no budget.
    pub fn new(
        producer: Arc<SharedProducer>,
        topic: &str,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        DeadLetters {
            producer,
            topic: topic.to_string(),
            max_bytes,
            metrics,
            budget: None,
        }
    }

    /// Stops (see [`DeadLetters::reject`]) when more than `max_ratio` of the
    /// last `window` messages were rejected.
    pub fn with_budget(mut self, window: usize, max_ratio: f64) -> Self {
        self.budget = Some(Mutex::new(DeadLetterBudget::new(window, max_ratio)));
        self
    }

    /// A message that was processed: it counts in the budget's window.
    pub fn accepted(&self) {
        if let Some(budget) = &self.budget {
            budget.lock().expect("budget lock").record(false);
        }
    }

    /// Writes `message` to the dead-letter topic.
    pub async fn send(&self, message: &RawMessage, rejection: &Rejection) {
        let error = shorten(&rejection.message, MAX_ERROR_HEADER_BYTES);
        write_dead_letter(
            &self.producer,
            &self.topic,
            self.max_bytes,
            message,
            rejection.kind,
            &error,
        )
        .await;
        self.metrics.emit(DeadLettered {
            topic: &message.topic,
            partition: message.partition,
            offset: message.offset,
            reason: rejection.kind,
            error: &error,
        });
    }

    /// [`DeadLetters::send`], then an error when the budget trips.
    pub async fn reject(
        &self,
        message: &RawMessage,
        rejection: &Rejection,
    ) -> Result<(), TooManyInvalid> {
        self.send(message, rejection).await;
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let mut budget = budget.lock().expect("budget lock");
        match budget.record(true) {
            None => Ok(()),
            Some(invalid) => Err(TooManyInvalid {
                invalid,
                window: budget.window,
                last_reason: format!("{}: {}", rejection.kind, rejection.message),
            }),
        }
    }
}

/// Counts invalid messages over a sliding window of messages.
pub(crate) struct DeadLetterBudget {
    window: usize,
    max_invalid: usize,
    recent: VecDeque<bool>,
    invalid: usize,
}

impl DeadLetterBudget {
    fn new(window: usize, max_ratio: f64) -> Self {
        DeadLetterBudget {
            window,
            max_invalid: (window as f64 * max_ratio).floor() as usize,
            recent: VecDeque::with_capacity(window),
            invalid: 0,
        }
    }

    /// Records one message; returns the invalid count when it passes the bound.
    fn record(&mut self, invalid: bool) -> Option<usize> {
        self.recent.push_back(invalid);
        self.invalid += invalid as usize;
        if self.recent.len() > self.window && self.recent.pop_front() == Some(true) {
            self.invalid -= 1;
        }
        (self.invalid > self.max_invalid).then_some(self.invalid)
    }
}

/// Writes a rejected message to the dead-letter topic with headers naming
/// its source and the reason, retrying until the broker acknowledges it: a
/// dead letter is never dropped.
///
/// A dead letter larger than `max_bytes` (or than the broker then accepts:
/// `MessageSizeTooLarge` halves the budget) is written with its key and
/// value cut to fit and headers saying so and giving the original sizes;
/// the whole message stays in its source partition at the offset the
/// headers name. Without that, one message just under the input limit
/// would stall its partition for good.
async fn write_dead_letter(
    producer: &SharedProducer,
    topic: &str,
    max_bytes: usize,
    message: &RawMessage,
    kind: &str,
    error_message: &str,
) {
    let partition = message.partition.to_string();
    let offset = message.offset.to_string();
    let key = message.key.as_deref();
    let payload = message.payload.as_deref();
    let key_len = key.map_or(0, <[u8]>::len).to_string();
    let payload_len = payload.map_or(0, <[u8]>::len).to_string();
    let mut budget = max_bytes;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let (key_part, payload_part) = fit_dead_letter(key, payload, budget);
        let truncated = key_part.map(<[u8]>::len) != key.map(<[u8]>::len)
            || payload_part.map(<[u8]>::len) != payload.map(<[u8]>::len);
        let mut headers = OwnedHeaders::new()
            .insert(header(dlq_headers::SOURCE_TOPIC, &message.topic))
            .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
            .insert(header(dlq_headers::SOURCE_OFFSET, &offset))
            .insert(header(dlq_headers::ERROR_KIND, kind))
            .insert(header(dlq_headers::ERROR_MESSAGE, error_message));
        if truncated {
            headers = headers
                .insert(header(dlq_headers::TRUNCATED, "true"))
                .insert(header(dlq_headers::ORIGINAL_KEY_BYTES, &key_len))
                .insert(header(dlq_headers::ORIGINAL_VALUE_BYTES, &payload_len));
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key_part {
            record = record.key(key);
        }
        if let Some(payload) = payload_part {
            record = record.payload(payload);
        }
        match producer.get().send(record, Duration::from_secs(30)).await {
            Ok(_) => return,
            Err((KafkaError::MessageProduction(code), _)) if is_too_large(code) && budget > 0 => {
                budget /= 2;
                warn!(error = %code, topic = %topic, budget, "dead letter too large for the broker; cutting it down");
            }
            Err((e, _)) => {
                producer.renew_if_failed();
                let delay = backoff.next_delay();
                warn!(error = %e, topic = %topic, retry_in_ms = delay.as_millis() as u64, "dead-letter write failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Longest error text a dead letter's header carries.
const MAX_ERROR_HEADER_BYTES: usize = 1_000;

/// Room kept in a dead letter's budget for its headers and record framing.
const DEAD_LETTER_OVERHEAD_BYTES: usize = 2_048;

fn is_too_large(code: rdkafka::error::RDKafkaErrorCode) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge
    )
}

/// The key and value a dead letter carries within `budget` bytes: whole
/// when they fit, otherwise the key cut to at most a quarter of the budget
/// and the value to what is left.
pub fn fit_dead_letter<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    budget: usize,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let room = budget.saturating_sub(DEAD_LETTER_OVERHEAD_BYTES);
    let key_len = key.map_or(0, <[u8]>::len);
    let payload_len = payload.map_or(0, <[u8]>::len);
    if key_len + payload_len <= room {
        return (key, payload);
    }
    let key_room = key_len.min(room / 4);
    let payload_room = payload_len.min(room - key_room);
    (
        key.map(|k| &k[..key_room]),
        payload.map(|p| &p[..payload_room]),
    )
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn header<'h>(key: &'h str, value: &'h str) -> Header<'h, &'h str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::DeadLetterBudget;

    #[test]
    fn dead_letter_budget_trips_only_when_most_of_the_window_is_bad() {
        let mut budget = DeadLetterBudget::new(10, 0.5);
        // Scattered bad messages never trip it.
        for i in 0..100 {
            assert_eq!(budget.record(i % 3 == 0), None, "message {i}");
        }
        let mut budget = DeadLetterBudget::new(10, 0.5);
        for _ in 0..5 {
            assert_eq!(budget.record(true), None);
        }
        assert_eq!(budget.record(true), Some(6));
    }

    #[test]
    fn the_window_slides() {
        let mut budget = DeadLetterBudget::new(4, 0.5);
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(false), None);
        assert_eq!(budget.record(false), None);
        // Bad messages leave the window as new ones enter: [F, F, T, T].
        assert_eq!(budget.record(true), None);
        assert_eq!(budget.record(true), None);
        // [F, T, T, T]
        assert_eq!(budget.record(true), Some(3));
    }
}
