//! A row as readers see it: every field optional, since tables made by the
//! seed or by older versions may lack columns or hold nulls.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::health::{derive_health, Health};
use crate::row::WorkerStatus;

/// One worker's row, read back from Supabase or the local store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRow {
    /// Primary key.
    pub worker_name: String,
    /// `unknown`, `running`, `stopped`, `crashed` (anything else reads as unknown).
    #[serde(default)]
    pub status: Option<String>,
    /// The store's clock at the last write.
    #[serde(default)]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Jobs done.
    #[serde(default)]
    pub jobs_processed: Option<i64>,
    /// Jobs failed.
    #[serde(default)]
    pub error_count: Option<i64>,
    /// Breaker state.
    #[serde(default)]
    pub circuit_breaker_open: Option<bool>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Process id.
    #[serde(default)]
    pub pid: Option<i64>,
    /// Host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Start of this instance.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds since start, at the last beat.
    #[serde(default)]
    pub uptime_seconds: Option<i64>,
    /// Resident memory.
    #[serde(default)]
    pub memory_rss_bytes: Option<i64>,
    /// CPU percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// The worker's version.
    #[serde(default)]
    pub version: Option<String>,
    /// What reported.
    #[serde(default)]
    pub reporter: Option<String>,
    /// Errors in a row.
    #[serde(default)]
    pub consecutive_errors: Option<i64>,
    /// Last error message.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Exit code of the worker (sidecar).
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Signal that ended the worker (sidecar).
    #[serde(default)]
    pub exit_signal: Option<i64>,
    /// Beat interval.
    #[serde(default)]
    pub heartbeat_interval_seconds: Option<u32>,
}

impl StatusRow {
    /// The `status` column as an enum; unknown values read as `Unknown`.
    pub fn worker_status(&self) -> WorkerStatus {
        match self.status.as_deref() {
            Some("running") => WorkerStatus::Running,
            Some("stopped") => WorkerStatus::Stopped,
            Some("crashed") => WorkerStatus::Crashed,
            _ => WorkerStatus::Unknown,
        }
    }

    /// Health at `now` (see [`derive_health`]).
    pub fn health(&self, now: DateTime<Utc>) -> Health {
        derive_health(
            self.worker_status(),
            self.last_heartbeat,
            self.heartbeat_interval_seconds,
            now,
        )
    }

    /// Unhealthy for monitoring: stale, crashed, or the breaker open.
    pub fn needs_attention(&self, now: DateTime<Utc>) -> bool {
        matches!(self.health(now), Health::Stale | Health::Crashed)
            || self.circuit_breaker_open == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_seed_row_with_nulls_and_missing_columns() {
        let row: StatusRow = serde_json::from_value(serde_json::json!({
            "worker_name": "old", "status": null, "jobs_processed": 3, "last_heartbeat": "2026-11-23T05:58:18.547+00:00"
        }))
        .expect("lenient");
        assert_eq!(row.worker_status(), WorkerStatus::Unknown);
        assert_eq!(row.jobs_processed, Some(3));
        assert!(row.last_heartbeat.is_some());
    }
}
