//! The health a reader derives from a row. The same rule is written in SQL
//! (`hp_worker_health` in `sql/`); a test feeds both the same rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::row::WorkerStatus;

/// What a reader concludes about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Says `running` and beat within the grace period.
    Running,
    /// Says `running` but its last beat is older than the grace period.
    Stale,
    /// Ended cleanly.
    Stopped,
    /// Ended badly, or its circuit breaker is open.
    Crashed,
    /// Never beat.
    Unknown,
}

impl Health {
    /// The lowercase name, as in the SQL view.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Running => "running",
            Health::Stale => "stale",
            Health::Stopped => "stopped",
            Health::Crashed => "crashed",
            Health::Unknown => "unknown",
        }
    }

    /// Whether monitoring should say so (`status` exits 1).
    pub fn needs_attention(self) -> bool {
        matches!(self, Health::Stale | Health::Crashed)
    }
}

/// How many beat intervals may pass before a running worker counts as stale.
pub(crate) const STALE_AFTER_INTERVALS: f64 = 2.5;

/// Interval assumed for rows that do not say theirs (seed rows).
pub(crate) const DEFAULT_INTERVAL_SECONDS: u32 = 30;

/// Derives a worker's health. Keep equal to the SQL view `hp_worker_health`.
///
/// A row is stale when `now - last_heartbeat > 2.5 * interval`; exactly at the
/// boundary it is still fresh.
pub(crate) fn derive_health(
    status: WorkerStatus,
    last_heartbeat: Option<DateTime<Utc>>,
    interval_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Health {
    match status {
        WorkerStatus::Stopped => Health::Stopped,
        WorkerStatus::Crashed => Health::Crashed,
        WorkerStatus::Unknown => Health::Unknown,
        WorkerStatus::Running => {
            let Some(last) = last_heartbeat else {
                return Health::Unknown;
            };
            let interval = interval_seconds
                .filter(|&i| i > 0)
                .unwrap_or(DEFAULT_INTERVAL_SECONDS);
            // Microseconds, as PostgreSQL's interval arithmetic in the view.
            let grace_us = (f64::from(interval) * STALE_AFTER_INTERVALS * 1e6) as i64;
            let age_us = (now - last).num_microseconds().unwrap_or(i64::MAX);
            if age_us > grace_us {
                Health::Stale
            } else {
                Health::Running
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn boundaries() {
        let now = Utc::now();
        let at = |ms: i64| Some(now - Duration::milliseconds(ms));
        let run = WorkerStatus::Running;
        assert_eq!(
            derive_health(run, at(75_000), Some(30), now),
            Health::Running
        );
        assert_eq!(derive_health(run, at(75_001), Some(30), now), Health::Stale);
        assert_eq!(derive_health(run, at(2_500), Some(1), now), Health::Running);
        assert_eq!(derive_health(run, at(2_501), Some(1), now), Health::Stale);
        let just_over = Some(now - Duration::microseconds(75_000_001));
        assert_eq!(derive_health(run, just_over, Some(30), now), Health::Stale);
        assert_eq!(derive_health(run, None, Some(30), now), Health::Unknown);
        assert_eq!(derive_health(run, at(80_000), None, now), Health::Stale);
        let old = at(10_000_000);
        assert_eq!(
            derive_health(WorkerStatus::Stopped, old, Some(30), now),
            Health::Stopped
        );
        assert_eq!(
            derive_health(WorkerStatus::Crashed, old, Some(30), now),
            Health::Crashed
        );
        assert_eq!(
            derive_health(WorkerStatus::Unknown, old, Some(30), now),
            Health::Unknown
        );
    }
}
