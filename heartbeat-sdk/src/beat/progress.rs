//! When the worker last showed progress (`progress()`, and for the sidecar
//! its child's output and socket lines): a relaxed atomic store, so it can be
//! called per item of work. The row says when, and readers judge hung by it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    /// Microseconds after `base`, plus one (0: never).
    last: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// Progress now.
    pub fn mark(&self) {
        let after = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.last.store(after + 1, Ordering::Relaxed);
    }

    /// How long ago the last progress was; `None` before any.
    pub fn since(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            after => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_micros(after - 1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_until_marked_then_the_time_since() {
        let p = Progress::default();
        assert_eq!(p.since(), None);
        p.mark();
        let since = p.since().expect("marked");
        assert!(since < Duration::from_secs(5), "{since:?}");
    }
}
