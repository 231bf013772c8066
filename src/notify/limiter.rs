//! Rate limits for provider accounts.
//!
//! A token bucket with a burst lets `burst + rate` requests into one second;
//! providers count per second, so the limiter here paces instead: slots are
//! handed out in request order at least `window / limit` apart, so no window
//! of `window` length ever holds more than `limit` of them, and a backlog
//! drains at exactly the limit. Pure, over an abstract clock (a `Duration`
//! since any origin), so tests drive it with simulated time.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    /// The earliest next slot.
    next_free: Duration,
    /// No slot before this (a provider's Retry-After).
    held_until: Duration,
}

impl RateLimiter {
    /// At most `limit` sends per `window`; `limit` 0 is treated as 1.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            interval: window / limit.max(1),
            next_free: Duration::ZERO,
            held_until: Duration::ZERO,
        }
    }

    /// Reserves the next send slot at or after `now` and returns it; the
    /// caller waits until then and sends.
    pub fn reserve(&mut self, now: Duration) -> Duration {
        let slot = now.max(self.next_free).max(self.held_until);
        self.next_free = slot + self.interval;
        slot
    }

    /// Hands out no slot before `until` (a provider answered 429 with a
    /// Retry-After: the whole account waits, not just that request).
    pub fn hold_until(&mut self, until: Duration) {
        self.held_until = self.held_until.max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The burst of the issue: 10,000 messages queued at once, 100/s.
    #[test]
    fn a_burst_of_ten_thousand_at_100_per_second_takes_100_seconds_and_never_exceeds_the_limit() {
        let mut limiter = RateLimiter::new(100, Duration::from_secs(1));
        let now = Duration::from_millis(1_234);
        let slots: Vec<Duration> = (0..10_000).map(|_| limiter.reserve(now)).collect();
        let span = *slots.last().unwrap() - slots[0];
        // 100 per second from the first: the last one 99.99 s after it.
        assert_eq!(span, Duration::from_millis(99_990), "took {span:?}");
        // Every window [t, t + 1 s) starting at any slot holds at most 100.
        let mut end = 0;
        for (start, t) in slots.iter().enumerate() {
            while end < slots.len() && slots[end] < *t + Duration::from_secs(1) {
                end += 1;
            }
            assert!(
                end - start <= 100,
                "{} sends in the second from {t:?}",
                end - start
            );
        }
        assert!(
            slots.windows(2).all(|w| w[0] <= w[1]),
            "slots in request order"
        );
    }

    #[test]
    fn requests_spread_over_time_are_not_delayed() {
        let mut limiter = RateLimiter::new(10, Duration::from_secs(1));
        for i in 0..100u64 {
            let now = Duration::from_millis(i * 150);
            assert_eq!(limiter.reserve(now), now);
        }
    }

    #[test]
    fn a_retry_after_holds_every_later_slot() {
        let mut limiter = RateLimiter::new(100, Duration::from_secs(1));
        assert_eq!(limiter.reserve(Duration::ZERO), Duration::ZERO);
        limiter.hold_until(Duration::from_secs(5));
        assert_eq!(
            limiter.reserve(Duration::from_secs(1)),
            Duration::from_secs(5)
        );
        assert_eq!(
            limiter.reserve(Duration::from_secs(6)),
            Duration::from_secs(6)
        );
    }
}
