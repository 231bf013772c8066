//! From a consumed record to an input event, or to the reason it is
//! rejected: size, key, the bounded Avro decode, the key matching the lead,
//! and the event time within bounds of the record's own timestamp.

use std::time::Duration;

use tracing::warn;

use crate::codec::CodecError;
use crate::core::clock::wall_clock_millis;
use crate::events::{InputEvent, InputStream, Millis};
use crate::kafka::deadletter::{shorten, RawMessage, Rejection};
use crate::retry::{retry_transient, Backoff};
use crate::store::LeadStore;

use super::consume::Pipeline;

impl<S: LeadStore + 'static> Pipeline<S> {
    pub(super) async fn decode(
        &self,
        stream: InputStream,
        message: &RawMessage,
    ) -> Result<InputEvent, Rejection> {
        let payload = message.payload.as_deref().ok_or_else(|| Rejection {
            kind: "empty",
            message: "message has no value".into(),
        })?;
        let limit = self.config.processor.max_message_bytes;
        if payload.len() > limit {
            return Err(Rejection {
                kind: "too_large",
                message: format!(
                    "value is {} bytes, more than processor.max_message_bytes = {limit}",
                    payload.len()
                ),
            });
        }
        let key = message.key.as_deref().ok_or_else(|| Rejection {
            kind: "missing_key",
            message: "message has no key; input topics are keyed by lead_ext_id".into(),
        })?;
        let event = retry_transient(
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            CodecError::is_transient,
            |e, _| warn!(error = %e, "decode: transient failure, retrying"),
            || self.codec.decode_input(stream, payload),
        )
        .await
        .map_err(|e| Rejection::from(&e))?;
        if key != event.lead_ext_id().as_bytes() {
            return Err(Rejection {
                kind: "key_mismatch",
                message: format!(
                    "key `{}` differs from lead_ext_id `{}`; the lead's events would be split across partitions",
                    shorten(&String::from_utf8_lossy(key), 200),
                    event.lead_ext_id()
                ),
            });
        }
        check_event_time(
            &self.config.processor,
            self.earliest_event_time,
            &event,
            message.timestamp,
        )?;
        Ok(event)
    }
}

/// Refuses an event dated before `processor.earliest_event_time`, or more
/// than `processor.max_event_time_ahead_ms` after the moment its record
/// entered the log (its Kafka timestamp; the wall clock for a record
/// without one). Both bounds follow from the log itself, so a replay of the
/// log decides the same: a microsecond or seconds timestamp, or a date in
/// year 9999, never joins the merge, where it would hold its partition's
/// other events back.
/// `earliest` is `processor.earliest_event_time` as millis, parsed once by
/// the caller rather than per event.
pub fn check_event_time(
    processor: &crate::config::ProcessorConfig,
    earliest: Millis,
    event: &InputEvent,
    record_time: Option<Millis>,
) -> Result<(), Rejection> {
    let at = event.occurred_at();
    if at < earliest {
        return Err(Rejection {
            kind: "event_time_out_of_range",
            message: format!(
                "occurred_at {at} ({}) is before processor.earliest_event_time {} (seconds instead of milliseconds?)",
                crate::events::timestamp::format(at),
                processor.earliest_event_time
            ),
        });
    }
    let reference = record_time.unwrap_or_else(wall_clock_millis);
    let ahead = at.saturating_sub(reference);
    if ahead > processor.max_event_time_ahead_ms as i64 {
        return Err(Rejection {
            kind: "event_time_out_of_range",
            message: format!(
                "occurred_at {at} ({}) is {} ms after the record was written ({}), more than processor.max_event_time_ahead_ms = {} (microseconds instead of milliseconds?)",
                crate::events::timestamp::format(at),
                ahead,
                crate::events::timestamp::format(reference),
                processor.max_event_time_ahead_ms
            ),
        });
    }
    Ok(())
}
