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
//! # In libraries and in executables
//!
//! The free functions ([`increment_job`], [`increment_error`]) do nothing
//! until [`start_heartbeat`] has run, so a library may call them freely: it
//! costs one atomic load when the executable never starts a heartbeat. Only
//! the executable (the worker's `main`) starts one and keeps its handle.
//!
//! # Options
//!
//! [`Heartbeat::builder`] sets every option; [`HeartbeatBuilder::from_env`]
//! fills the ones left unset from these variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SUPABASE_URL` | project URL | none: the local store |
//! | `SUPABASE_SECRET_KEY`, `SUPABASE_SERVICE_ROLE_KEY`, `SUPABASE_SERVICE_KEY` | the key, first found wins | — |
//! | `HP_STORE` | `supabase`, `local`, or a path to a SQLite file | Supabase if `SUPABASE_URL` is set, else local |
//! | `HP_WORKER_NAME` | replaces the name given in code | — |
//! | `HP_HEARTBEAT_INTERVAL_SECS` | seconds between beats, 1 to 86400 | 30 |
//! | `HP_CIRCUIT_BREAKER_THRESHOLD` | errors in a row that open the breaker | 10 |
//! | `HP_SHUTDOWN_BUDGET_MS` | time for the final row, 1 to 60000 | 1000 |
//! | `HP_SUPABASE_SCHEMA` | schema of the table | `public` |
//! | `HP_ALLOW_INSECURE_HTTP` | `1`/`true`/`yes`/`on` allows `http://` to a non-loopback host | off |
//!
//! # Reading
//!
//! [`read::Reader`] reads every worker's row back, with the [`Health`] a
//! reader derives from it (the same rule as the SQL view `hp_worker_health`).
//!
//! # Errors
//!
//! Starting fails with a [`ConfigError`] when a setting is missing or
//! malformed; the message names the variable and the fix. What a server
//! answers is a [`SendError`] (never returned to the worker's code path:
//! logged at a bounded rate) or, when reading, a [`ReadError`].
#![deny(missing_docs)]

mod beat;
mod config;
mod handle;
mod model;
mod operate;
pub mod read;
mod run;
#[doc(hidden)]
pub mod sidecar;
mod transport;

use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

pub use config::builder::HeartbeatBuilder;
pub use config::target::StoreSettings;
pub use handle::{CheckError, Checked, Heartbeat};
pub use model::error::{ConfigError, ReadError, SendError};
pub use model::event::{Pruned, WorkerEvent};
pub use model::health::Health;
pub use model::row::{WorkerRow, WorkerStatus};
pub use model::status_row::StatusRow;
pub use run::Run;
pub use transport::{MemoryTransport, Transport};

use beat::control_state::{ControlState, Question};
use beat::shared::Shared;

/// The process-wide reporter behind the free functions.
static GLOBAL: OnceLock<Arc<Shared>> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// Starts the process-wide heartbeat for `name`, configured from the
/// environment (`SUPABASE_URL`, `SUPABASE_SECRET_KEY`, ...: see the table above).
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
        .set(Arc::clone(&heartbeat.shared))
        .map_err(|_| ConfigError::AlreadyStarted)?;
    Ok(heartbeat)
}

/// Counts a finished job for the process-wide heartbeat. Before
/// [`start_heartbeat`] it does nothing.
#[inline]
pub fn increment_job() {
    if let Some(shared) = GLOBAL.get() {
        shared.counters.job_succeeded();
    }
}

/// Counts a failed job for the process-wide heartbeat. Before
/// [`start_heartbeat`] it does nothing.
#[inline]
pub fn increment_error() {
    if let Some(shared) = GLOBAL.get() {
        shared.counters.job_failed();
    }
}

/// Notes progress for the process-wide heartbeat (see
/// [`Heartbeat::progress`]). Before [`start_heartbeat`] it does nothing.
#[inline]
pub fn progress() {
    if let Some(shared) = GLOBAL.get() {
        shared.progress.mark();
    }
}

/// Control before [`start_heartbeat`]: always active, never exiting, so a
/// library's loop runs the same with or without a reporter.
static UNSTARTED: LazyLock<ControlState> = LazyLock::new(ControlState::default);

/// The process-wide reporter's control, after noting that the code asked.
fn control(questions: &[Question]) -> &'static ControlState {
    match GLOBAL.get() {
        Some(shared) => {
            for q in questions {
                shared.asked(*q);
            }
            &shared.control
        }
        None => &UNSTARTED,
    }
}

/// [`Heartbeat::should_pause`] for the process-wide heartbeat; false before
/// [`start_heartbeat`].
pub fn should_pause() -> bool {
    control(&[Question::Pause]).should_pause()
}

/// [`Heartbeat::should_exit`] for the process-wide heartbeat; false before
/// [`start_heartbeat`].
pub fn should_exit() -> bool {
    control(&[Question::Exit]).should_exit()
}

/// [`Heartbeat::run_now_requested`] for the process-wide heartbeat; false
/// before [`start_heartbeat`].
pub fn run_now_requested() -> bool {
    control(&[Question::RunNow]).take_run_now()
}

/// [`Heartbeat::wait_while_paused`] for the process-wide heartbeat; returns
/// at once before [`start_heartbeat`].
pub fn wait_while_paused() {
    control(&[Question::Pause]).wait_while_paused();
}

/// [`Heartbeat::wait_for_next_run`] for the process-wide heartbeat; before
/// [`start_heartbeat`] it only keeps the interval.
pub fn wait_for_next_run(interval: Duration) -> bool {
    control(&[Question::Pause, Question::Exit, Question::RunNow]).wait_for_next_run(interval)
}

/// [`Heartbeat::start_run`] for the process-wide heartbeat; before
/// [`start_heartbeat`] the guard records nothing.
pub fn start_run() -> Run {
    run::Run::start(GLOBAL.get().map(Arc::clone))
}
