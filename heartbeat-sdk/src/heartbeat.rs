//! The handle a worker holds, and the state it shares with the beat thread.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::config::HeartbeatBuilder;
use crate::row::WorkerStatus;
use crate::state::Counters;

/// How a reporter ends: the row the final beat writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalState {
    /// `Stopped` for a clean end, `Crashed` otherwise.
    pub status: WorkerStatus,
    /// The worker's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the worker, when one did.
    pub exit_signal: Option<i32>,
    /// Why it ended badly (kept in `last_error`).
    pub last_error: Option<String>,
}

impl Default for FinalState {
    fn default() -> Self {
        FinalState {
            status: WorkerStatus::Stopped,
            exit_code: None,
            exit_signal: None,
            last_error: None,
        }
    }
}

/// Shared between the handle(s), the signal thread and the beat thread.
#[derive(Debug)]
pub(crate) struct Inner {
    pub counters: Counters,
    pub shutdown_budget: Duration,
    stop: watch::Sender<Option<FinalState>>,
    done: Mutex<Option<bool>>,
    done_changed: Condvar,
    done_async: watch::Sender<bool>,
}

impl Inner {
    pub fn new(counters: Counters, shutdown_budget: Duration) -> Self {
        Inner {
            counters,
            shutdown_budget,
            stop: watch::channel(None).0,
            done: Mutex::new(None),
            done_changed: Condvar::new(),
            done_async: watch::channel(false).0,
        }
    }

    pub fn subscribe_stop(&self) -> watch::Receiver<Option<FinalState>> {
        self.stop.subscribe()
    }

    /// Asks the loop to send `state` as the final row; the first request wins.
    pub fn request_stop(&self, state: FinalState) {
        self.stop.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(state);
                true
            } else {
                false
            }
        });
    }

    pub fn mark_done(&self, delivered: bool) {
        if let Ok(mut done) = self.done.lock() {
            *done = Some(delivered);
        }
        self.done_changed.notify_all();
        self.done_async.send_replace(true);
    }

    /// Waits up to `timeout` for the final row; true when it was stored.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.done.lock() else {
            return false;
        };
        match self
            .done_changed
            .wait_timeout_while(guard, timeout, |d| d.is_none())
        {
            Ok((done, _)) => done.unwrap_or(false),
            Err(_) => false,
        }
    }

    pub async fn wait_done_async(&self) -> bool {
        let mut rx = self.done_async.subscribe();
        let _ = rx.wait_for(|d| *d).await;
        self.done
            .lock()
            .map(|d| d.unwrap_or(false))
            .unwrap_or(false)
    }
}

/// A running reporter. Dropping it sends the final `stopped` row (waiting at
/// most the shutdown budget).
///
/// Made by [`start_heartbeat`](crate::start_heartbeat) or
/// [`Heartbeat::builder`]. All methods take `&self`; share it by reference or
/// in an `Arc`.
#[must_use = "dropping the Heartbeat stops reporting at once and marks the worker stopped"]
#[derive(Debug)]
pub struct Heartbeat {
    pub(crate) inner: Arc<Inner>,
    pub(crate) worker_name: String,
}

impl Heartbeat {
    /// Starts configuring a reporter for the worker `name`.
    pub fn builder(name: impl Into<String>) -> HeartbeatBuilder {
        HeartbeatBuilder::new(name)
    }

    /// The worker name rows are written under.
    pub fn worker_name(&self) -> &str {
        &self.worker_name
    }

    /// Counts a finished job and closes the circuit breaker. A relaxed atomic add.
    #[inline]
    pub fn job_succeeded(&self) {
        self.inner.counters.job_succeeded();
    }

    /// Counts a failed job and keeps its message (bounded) as `last_error`.
    pub fn job_failed(&self, error: &dyn std::fmt::Display) {
        self.inner.counters.job_failed();
        self.inner.counters.record_error_message(&error.to_string());
    }

    /// Counts a finished job; the same as [`job_succeeded`](Self::job_succeeded).
    #[inline]
    pub fn increment_job(&self) {
        self.inner.counters.job_succeeded();
    }

    /// Counts a failed job without a message. A relaxed atomic add.
    #[inline]
    pub fn increment_error(&self) {
        self.inner.counters.job_failed();
    }

    /// Sets one key of the row's `metadata` object, sent with the next beat.
    pub fn set_metadata(&self, key: impl Into<String>, value: impl Into<Value>) {
        self.inner.counters.set_metadata(key.into(), value.into());
    }

    /// True while the circuit breaker is open (threshold errors in a row):
    /// the worker may stop taking jobs until it closes.
    pub fn circuit_open(&self) -> bool {
        self.inner.counters.circuit_open()
    }

    /// Closes the circuit breaker (the error streak starts again at zero).
    pub fn reset_circuit(&self) {
        self.inner.counters.reset_circuit();
    }

    /// Sends the final `stopped` row and stops beating. Returns true when the
    /// row was stored within the shutdown budget. Calling it again only waits.
    pub async fn shutdown(&self) -> bool {
        self.inner.request_stop(FinalState::default());
        self.inner.wait_done_async().await
    }

    /// Sends the final `stopped` row, blocking at most `timeout`. Returns
    /// true when the row was stored.
    pub fn shutdown_blocking(&self, timeout: Duration) -> bool {
        self.finish_blocking(FinalState::default(), timeout)
    }

    /// Ends reporting with a chosen final row (the sidecar uses this to say
    /// `crashed` with an exit code), blocking at most `timeout`.
    pub fn finish_blocking(&self, state: FinalState, timeout: Duration) -> bool {
        self.inner.request_stop(state);
        self.inner.wait_done(timeout)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // A little over the budget: the loop bounds the send itself.
        let wait = self.inner.shutdown_budget + Duration::from_millis(100);
        self.finish_blocking(FinalState::default(), wait);
    }
}
