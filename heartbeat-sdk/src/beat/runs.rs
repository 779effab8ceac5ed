//! Runs: one cycle of a polling worker, one cron job, one `once` command.
//! Their record (state, times, totals, a bounded summary) is what the row's
//! run columns carry; the handle's `Run` guard writes it.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::clock::now_micros;
use crate::model::text::{truncate_message, MAX_RUN_SUMMARY_BYTES};

#[derive(Debug, Default)]
pub(crate) struct Runs {
    record: Mutex<RunRecord>,
}

/// What the row says about runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RunRecord {
    /// Runs started and not finished (usually 0 or 1).
    pub in_flight: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run_ms: Option<u64>,
    pub total: u64,
    pub failed: u64,
    pub summary: Option<String>,
    /// Whether the latest finished run succeeded.
    pub last_succeeded: Option<bool>,
}

impl RunRecord {
    /// `running`, `succeeded` or `failed`; `None` before the first run.
    pub fn state(&self) -> Option<&'static str> {
        if self.in_flight > 0 {
            Some("running")
        } else {
            self.last_succeeded
                .map(|ok| if ok { "succeeded" } else { "failed" })
        }
    }

    /// True once a run has started.
    pub fn any(&self) -> bool {
        self.started_at.is_some()
    }
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn started(&self) {
        let mut r = self.lock();
        r.in_flight = r.in_flight.saturating_add(1);
        r.started_at = Some(now_micros());
    }

    /// Records the end of a run that took `took`; `summary` is kept bounded
    /// (an empty one clears the previous).
    pub fn finished(&self, took: Duration, succeeded: bool, summary: &str) {
        let now = now_micros();
        let mut r = self.lock();
        r.in_flight = r.in_flight.saturating_sub(1);
        r.finished_at = Some(now);
        r.last_run_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        r.total += 1;
        if succeeded {
            r.last_success_at = Some(now);
        } else {
            r.failed += 1;
        }
        r.last_succeeded = Some(succeeded);
        r.summary = (!summary.is_empty()).then(|| truncate_message(summary, MAX_RUN_SUMMARY_BYTES));
    }

    pub fn snapshot(&self) -> RunRecord {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_running_then_succeeded_or_failed_and_counted() {
        let runs = Runs::default();
        assert_eq!(runs.snapshot().state(), None);
        runs.started();
        assert_eq!(runs.snapshot().state(), Some("running"));
        runs.finished(Duration::from_millis(1500), true, "42 orders");
        let r = runs.snapshot();
        assert_eq!(
            (r.state(), r.total, r.failed, r.last_run_ms),
            (Some("succeeded"), 1, 0, Some(1500))
        );
        assert_eq!(r.summary.as_deref(), Some("42 orders"));
        assert!(r.last_success_at.is_some());
        runs.started();
        runs.finished(Duration::ZERO, false, &"x".repeat(5000));
        let r = runs.snapshot();
        assert_eq!((r.state(), r.total, r.failed), (Some("failed"), 2, 1));
        assert!(r
            .summary
            .as_deref()
            .is_some_and(|s| s.len() <= MAX_RUN_SUMMARY_BYTES));
    }
}
