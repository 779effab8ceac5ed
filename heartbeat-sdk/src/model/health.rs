//! What a reader concludes about a worker. The rule is in
//! `StatusRow::health`, and once more in SQL (the view `hp_worker_health` in
//! `sql/`); a test feeds both the same rows.

use serde::{Deserialize, Serialize};

/// What a reader concludes about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Says `running` and beat within the grace period.
    Running,
    /// Says `running` but its last beat is older than the grace period.
    Stale,
    /// Running and beating, but stuck: a run has lasted past its
    /// `max_run`, or no progress for its watchdog period.
    Hung,
    /// Ended cleanly.
    Stopped,
    /// Ended badly, or its circuit breaker is open (whatever its status says).
    Crashed,
    /// Crash-looping: three crashes within ten minutes, until it has run
    /// ten minutes without one (whatever its status says now).
    Flapping,
    /// Never beat.
    Unknown,
}

impl Health {
    /// The lowercase name, as in the SQL view.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Running => "running",
            Health::Stale => "stale",
            Health::Hung => "hung",
            Health::Flapping => "flapping",
            Health::Stopped => "stopped",
            Health::Crashed => "crashed",
            Health::Unknown => "unknown",
        }
    }

    /// Whether monitoring should say so (`status` exits 1).
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Health::Stale | Health::Crashed | Health::Hung | Health::Flapping
        )
    }
}

/// How many beat intervals may pass before a running worker counts as stale.
pub(crate) const STALE_AFTER_INTERVALS: f64 = 2.5;

/// Interval assumed for rows that do not say theirs (seed rows).
pub(crate) const DEFAULT_INTERVAL_SECONDS: u32 = 30;
