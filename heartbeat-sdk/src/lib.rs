//! Tell one Postgres table, `hp_worker_status`, that a worker is alive, how
//! many jobs it has done and how it fails.
//!
//! # Quickstart
//!
//! ```no_run
//! fn main() -> Result<(), heartbeat_sdk::ConfigError> {
//!     // Reads SUPABASE_URL and SUPABASE_SECRET_KEY; the first beat goes out now.
//!     let _hb = heartbeat_sdk::start_heartbeat("mission-worker")?;
//!     loop {
//!         match do_job() {
//!             Ok(()) => heartbeat_sdk::increment_job(),
//!             Err(_) => heartbeat_sdk::increment_error(),
//!         }
//!     #   break;
//!     }
//!     Ok(())
//! }
//! # fn do_job() -> Result<(), ()> { Ok(()) }
//! ```
//!
//! The row `mission-worker` turns `running` at once and is refreshed every
//! 30 s; on SIGTERM/SIGINT, or when `_hb` is dropped, it turns `stopped`.
//!
//! # How it behaves
//!
//! - `increment_*` are relaxed atomic adds; nothing on the worker's path
//!   waits on the network, takes a lock or allocates.
//! - Beats run on a thread named `hp-heartbeat` with its own single-threaded
//!   tokio runtime, so this works from plain `fn main` and inside any runtime.
//! - Rows carry absolute totals; a lost beat loses nothing. Retries back off
//!   with jitter and give up before the next beat is due.
//! - Circuit breaker: after 10 errors with no success between them (see
//!   [`HeartbeatBuilder::circuit_breaker_threshold`]) the row says `crashed`
//!   with `circuit_breaker_open: true`, and [`Heartbeat::circuit_open`] is
//!   true so the worker can stop taking jobs. The next success or
//!   [`Heartbeat::reset_circuit`] closes it. The breaker is a report, not a
//!   gate: the SDK never stops the worker itself.
//! - Send failures are never returned to the worker: each distinct failure is
//!   logged through `tracing` at most once per 5 minutes, with its fix.
//!
//! # Options
//!
//! [`Heartbeat::builder`] sets every option; [`HeartbeatBuilder::from_env`]
//! fills the ones left unset from the variables in [`config::env`].
//!
//! # Errors
//!
//! Starting fails with a [`ConfigError`] when a setting is missing or
//! malformed; the message names the variable and the fix.
#![deny(missing_docs)]

mod backoff;
pub mod config;
mod error;
mod health;
mod heartbeat;
mod key;
mod log_limit;
pub mod postgrest;
pub mod probe;
mod reporter;
mod row;
mod settings;
mod signals;
mod sqlite;
mod state;
mod status_row;
pub mod transport;

use std::sync::{Arc, Mutex, OnceLock};

pub use config::{CheckError, HeartbeatBuilder};
pub use error::{ConfigError, SendError};
pub use health::{derive_health, Health, STALE_AFTER_INTERVALS};
pub use heartbeat::{FinalState, Heartbeat};
pub use key::ApiKey;
pub use row::{truncate_message, WorkerRow, WorkerStatus, MAX_LAST_ERROR_BYTES};
pub use settings::{StoreChoice, StoreSettings, Target};
pub use sqlite::SqliteStore;
pub use status_row::StatusRow;
pub use transport::{MemoryTransport, Transport};

/// The process-wide reporter behind the free functions.
static GLOBAL: OnceLock<Arc<heartbeat::Inner>> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// Starts the process-wide heartbeat for `name`, configured from the
/// environment (`SUPABASE_URL`, `SUPABASE_SECRET_KEY`, ...; see [`config::env`]).
///
/// Keep the returned [`Heartbeat`]: dropping it sends the final `stopped` row.
///
/// # Errors
/// [`ConfigError`] for a missing or malformed setting, and
/// [`ConfigError::AlreadyStarted`] when called a second time in one process.
pub fn start_heartbeat(name: &str) -> Result<Heartbeat, ConfigError> {
    let _starting = STARTING.lock().map_err(|_| ConfigError::AlreadyStarted)?;
    if GLOBAL.get().is_some() {
        return Err(ConfigError::AlreadyStarted);
    }
    let heartbeat = Heartbeat::builder(name).from_env().start()?;
    GLOBAL
        .set(Arc::clone(&heartbeat.inner))
        .map_err(|_| ConfigError::AlreadyStarted)?;
    Ok(heartbeat)
}

/// Counts a finished job for the process-wide heartbeat. Before
/// [`start_heartbeat`] it does nothing.
#[inline]
pub fn increment_job() {
    if let Some(inner) = GLOBAL.get() {
        inner.counters.job_succeeded();
    }
}

/// Counts a failed job for the process-wide heartbeat. Before
/// [`start_heartbeat`] it does nothing.
#[inline]
pub fn increment_error() {
    if let Some(inner) = GLOBAL.get() {
        inner.counters.job_failed();
    }
}
