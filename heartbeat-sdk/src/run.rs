//! The run guard: one cycle of the work, recorded in the row as it starts
//! and ends (the seed's `instrumentRun`).

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

use crate::beat::shared::Shared;

/// A run in progress, from [`Heartbeat::start_run`](crate::Heartbeat::start_run)
/// or [`start_run`](crate::start_run). Say how it ended with
/// [`succeeded`](Self::succeeded) or [`failed`](Self::failed); dropped
/// unfinished (an early `return`, `?`, a panic) it counts as failed.
#[must_use = "a run dropped at once is recorded as failed (abandoned)"]
#[derive(Debug)]
pub struct Run {
    shared: Option<Arc<Shared>>,
    started: Instant,
}

impl Run {
    pub(crate) fn start(shared: Option<Arc<Shared>>) -> Run {
        if let Some(shared) = &shared {
            shared.runs.started();
            shared.row_changed();
        }
        Run {
            shared,
            started: Instant::now(),
        }
    }

    /// The run succeeded; `summary` (bounded to 1 KiB, may be empty) is kept
    /// in the row. Closes the circuit breaker, as a succeeded job does.
    pub fn succeeded(mut self, summary: impl Display) {
        self.finish(true, &summary.to_string());
    }

    /// The run failed with `error`: counted as a failed job too (error
    /// count, the breaker's streak, `last_error`).
    pub fn failed(mut self, error: impl Display) {
        self.finish(false, &error.to_string());
    }

    fn finish(&mut self, succeeded: bool, summary: &str) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        if succeeded {
            shared.counters.reset_circuit();
        } else {
            shared.counters.job_failed();
            if !summary.is_empty() {
                shared.counters.record_error_message(summary);
            }
        }
        shared
            .runs
            .finished(self.started.elapsed(), succeeded, summary);
        shared.row_changed();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.shared.is_some() {
            self.finish(
                false,
                "abandoned: the run ended without succeeded() or failed() (an early return or a panic)",
            );
        }
    }
}
