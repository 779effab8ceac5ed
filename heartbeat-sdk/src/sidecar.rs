//! Hooks for `heartbeat-sidecar`, which reports for another process. Not a
//! stable API: a worker linking the SDK never needs these.

use std::time::Duration;

pub use crate::beat::backoff::Backoff;
pub use crate::beat::log_limit::LogLimiter;
pub use crate::beat::probe::{ProcessProbe, ProcessSample, ProcessTree};
pub use crate::config::env;
pub use crate::config::target::{StoreChoice, Target};
pub use crate::model::alert::{AlertBatch, AlertClaim};
pub use crate::model::control::{
    AuditEntry, ControlAnswer, ControlError, ControlRequest, PoolBudget, PoolImpact, Verb,
};
pub use crate::model::desired::WorkerState;
pub use crate::model::row::FinalState;
pub use crate::model::text::{truncate_message, MAX_LAST_ERROR_BYTES};
pub use crate::operate::Operator;
pub use crate::transport::notify::{address as notify_address, NotifySocket};
pub use crate::transport::sqlite::SqliteStore;

use crate::config::target::StoreSettings;
use crate::handle::Heartbeat;
use crate::model::error::ConfigError;

/// Ends reporting with a chosen final row (the sidecar says `crashed` with
/// the child's exit code), blocking at most the shutdown budget. True when
/// the row was stored.
pub fn finish(heartbeat: &Heartbeat, state: FinalState) -> bool {
    heartbeat.finish(state)
}

/// Where `settings` send rows.
///
/// # Errors
/// The [`ConfigError`] a start would return.
pub fn resolve(settings: &StoreSettings) -> Result<Target, ConfigError> {
    settings.resolve()
}

/// The key's kind and where it came from (never the key itself).
pub fn describe_key(settings: &StoreSettings) -> Option<String> {
    settings.key_description()
}

/// The shutdown budget a heartbeat was built with.
pub fn shutdown_budget(heartbeat: &Heartbeat) -> Duration {
    heartbeat.shared.shutdown_budget
}

/// Wakes whenever control changes (a request applied, shutdown begun): the
/// sidecar steers its child from [`control_state`].
pub fn control_changes(heartbeat: &Heartbeat) -> tokio::sync::watch::Receiver<u64> {
    heartbeat.shared.control.subscribe()
}

/// What operators want of the worker now: active, paused, or a drain or
/// restart to carry out.
pub fn control_state(heartbeat: &Heartbeat) -> WorkerState {
    heartbeat.shared.control.state()
}

/// True once per run-now request (several before a look are one).
pub fn take_run_now(heartbeat: &Heartbeat) -> bool {
    heartbeat.shared.control.take_run_now()
}

/// The drain or restart was carried out in place: the state is what
/// `desired` says again, and the row says so soon.
pub fn control_done(heartbeat: &Heartbeat) {
    heartbeat.shared.control.settle();
    heartbeat.shared.row_changed();
}

/// How the sidecar honours each verb, for the row's `controls` (verb ->
/// how, or `"no"`).
pub fn set_controls(heartbeat: &Heartbeat, controls: serde_json::Map<String, serde_json::Value>) {
    heartbeat.shared.control.set_controls_by_sidecar(controls);
    heartbeat.shared.row_changed();
}

/// Something the row shows changed (a new child's pid): written soon, at
/// most once a second.
pub fn row_changed(heartbeat: &Heartbeat) {
    heartbeat.shared.row_changed();
}

/// Waits (at most `limit`) until the first look at the worker's control row
/// is over, found or not: `once` decides from it whether to run. False when
/// it was not over in time (the store is slow or unreachable).
pub fn wait_first_control_read(heartbeat: &Heartbeat, limit: Duration) -> bool {
    heartbeat.shared.control.wait_first_read(limit)
}

/// How long ago the worker last showed progress (`None`: never).
pub fn progress_since(heartbeat: &Heartbeat) -> Option<Duration> {
    heartbeat.shared.progress.since()
}

/// The sidecar started its child again (a restart in place, a resume): from
/// the next row, a new `instance_id` and `started_at`, as a new process of
/// the worker has; the row is written soon.
pub fn new_instance(heartbeat: &Heartbeat) {
    heartbeat.shared.new_instance();
}

/// The first child is there (its pid in the probe), or the sidecar decided
/// to start none (paused): a first beat held by `hold_first_beat` may go.
pub fn process_ready(heartbeat: &Heartbeat) {
    heartbeat.shared.process_ready();
}
