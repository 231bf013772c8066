//! The one clock type: wall time in production, a hand-moved clock in
//! tests. Everything that needs "now" (the processor, the delivery worker,
//! the model watcher) takes a [`Clock`], so a test can drive it.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::events::Millis;

/// The processor's clock: wall time in production; tests drive their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at: Millis) -> Self {
        ManualClock(AtomicI64::new(at))
    }

    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the epoch by the system clock.
pub fn wall_clock_millis() -> Millis {
    WallClock.now()
}
