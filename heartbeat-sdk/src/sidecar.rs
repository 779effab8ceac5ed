//! Hooks for `heartbeat-sidecar`, which reports for another process. Not a
//! stable API: a worker linking the SDK never needs these.

use std::time::Duration;

pub use crate::beat::log_limit::LogLimiter;
pub use crate::beat::probe::{ProcessProbe, ProcessSample, ProcessTree};
pub use crate::config::env;
pub use crate::config::target::{StoreChoice, Target};
pub use crate::model::control::{ControlAnswer, ControlError, ControlRequest, PoolImpact, Verb};
pub use crate::model::row::FinalState;
pub use crate::model::text::{truncate_message, MAX_LAST_ERROR_BYTES};
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
