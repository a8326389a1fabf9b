//! The service's one source of the time of day. Every part that asks
//! "what time is it" (leases, expiries, retries, watermarks, the index of
//! taken names) holds a [`Clock`] handed down from where the service is
//! built; production's reads the system clock. A test keeps a copy and
//! moves it forward instead of sleeping, and every part holding a copy sees
//! the same time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// How far this clock is ahead of the system's (moved by tests only).
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch, as this clock says.
    pub fn now_ms(&self) -> i64 {
        crate::now_ms() + self.ahead_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock, and every copy of it, forward.
    pub fn advance(&self, by: Duration) {
        self.ahead_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_move_together() {
        let clock = Clock::system();
        let copy = clock.clone();
        let before = copy.now_ms();
        clock.advance(Duration::from_secs(3600));
        assert!(copy.now_ms() - before >= 3_600_000);
        assert!(Clock::system().now_ms() < copy.now_ms());
    }
}
