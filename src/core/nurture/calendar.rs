//! Quiet hours in the lead's own timezone.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::events::Millis;

/// Local times between which no message is sent. `start` after `end` spans
/// midnight (21:00–08:00); equal times mean no quiet hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

impl Default for QuietHours {
    fn default() -> Self {
        QuietHours {
            start: "21:00".into(),
            end: "08:00".into(),
        }
    }
}

/// Quiet hours parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    start: NaiveTime,
    end: NaiveTime,
}

pub fn parse_time(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M")
        .map_err(|_| format!("`{text}` is not a local time as HH:MM (24-hour)"))
}

impl QuietHours {
    pub fn window(&self) -> Result<QuietWindow, (&'static str, String)> {
        Ok(QuietWindow {
            start: parse_time(&self.start).map_err(|e| ("start", e))?,
            end: parse_time(&self.end).map_err(|e| ("end", e))?,
        })
    }
}

impl QuietWindow {
    fn is_quiet(&self, t: NaiveTime) -> bool {
        if self.start == self.end {
            false
        } else if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The first instant at or after `at` outside quiet hours in `tz`.
    pub fn next_allowed(&self, at: Millis, tz: Tz) -> Millis {
        let Some(utc) = DateTime::<Utc>::from_timestamp_millis(at) else {
            return at;
        };
        let local = utc.with_timezone(&tz);
        if !self.is_quiet(local.time()) {
            return at;
        }
        // The quiet period ends at `end` today, or tomorrow if that has passed.
        let mut date = local.date_naive();
        if local.time() >= self.end {
            date = date.succ_opt().unwrap_or(date);
        }
        let mut naive = date.and_time(self.end);
        // A daylight-saving gap may skip the end time: take the first valid
        // local time after it.
        for _ in 0..4 {
            if let Some(t) = tz.from_local_datetime(&naive).earliest() {
                return t.timestamp_millis().max(at);
            }
            naive += Duration::minutes(30);
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc: &str) -> Millis {
        DateTime::parse_from_rfc3339(rfc)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_time_in_quiet_hours_moves_to_the_next_local_morning() {
        let window = QuietHours::default().window().unwrap();
        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        // 22:30 in Madrid (UTC+1 in January) → 08:00 Madrid the next day.
        assert_eq!(
            window.next_allowed(ms("2026-01-10T21:30:00Z"), madrid),
            ms("2026-01-11T07:00:00Z")
        );
        // 03:00 Madrid → 08:00 the same day.
        assert_eq!(
            window.next_allowed(ms("2026-01-10T02:00:00Z"), madrid),
            ms("2026-01-10T07:00:00Z")
        );
        // Midday stays.
        assert_eq!(
            window.next_allowed(ms("2026-01-10T11:00:00Z"), madrid),
            ms("2026-01-10T11:00:00Z")
        );
        // The same instant is daytime in New York: no shift.
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            window.next_allowed(ms("2026-01-10T21:30:00Z"), ny),
            ms("2026-01-10T21:30:00Z")
        );
    }

    #[test]
    fn daytime_quiet_hours_and_none() {
        let window = QuietHours {
            start: "12:00".into(),
            end: "13:00".into(),
        }
        .window()
        .unwrap();
        assert_eq!(
            window.next_allowed(ms("2026-03-02T12:15:00Z"), Tz::UTC),
            ms("2026-03-02T13:00:00Z")
        );
        let none = QuietHours {
            start: "00:00".into(),
            end: "00:00".into(),
        }
        .window()
        .unwrap();
        assert_eq!(
            none.next_allowed(ms("2026-03-02T03:00:00Z"), Tz::UTC),
            ms("2026-03-02T03:00:00Z")
        );
        assert!(QuietHours {
            start: "25:00".into(),
            end: "08:00".into()
        }
        .window()
        .is_err());
    }
}
