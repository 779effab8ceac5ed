//! Logs each distinct failure at most once per period, so an hour-long outage
//! is a handful of lines, not thousands.

use std::collections::HashMap;
use std::time::Duration;

// tokio's clock, so tests on a paused clock see the period pass.
use tokio::time::Instant;

/// At most one line per key per period, counting what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    /// A limiter allowing one line per key per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(n)` when this key may be logged now, with `n` repeats held back
    /// since it was last logged; `None` while it is still within its period.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period() {
        let mut l = LogLimiter::new(Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(l.allow("503:PGRST002", t0), Some(0));
        let logged = (1..=120)
            .filter(|i| {
                l.allow("503:PGRST002", t0 + Duration::from_secs(30 * i))
                    .is_some()
            })
            .count();
        // An hour of beats every 30 s: one line at start, then one per 5 minutes.
        assert_eq!(logged, 12);
        assert_eq!(
            l.allow("401:PGRST301", t0 + Duration::from_secs(1)),
            Some(0),
            "other keys are independent"
        );
    }

    #[test]
    fn reports_held_back_repeats() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        l.allow("k", t0);
        l.allow("k", t0 + Duration::from_secs(1));
        l.allow("k", t0 + Duration::from_secs(2));
        assert_eq!(l.allow("k", t0 + Duration::from_secs(11)), Some(2));
    }
}
