//! Every environment variable hp-heartbeat reads, and every default, in one
//! place: the SDK's builder and the sidecar's flags both take them from here.

use std::time::Duration;

use crate::model::health::DEFAULT_INTERVAL_SECONDS;

/// Project URL.
pub const URL: &str = "SUPABASE_URL";
/// API keys, first found wins.
pub const KEYS: [&str; 3] = [
    "SUPABASE_SECRET_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SERVICE_KEY",
];
/// Overrides the worker name given in code.
pub const WORKER_NAME: &str = "HP_WORKER_NAME";
/// `supabase`, `local`, or a path to the local SQLite store.
pub const STORE: &str = "HP_STORE";
/// Beat interval in whole seconds (at least 1).
pub const INTERVAL: &str = "HP_HEARTBEAT_INTERVAL_SECS";
/// Errors in a row that open the breaker.
pub const BREAKER_THRESHOLD: &str = "HP_CIRCUIT_BREAKER_THRESHOLD";
/// Final-row budget in milliseconds.
pub const SHUTDOWN_BUDGET: &str = "HP_SHUTDOWN_BUDGET_MS";
/// Schema of the table.
pub const SCHEMA: &str = "HP_SUPABASE_SCHEMA";
/// Allows plain http to a non-loopback host (see [`parse_bool`]).
pub const ALLOW_INSECURE_HTTP: &str = "HP_ALLOW_INSECURE_HTTP";
/// The worker's version (sidecar).
pub const WORKER_VERSION: &str = "HP_WORKER_VERSION";
/// A signed-in operator's token for the operator commands (the database
/// takes the actor from it).
pub const OPERATOR_JWT: &str = "HP_OPERATOR_JWT";
/// The project's publishable key, sent with [`OPERATOR_JWT`].
pub const PUBLISHABLE_KEY: &str = "SUPABASE_PUBLISHABLE_KEY";
/// The worker's pool (budgets are per pool).
pub const POOL: &str = "HP_POOL";
/// Seconds between polls of the worker's control row (0: only at beats).
pub const CONTROL_POLL: &str = "HP_CONTROL_POLL_SECS";
/// A run longer than this many seconds reads as hung.
pub const MAX_RUN: &str = "HP_MAX_RUN_SECS";
/// No progress for this many seconds reads as hung.
pub const WATCHDOG: &str = "HP_WATCHDOG_SECS";
/// systemd's `StateDirectory=` (the local store goes there when set).
pub const STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// Default beat interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(DEFAULT_INTERVAL_SECONDS as u64);
/// Default number of errors in a row that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 10;
/// Default time the final row may take: below PM2's 1.6 s kill timeout.
pub const DEFAULT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(1);
/// Default TCP + TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pool.
pub const DEFAULT_POOL: &str = "default";
/// Default time between polls of the control row.
pub const DEFAULT_CONTROL_POLL: Duration = Duration::from_secs(5);
/// Default schema.
pub const DEFAULT_SCHEMA: &str = "public";

/// The one grammar for on/off values: `1`, `true`, `yes`, `on` and `0`,
/// `false`, `no`, `off` (any case); `None` for anything else.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// What [`parse_bool`] accepts, for error messages.
pub const BOOL_VALUES: &str = "1, true, yes, on or 0, false, no, off";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_boolean_grammar() {
        for on in ["1", "true", "TRUE", "yes", "on", " On "] {
            assert_eq!(parse_bool(on), Some(true), "{on}");
        }
        for off in ["0", "false", "no", "off", "OFF"] {
            assert_eq!(parse_bool(off), Some(false), "{off}");
        }
        for bad in ["", "2", "y", "enable"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }
}
