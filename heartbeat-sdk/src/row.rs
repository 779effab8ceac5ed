//! The row one beat writes to `hp_worker_status`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a worker says about itself (the `status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// The row exists but the worker never beat.
    Unknown,
    /// The worker is alive and beating.
    Running,
    /// Clean exit, or ended by SIGTERM/SIGINT.
    Stopped,
    /// Non-zero exit, killed by another signal, or the circuit breaker is open.
    Crashed,
}

impl WorkerStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Unknown => "unknown",
            WorkerStatus::Running => "running",
            WorkerStatus::Stopped => "stopped",
            WorkerStatus::Crashed => "crashed",
        }
    }
}

/// One row of `hp_worker_status`, as sent on every beat.
///
/// Every field is a column of the migration in `sql/`; a test keeps the two equal.
/// Counters are absolute totals, so a lost beat loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Primary key.
    pub worker_name: String,
    /// What the worker says about itself.
    pub status: WorkerStatus,
    /// The reporter's clock at this beat, kept for diagnosis. Freshness is
    /// judged by `last_heartbeat`, which the database (or the local store)
    /// stamps with its own clock on every write, so a worker with a wrong
    /// clock can look neither fresh nor stale.
    pub client_heartbeat: DateTime<Utc>,
    /// Jobs done since start.
    pub jobs_processed: u64,
    /// Jobs failed since start.
    pub error_count: u64,
    /// True while the circuit breaker is open.
    pub circuit_breaker_open: bool,
    /// Free-form JSON object: the user's metadata, plus `pid`, `uptime` and
    /// `memory.rss` for dashboards written against the original seed row.
    pub metadata: Map<String, Value>,
    /// The worker's process id.
    pub pid: Option<u32>,
    /// The host the worker runs on.
    pub hostname: Option<String>,
    /// When this instance started reporting.
    pub started_at: DateTime<Utc>,
    /// Seconds since `started_at`.
    pub uptime_seconds: u64,
    /// Resident memory of the worker (its whole process tree under the sidecar).
    pub memory_rss_bytes: Option<u64>,
    /// CPU use since the previous beat, percent of one core.
    pub cpu_percent: Option<f32>,
    /// The worker's own version, if it set one.
    pub version: Option<String>,
    /// What reports: `heartbeat-sdk/<version>` or `heartbeat-sidecar/<version>`.
    pub reporter: String,
    /// Random per start, so a restart or a duplicate name is visible.
    pub instance_id: String,
    /// Errors since the last success; the breaker opens at the threshold.
    pub consecutive_errors: u64,
    /// The last error message, bounded.
    pub last_error: Option<String>,
    /// The worker's exit code (sidecar, after the child exited).
    pub exit_code: Option<i32>,
    /// The signal that ended the worker (sidecar, after the child was killed).
    pub exit_signal: Option<i32>,
    /// The beat interval, so readers can tell stale from fresh per worker.
    pub heartbeat_interval_seconds: u32,
}

/// Longest `last_error` kept, in bytes; the SQL CHECK allows the same.
pub const MAX_LAST_ERROR_BYTES: usize = 2048;

/// Cuts `message` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_lowercase() {
        let s = serde_json::to_string(&WorkerStatus::Crashed).unwrap_or_default();
        assert_eq!(s, "\"crashed\"");
    }

    #[test]
    fn truncation_respects_char_boundaries_and_bound() {
        let long = "é".repeat(3000);
        let cut = truncate_message(&long, MAX_LAST_ERROR_BYTES);
        assert!(cut.len() <= MAX_LAST_ERROR_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_message("short", 10), "short");
    }
}
