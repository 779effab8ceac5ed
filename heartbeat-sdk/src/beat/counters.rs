//! What the worker's threads touch: atomic counters and the circuit breaker.
//! Nothing here blocks the worker; `increment_*` are relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::model::text::{
    jsonb_text_len_map, truncate_message, DROPPED_KEYS, MAX_LAST_ERROR_BYTES, USER_METADATA_BUDGET,
};

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
    metadata: Mutex<Metadata>,
}

/// The user's metadata, kept within its budget as it enters: a key whose
/// value would not fit is dropped (warned once, and named in the row), so
/// metadata never costs the beat.
#[derive(Debug, Default)]
struct Metadata {
    map: Map<String, Value>,
    dropped: Vec<String>,
}

/// At most this many dropped keys are named in the row.
const MAX_DROPPED_NAMED: usize = 10;

impl Metadata {
    fn set(&mut self, key: String, value: Value) {
        self.map.insert(key.clone(), value);
        let size = jsonb_text_len_map(&self.map);
        if size <= USER_METADATA_BUDGET {
            self.dropped.retain(|k| k != &key);
            return;
        }
        // It does not fit: the key goes (an older value of it would be stale).
        self.map.remove(&key);
        let named = truncate_message(&key, 64);
        if !self.dropped.contains(&named) {
            tracing::warn!(
                "heartbeat: metadata key {key:?} dropped: with it the row's metadata would take {size} bytes, over its budget of {USER_METADATA_BUDGET} (the table allows 8 KiB); set a smaller value"
            );
            if self.dropped.len() < MAX_DROPPED_NAMED {
                self.dropped.push(named);
            }
        }
    }

    /// The map as the row sends it: with the names of what was dropped.
    fn for_row(&self) -> Map<String, Value> {
        let mut map = self.map.clone();
        if !self.dropped.is_empty() {
            map.insert(
                DROPPED_KEYS.into(),
                Value::Array(self.dropped.iter().cloned().map(Value::String).collect()),
            );
        }
        map
    }
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
            metadata: Mutex::new({
                let mut kept = Metadata::default();
                for (key, value) in metadata {
                    kept.set(key, value);
                }
                kept
            }),
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
        if let Ok(mut metadata) = self.metadata.lock() {
            metadata.set(key, value);
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
            metadata: self
                .metadata
                .lock()
                .map(|m| m.for_row())
                .unwrap_or_default(),
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
    fn metadata_that_would_not_fit_is_dropped_and_named() {
        let c = Counters::new(10, Map::new());
        c.set_metadata("region".into(), Value::from("eu-west"));
        c.set_metadata("blob".into(), Value::from("x".repeat(500_000)));
        let meta = c.snapshot().metadata;
        assert_eq!(meta["region"], "eu-west", "what fits stays");
        assert!(meta.get("blob").is_none());
        assert_eq!(meta[DROPPED_KEYS], serde_json::json!(["blob"]));
        assert!(jsonb_text_len_map(&meta) <= USER_METADATA_BUDGET + 64);
        c.set_metadata("blob".into(), Value::from("small now"));
        let meta = c.snapshot().metadata;
        assert_eq!(meta["blob"], "small now");
        assert!(meta.get(DROPPED_KEYS).is_none(), "no longer dropped");
    }

    #[test]
    fn many_small_keys_stop_at_the_budget() {
        let c = Counters::new(10, Map::new());
        for i in 0..2000 {
            c.set_metadata(format!("key-{i}"), Value::from(i));
        }
        let meta = c.snapshot().metadata;
        assert!(jsonb_text_len_map(&meta) <= USER_METADATA_BUDGET + 400);
        let dropped = meta[DROPPED_KEYS].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(dropped, MAX_DROPPED_NAMED, "the names are bounded too");
    }

    #[test]
    fn last_error_is_bounded() {
        let c = Counters::new(10, Map::new());
        c.record_error_message(&"x".repeat(10_000));
        let kept = c.snapshot().last_error.unwrap_or_default();
        assert!(kept.len() <= MAX_LAST_ERROR_BYTES);
    }
}
