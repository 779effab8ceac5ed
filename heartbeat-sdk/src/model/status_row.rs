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
    /// `running`, `succeeded` or `failed`: the latest run.
    pub run_state: Option<String>,
    /// When the latest run started (the worker's clock).
    pub run_started_at: Option<DateTime<Utc>>,
    /// A run longer than this is hung.
    pub max_run_seconds: Option<i64>,
    /// The worker's last progress (its clock).
    pub last_progress_at: Option<DateTime<Utc>>,
    /// No progress for this long is hung.
    pub watchdog_seconds: Option<i64>,
    /// Beats not delivered before the one that carried this gap.
    pub missed_beats: Option<i64>,
    /// When the last reporting gap began and ended (the worker's clock).
    pub gap_started_at: Option<DateTime<Utc>>,
    /// See `gap_started_at`.
    pub gap_ended_at: Option<DateTime<Utc>>,
    /// New instances under this name, counted by the store.
    pub restarts: Option<i64>,
    /// The store's last three crashes of this worker, oldest first.
    pub recent_crashes: Option<Vec<DateTime<Utc>>>,
    /// When the previous instance ended.
    pub last_exit_at: Option<DateTime<Utc>>,
    /// How: `stopped`, `crashed` or `vanished` (no final row).
    pub last_exit_status: Option<String>,
    /// Its exit code.
    pub last_exit_code: Option<i64>,
    /// The signal that ended it.
    pub last_exit_signal: Option<i64>,
    /// Its last error.
    pub last_exit_error: Option<String>,
    /// Every other column, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn micros(d: chrono::Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
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
            run_state: None,
            run_started_at: None,
            max_run_seconds: None,
            last_progress_at: None,
            watchdog_seconds: None,
            missed_beats: None,
            gap_started_at: None,
            gap_ended_at: None,
            restarts: None,
            recent_crashes: None,
            last_exit_at: None,
            last_exit_status: None,
            last_exit_code: None,
            last_exit_signal: None,
            last_exit_error: None,
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
    /// In order: a running row is stale when `now - last_heartbeat > 2.5 *
    /// interval` (exactly at the boundary it is still fresh); a running or
    /// crashed row is flapping after three crashes within ten minutes, until
    /// ten minutes without one; a running row is crashed while its breaker is
    /// open, and hung when a run has lasted past `max_run_seconds` or there
    /// was no progress for `watchdog_seconds` (the worker's clock corrected
    /// by `last_heartbeat - client_heartbeat`).
    pub fn health(&self, now: DateTime<Utc>) -> Health {
        let flapping = || {
            self.recent_crashes
                .as_deref()
                .is_some_and(|c| crate::model::liveness::flapping(c, now))
        };
        match self.worker_status() {
            WorkerStatus::Stopped => Health::Stopped,
            WorkerStatus::Crashed if flapping() => Health::Flapping,
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
                if micros(now - last) > grace_us {
                    Health::Stale
                } else if flapping() {
                    Health::Flapping
                } else if self.circuit_breaker_open == Some(true) {
                    Health::Crashed
                } else if self.hung(now) {
                    Health::Hung
                } else {
                    Health::Running
                }
            }
        }
    }

    /// The last reporting gap: beats the worker could not deliver (its
    /// store or network was down, the worker was not), as (when it began,
    /// when it ended, beats missed), on the store's clock.
    pub fn reporting_gap(&self) -> Option<(DateTime<Utc>, DateTime<Utc>, i64)> {
        let missed = self.missed_beats.filter(|&m| m > 0)?;
        let skew = self.clock_offset();
        Some((
            self.gap_started_at? + skew,
            self.gap_ended_at? + skew,
            missed,
        ))
    }

    /// What turns the worker's stamps (`last_progress_at`, `run_started_at`,
    /// the gap's bounds) into the store's clock: the gap between the two
    /// clocks at the last beat (`last_heartbeat - client_heartbeat`), zero
    /// when either is unknown.
    pub fn clock_offset(&self) -> chrono::Duration {
        match (self.last_heartbeat, self.client_heartbeat) {
            (Some(store), Some(worker)) => store - worker,
            _ => chrono::Duration::zero(),
        }
    }

    /// A run past `max_run_seconds`, or no progress for `watchdog_seconds`.
    fn hung(&self, now: DateTime<Utc>) -> bool {
        let skew = self.clock_offset();
        let past = |since: Option<DateTime<Utc>>, limit: Option<i64>| match (since, limit) {
            (Some(since), Some(limit)) if limit > 0 => {
                micros(now - (since + skew)) > limit.saturating_mul(1_000_000)
            }
            _ => false,
        };
        // The watchdog is for a worker meant to be working: not one paused
        // or draining, nor one between runs.
        let state = self.extra.get("state").and_then(|s| s.as_str());
        let working = state.unwrap_or("active") == "active"
            && self.run_state.as_deref().unwrap_or("running") == "running";
        (self.run_state.as_deref() == Some("running")
            && past(self.run_started_at, self.max_run_seconds))
            || (working && past(self.last_progress_at, self.watchdog_seconds))
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
