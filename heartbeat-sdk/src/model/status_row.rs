//! A row as readers see it: every field optional, since tables made by the
//! seed or by older versions may lack columns or hold nulls.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::health::{Health, DEFAULT_INTERVAL_SECONDS, STALE_AFTER_INTERVALS};
use crate::model::row::WorkerStatus;

/// One worker's row, read back from Supabase or the local store.
///
/// Columns this version does not know (added by a newer migration, or by
/// you) are kept in `extra`, so nothing read is lost when it is shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusRow {
    /// Primary key.
    pub worker_name: String,
    /// `unknown`, `running`, `stopped`, `crashed` (anything else reads as unknown).
    pub status: Option<String>,
    /// The store's clock at the last write.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The worker's own clock at its last beat (diagnosis only).
    pub client_heartbeat: Option<DateTime<Utc>>,
    /// Jobs done.
    pub jobs_processed: Option<i64>,
    /// Jobs failed.
    pub error_count: Option<i64>,
    /// Breaker state.
    pub circuit_breaker_open: Option<bool>,
    /// Free-form metadata.
    pub metadata: Option<Map<String, Value>>,
    /// Process id.
    pub pid: Option<i64>,
    /// Host.
    pub hostname: Option<String>,
    /// Start of this instance.
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds since start, at the last beat.
    pub uptime_seconds: Option<i64>,
    /// Resident memory.
    pub memory_rss_bytes: Option<i64>,
    /// CPU percent of one core.
    pub cpu_percent: Option<f64>,
    /// The worker's version.
    pub version: Option<String>,
    /// What reported.
    pub reporter: Option<String>,
    /// Random per start of the reporter.
    pub instance_id: Option<String>,
    /// Errors in a row.
    pub consecutive_errors: Option<i64>,
    /// Last error message.
    pub last_error: Option<String>,
    /// Exit code of the worker (sidecar).
    pub exit_code: Option<i64>,
    /// Signal that ended the worker (sidecar).
    pub exit_signal: Option<i64>,
    /// Beat interval.
    pub heartbeat_interval_seconds: Option<u32>,
    /// The store's clock at the last write of any kind.
    pub updated_at: Option<DateTime<Utc>>,
    /// Every other column, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StatusRow {
    /// A row with only a name, for building test fixtures.
    pub fn named(worker_name: impl Into<String>) -> Self {
        StatusRow {
            worker_name: worker_name.into(),
            status: None,
            last_heartbeat: None,
            client_heartbeat: None,
            jobs_processed: None,
            error_count: None,
            circuit_breaker_open: None,
            metadata: None,
            pid: None,
            hostname: None,
            started_at: None,
            uptime_seconds: None,
            memory_rss_bytes: None,
            cpu_percent: None,
            version: None,
            reporter: None,
            instance_id: None,
            consecutive_errors: None,
            last_error: None,
            exit_code: None,
            exit_signal: None,
            heartbeat_interval_seconds: None,
            updated_at: None,
            extra: Map::new(),
        }
    }

    /// The `status` column as an enum; unknown values read as `Unknown`.
    pub fn worker_status(&self) -> WorkerStatus {
        WorkerStatus::parse(self.status.as_deref())
    }

    /// Health at `now`. Keep equal to the SQL view `hp_worker_health`: a
    /// test feeds both the same rows.
    ///
    /// A running row is stale when `now - last_heartbeat > 2.5 * interval`
    /// (exactly at the boundary it is still fresh), and crashed while its
    /// circuit breaker is open.
    pub fn health(&self, now: DateTime<Utc>) -> Health {
        match self.worker_status() {
            WorkerStatus::Stopped => Health::Stopped,
            WorkerStatus::Crashed => Health::Crashed,
            WorkerStatus::Unknown => Health::Unknown,
            WorkerStatus::Running => {
                let Some(last) = self.last_heartbeat else {
                    return Health::Unknown;
                };
                let interval = self
                    .heartbeat_interval_seconds
                    .filter(|&i| i > 0)
                    .unwrap_or(DEFAULT_INTERVAL_SECONDS);
                // Microseconds, as PostgreSQL's interval arithmetic in the view.
                let grace_us = (f64::from(interval) * STALE_AFTER_INTERVALS * 1e6) as i64;
                let age_us = (now - last).num_microseconds().unwrap_or(i64::MAX);
                if age_us > grace_us {
                    Health::Stale
                } else if self.circuit_breaker_open == Some(true) {
                    Health::Crashed
                } else {
                    Health::Running
                }
            }
        }
    }

    /// Unhealthy for monitoring: stale, crashed, or the breaker open.
    pub fn needs_attention(&self, now: DateTime<Utc>) -> bool {
        self.health(now).needs_attention() || self.circuit_breaker_open == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn row(
        status: &str,
        age: Option<Duration>,
        interval: Option<u32>,
        now: DateTime<Utc>,
    ) -> StatusRow {
        let mut r = StatusRow::named("w");
        r.status = Some(status.into());
        r.last_heartbeat = age.map(|a| now - a);
        r.heartbeat_interval_seconds = interval;
        r
    }

    #[test]
    fn health_at_the_boundaries() {
        let now = Utc::now();
        let h = |status: &str, ms: Option<i64>, interval: Option<u32>| {
            row(status, ms.map(Duration::milliseconds), interval, now).health(now)
        };
        assert_eq!(h("running", Some(75_000), Some(30)), Health::Running);
        assert_eq!(h("running", Some(75_001), Some(30)), Health::Stale);
        assert_eq!(h("running", Some(2_500), Some(1)), Health::Running);
        assert_eq!(h("running", Some(2_501), Some(1)), Health::Stale);
        let just_over = row(
            "running",
            Some(Duration::microseconds(75_000_001)),
            Some(30),
            now,
        );
        assert_eq!(just_over.health(now), Health::Stale);
        assert_eq!(h("running", None, Some(30)), Health::Unknown);
        assert_eq!(
            h("running", Some(80_000), None),
            Health::Stale,
            "seed rows: 30 s"
        );
        assert_eq!(h("stopped", Some(10_000_000), Some(30)), Health::Stopped);
        assert_eq!(h("crashed", Some(10_000_000), Some(30)), Health::Crashed);
        assert_eq!(h("unknown", Some(10_000_000), Some(30)), Health::Unknown);
        assert_eq!(h("paused", Some(1), Some(30)), Health::Unknown);
    }

    #[test]
    fn an_open_breaker_is_crashed_even_when_the_status_says_running() {
        let now = Utc::now();
        let mut r = row("running", Some(Duration::seconds(1)), Some(30), now);
        r.circuit_breaker_open = Some(true);
        assert_eq!(r.health(now), Health::Crashed);
        assert!(r.needs_attention(now));
        r.last_heartbeat = Some(now - Duration::seconds(600));
        assert_eq!(
            r.health(now),
            Health::Stale,
            "silence says more than the breaker"
        );
    }

    #[test]
    fn reads_a_seed_row_with_nulls_and_missing_columns() {
        let row: StatusRow = serde_json::from_value(serde_json::json!({
            "worker_name": "old", "status": null, "jobs_processed": 3,
            "last_heartbeat": "2026-11-23T05:58:18.547+00:00", "custom_column": 7
        }))
        .expect("lenient");
        assert_eq!(row.worker_status(), WorkerStatus::Unknown);
        assert_eq!(row.jobs_processed, Some(3));
        assert!(row.last_heartbeat.is_some());
        assert_eq!(row.extra["custom_column"], 7, "unknown columns are kept");
        let back = serde_json::to_value(&row).expect("serializes");
        assert_eq!(back["custom_column"], 7);
    }
}
