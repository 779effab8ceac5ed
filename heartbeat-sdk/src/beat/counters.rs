//! What the worker's threads touch: atomic counters and the circuit breaker.
//! Nothing here blocks the worker; `increment_*` are relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::model::text::{truncate_message, MAX_LAST_ERROR_BYTES};

/// Counters and the breaker, shared between the worker and the beat thread.
///
/// The breaker is derived, not stored: it is open while `consecutive_errors`
/// is at or above the threshold, so a success (which zeroes the streak) or
/// `reset` closes it with no second flag to keep in step.
#[derive(Debug)]
pub(crate) struct Counters {
    jobs: AtomicU64,
    errors: AtomicU64,
    consecutive_errors: AtomicU64,
    threshold: u64,
    last_error: Mutex<Option<String>>,
    metadata: Mutex<Map<String, Value>>,
}

/// A consistent-enough copy of the counters for one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CounterSnapshot {
    pub jobs: u64,
    pub errors: u64,
    pub consecutive_errors: u64,
    pub breaker_open: bool,
    pub last_error: Option<String>,
    pub metadata: Map<String, Value>,
}

impl Counters {
    pub fn new(threshold: u32, metadata: Map<String, Value>) -> Self {
        Counters {
            jobs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            consecutive_errors: AtomicU64::new(0),
            threshold: u64::from(threshold.max(1)),
            last_error: Mutex::new(None),
            metadata: Mutex::new(metadata),
        }
    }

    #[inline]
    pub fn job_succeeded(&self) {
        self.jobs.fetch_add(1, Relaxed);
        // Load first: in the common case (no streak) no second write hits the cache line.
        if self.consecutive_errors.load(Relaxed) != 0 {
            self.consecutive_errors.store(0, Relaxed);
        }
    }

    #[inline]
    pub fn job_failed(&self) {
        self.errors.fetch_add(1, Relaxed);
        // The beat loop notices the breaker opening and logs it (rate-limited):
        // nothing here may lock or allocate on the worker's path.
        self.consecutive_errors.fetch_add(1, Relaxed);
    }

    pub fn record_error_message(&self, message: &str) {
        let kept = truncate_message(message, MAX_LAST_ERROR_BYTES);
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(kept);
        }
    }

    pub fn set_metadata(&self, key: String, value: Value) {
        if let Ok(mut map) = self.metadata.lock() {
            map.insert(key, value);
        }
    }

    pub fn circuit_open(&self) -> bool {
        self.consecutive_errors.load(Relaxed) >= self.threshold
    }

    pub fn consecutive_errors(&self) -> u64 {
        self.consecutive_errors.load(Relaxed)
    }

    pub fn reset_circuit(&self) {
        self.consecutive_errors.store(0, Relaxed);
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let consecutive_errors = self.consecutive_errors.load(Relaxed);
        CounterSnapshot {
            jobs: self.jobs.load(Relaxed),
            errors: self.errors.load(Relaxed),
            consecutive_errors,
            breaker_open: consecutive_errors >= self.threshold,
            last_error: self.last_error.lock().map(|g| g.clone()).unwrap_or(None),
            metadata: self.metadata.lock().map(|g| g.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_at_exactly_the_threshold() {
        let c = Counters::new(10, Map::new());
        for _ in 0..9 {
            c.job_failed();
        }
        assert!(!c.circuit_open(), "open after 9 of 10");
        c.job_failed();
        assert!(c.circuit_open(), "closed after 10 of 10");
        assert!(c.snapshot().breaker_open);
    }

    #[test]
    fn success_between_errors_resets_the_streak() {
        let c = Counters::new(3, Map::new());
        c.job_failed();
        c.job_failed();
        c.job_succeeded();
        c.job_failed();
        c.job_failed();
        assert!(!c.circuit_open());
        c.job_failed();
        assert!(c.circuit_open());
        c.job_succeeded();
        assert!(!c.circuit_open(), "a success closes the breaker");
        let s = c.snapshot();
        assert_eq!((s.jobs, s.errors, s.consecutive_errors), (2, 5, 0));
    }

    #[test]
    fn reset_closes_the_breaker() {
        let c = Counters::new(1, Map::new());
        c.job_failed();
        assert!(c.circuit_open());
        c.reset_circuit();
        assert!(!c.circuit_open());
        assert_eq!(c.snapshot().errors, 1, "reset keeps the total");
    }

    #[test]
    fn last_error_is_bounded() {
        let c = Counters::new(10, Map::new());
        c.record_error_message(&"x".repeat(10_000));
        let kept = c.snapshot().last_error.unwrap_or_default();
        assert!(kept.len() <= MAX_LAST_ERROR_BYTES);
    }
}
