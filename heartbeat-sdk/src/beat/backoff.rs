//! Retry delays within one beat: exponential, with jitter, capped.

use std::time::Duration;

/// "Equal jitter" backoff: half the exponential step fixed, half random, so
/// retries never bunch at zero and many workers do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        step / 2 + step.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stays_in_range() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let lows: Vec<_> = (0..6).map(|_| b.next_delay(0.0)).collect();
        let ms: Vec<u128> = lows.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 2000, 2000]);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let highs: Vec<u128> = (0..6)
            .map(|_| b.next_delay(0.999_999).as_millis())
            .collect();
        assert_eq!(highs, vec![499, 999, 1999, 3999, 3999, 3999]);
    }

    #[test]
    fn never_zero() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.next_delay(0.0) >= Duration::from_millis(50));
        }
    }
}
