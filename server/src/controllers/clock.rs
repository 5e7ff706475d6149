//! The wall clock of the time-driven loops (CronJob schedules), injectable so tests can move time
//! forward instead of waiting for real minutes.
//!
//! Invariant: the clock is the real time (or, frozen, a fixed instant) plus an offset that only
//! ever grows, so it never runs backwards; every clone shares the same offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Real time shifted by a shared, growing offset (zero unless a test advances it).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// A frozen clock stands at this instant until advanced.
    frozen: Option<Timestamp>,
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// A clock that stands still at `at` and moves only when advanced (for tests).
    pub fn frozen_at(at: Timestamp) -> Clock {
        Clock {
            frozen: Some(at),
            offset_ms: Arc::default(),
        }
    }

    pub fn now(&self) -> Timestamp {
        let offset = SignedDuration::from_millis(self.offset_ms.load(Ordering::SeqCst));
        let now = self.frozen.unwrap_or_else(Timestamp::now);
        now.checked_add(offset).unwrap_or(now)
    }

    /// Moves this clock (and every clone) forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = other.now();
        clock.advance(std::time::Duration::from_secs(3600));
        assert!(other.now().duration_since(before).as_secs() >= 3600);
        let frozen = Clock::frozen_at(Timestamp::UNIX_EPOCH);
        assert_eq!(frozen.now(), Timestamp::UNIX_EPOCH);
        frozen.clone().advance(std::time::Duration::from_secs(60));
        assert_eq!(frozen.now().as_second(), 60);
    }
}
