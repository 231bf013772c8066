//! The one retry with backoff: capped exponential delays, used by every
//! edge that waits out an outage (the store, the broker, the schema
//! registry). A retried operation never skips ahead: it waits.

use std::future::Future;
use std::time::Duration;

/// Delays that double from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// 100 ms doubling up to 5 s: a database or broker outage.
    pub fn outage() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait now; the next one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Runs `op` until it succeeds or fails with an error `transient` refuses;
/// `on_retry` hears of each retried error and the delay before the next try.
pub async fn retry_transient<T, E, F, Fut>(
    mut backoff: Backoff,
    transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) => {
                let delay = backoff.next_delay();
                on_retry(&e, delay);
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_others_returned() {
        let mut calls = 0;
        let mut heard = Vec::new();
        let result: Result<u32, &str> = retry_transient(
            Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            |e: &&str| *e == "busy",
            |e, delay| heard.push((e.to_string(), delay)),
            || {
                calls += 1;
                let answer = if calls < 3 { Err("busy") } else { Ok(calls) };
                async move { answer }
            },
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(heard.len(), 2);
        assert_eq!(heard[1].1, Duration::from_millis(2));
        let fatal: Result<u32, &str> = retry_transient(
            Backoff::outage(),
            |e: &&str| *e == "busy",
            |_, _| panic!("a permanent error is not retried"),
            || async { Err("broken") },
        )
        .await;
        assert_eq!(fatal, Err("broken"));
    }
}
