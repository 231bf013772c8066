//! Rate limits for provider accounts: a sliding-window log.
//!
//! A token bucket with a burst lets `burst + rate` requests into one second;
//! providers count per second, so the limiter here guarantees the stronger
//! property: no window of `window` length ever holds more than `limit`
//! sends. It hands out send slots in request order: the n-th slot is no
//! earlier than the (n - limit)-th plus the window. Pure, over an abstract
//! clock (a `Duration` since any origin), so tests drive it with simulated
//! time.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SlidingWindowLimiter {
    limit: usize,
    window: Duration,
    /// The last `limit` slots handed out, oldest first.
    slots: VecDeque<Duration>,
    /// No slot before this (a provider's Retry-After).
    held_until: Duration,
}

impl SlidingWindowLimiter {
    /// At most `limit` sends per `window`; `limit` 0 is treated as 1.
    pub fn new(limit: u32, window: Duration) -> Self {
        let limit = limit.max(1) as usize;
        SlidingWindowLimiter {
            limit,
            window,
            slots: VecDeque::with_capacity(limit),
            held_until: Duration::ZERO,
        }
    }

    /// Reserves the next send slot at or after `now` and returns it; the
    /// caller waits until then and sends.
    pub fn reserve(&mut self, now: Duration) -> Duration {
        let mut slot = now.max(self.held_until);
        if let Some(last) = self.slots.back() {
            slot = slot.max(*last);
        }
        if self.slots.len() == self.limit {
            let oldest = self.slots.pop_front().expect("full");
            slot = slot.max(oldest + self.window);
        }
        self.slots.push_back(slot);
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
        let mut limiter = SlidingWindowLimiter::new(100, Duration::from_secs(1));
        let now = Duration::from_millis(1_234);
        let slots: Vec<Duration> = (0..10_000).map(|_| limiter.reserve(now)).collect();
        let span = *slots.last().unwrap() - slots[0];
        // The first 100 go at once, then 100 per second: the last one at 99 s.
        assert!(
            span >= Duration::from_secs(99) && span <= Duration::from_secs(100),
            "took {span:?}"
        );
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
        let mut limiter = SlidingWindowLimiter::new(10, Duration::from_secs(1));
        for i in 0..100u64 {
            let now = Duration::from_millis(i * 150);
            assert_eq!(limiter.reserve(now), now);
        }
    }

    #[test]
    fn a_retry_after_holds_every_later_slot() {
        let mut limiter = SlidingWindowLimiter::new(100, Duration::from_secs(1));
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
