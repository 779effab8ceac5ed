//! The row one beat writes to `hp_worker_status`, and how a reporter ends.

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

    /// Reads a column value; anything else (or null) is `Unknown`.
    pub fn parse(value: Option<&str>) -> WorkerStatus {
        match value {
            Some("running") => WorkerStatus::Running,
            Some("stopped") => WorkerStatus::Stopped,
            Some("crashed") => WorkerStatus::Crashed,
            _ => WorkerStatus::Unknown,
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

    // Control (`sql/20261124000001_hp_control.sql`). Absent keys are not
    // sent, so a table without these columns still takes the row.
    /// The worker's pool (default `default`): budgets are per pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What the worker is doing about control: `active`, `paused`,
    /// `draining`, `restarting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The control row's generation the worker has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_generation: Option<i64>,
    /// Verb -> how the worker honours it (`"no"` when it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controls: Option<Map<String, Value>>,

    // Runs (`sql/20261125000001_hp_runs.sql`): sent once the worker has
    // started a run or set a `max_run`.
    /// `running`, `succeeded` or `failed`: the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_state: Option<String>,
    /// When the latest run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started_at: Option<DateTime<Utc>>,
    /// When the latest finished run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_finished_at: Option<DateTime<Utc>>,
    /// When a run last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    /// How long the latest finished run took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_ms: Option<u64>,
    /// Runs finished since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_total: Option<u64>,
    /// Runs failed since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_failed: Option<u64>,
    /// The latest run's summary or error, bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_summary: Option<String>,
    /// A run longer than this is hung (readers derive it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_seconds: Option<u64>,

    // Liveness (`sql/20261201000001_hp_liveness.sql`).
    /// The worker's last progress (sent with a watchdog, or once it showed any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<DateTime<Utc>>,
    /// No progress for this long is hung (readers derive it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_seconds: Option<u64>,
    /// The reporting gap this beat ends (or, on an instance's first beat,
    /// none: the previous instance's is cleared). Absent otherwise, so the
    /// row keeps the last gap.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub gap: Option<GapReport>,
}

/// Beats that could not be delivered, told by the first one that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapReport {
    /// Beats not delivered since the last one that was.
    pub missed_beats: u64,
    /// When the first of them was due (the worker's clock).
    pub gap_started_at: Option<DateTime<Utc>>,
    /// This beat (the worker's clock).
    pub gap_ended_at: Option<DateTime<Utc>>,
}

impl WorkerRow {
    /// Leaves out the control columns (for a table the control migration
    /// has not reached yet).
    pub(crate) fn without_control(&mut self) {
        self.pool = None;
        self.state = None;
        self.control_generation = None;
        self.controls = None;
    }

    /// Leaves out the liveness columns (for a table the liveness migration
    /// has not reached yet).
    pub(crate) fn without_liveness(&mut self) {
        self.last_progress_at = None;
        self.watchdog_seconds = None;
        self.gap = None;
    }

    /// Leaves out the run columns (for a table the runs migration has not
    /// reached yet).
    pub(crate) fn without_runs(&mut self) {
        self.run_state = None;
        self.run_started_at = None;
        self.run_finished_at = None;
        self.last_success_at = None;
        self.last_run_ms = None;
        self.runs_total = None;
        self.runs_failed = None;
        self.last_run_summary = None;
        self.max_run_seconds = None;
    }
}

/// Columns each later migration adds: a table without one of them gets rows
/// without that group (and one log line naming the migration).
pub(crate) const CONTROL_COLUMNS: [&str; 4] = ["pool", "state", "control_generation", "controls"];
/// See [`CONTROL_COLUMNS`].
pub(crate) const RUN_COLUMNS: [&str; 9] = [
    "run_state",
    "run_started_at",
    "run_finished_at",
    "last_success_at",
    "last_run_ms",
    "runs_total",
    "runs_failed",
    "last_run_summary",
    "max_run_seconds",
];

/// See [`CONTROL_COLUMNS`].
pub(crate) const LIVENESS_COLUMNS: [&str; 5] = [
    "last_progress_at",
    "watchdog_seconds",
    "missed_beats",
    "gap_started_at",
    "gap_ended_at",
];

/// How a reporter ends: what the final row says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalState {
    /// `Stopped` for a clean end, `Crashed` otherwise.
    pub status: WorkerStatus,
    /// The worker's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the worker, when one did.
    pub exit_signal: Option<i32>,
    /// Why it ended badly (kept in `last_error`).
    pub last_error: Option<String>,
}

impl Default for FinalState {
    fn default() -> Self {
        FinalState::new(WorkerStatus::Stopped)
    }
}

impl FinalState {
    /// A final row with this status and nothing else.
    pub fn new(status: WorkerStatus) -> Self {
        FinalState {
            status,
            exit_code: None,
            exit_signal: None,
            last_error: None,
        }
    }

    /// With the worker's exit code.
    pub fn exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// With the signal that ended the worker.
    pub fn exit_signal(mut self, signal: i32) -> Self {
        self.exit_signal = Some(signal);
        self
    }

    /// With why it ended.
    pub fn last_error(mut self, message: impl Into<String>) -> Self {
        self.last_error = Some(message.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_lowercase_and_parses_back() {
        let s = serde_json::to_string(&WorkerStatus::Crashed).unwrap_or_default();
        assert_eq!(s, "\"crashed\"");
        for st in [
            WorkerStatus::Unknown,
            WorkerStatus::Running,
            WorkerStatus::Stopped,
            WorkerStatus::Crashed,
        ] {
            assert_eq!(WorkerStatus::parse(Some(st.as_str())), st);
        }
        assert_eq!(WorkerStatus::parse(Some("paused")), WorkerStatus::Unknown);
        assert_eq!(WorkerStatus::parse(None), WorkerStatus::Unknown);
    }
}
