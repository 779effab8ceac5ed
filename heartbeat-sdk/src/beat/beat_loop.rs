//! The beat loop: a named thread with its own current-thread runtime, so it
//! works from plain `fn main` and cannot be stalled by a busy user runtime.
//!
//! Every clock read here is tokio's and every random number comes from the
//! loop's own `Rng`, so tests run the loop on a paused clock with a seed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

use crate::beat::backoff::Backoff;
use crate::beat::log_limit::LogLimiter;
use crate::beat::probe::ProcessProbe;
use crate::beat::shared::Shared;
use crate::model::clock::now_micros;
use crate::model::error::SendError;
use crate::model::row::{FinalState, WorkerRow, WorkerStatus};
use crate::transport::Transport;

/// What stays the same for the life of one reporter.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub worker_name: String,
    pub hostname: Option<String>,
    pub started_at: DateTime<Utc>,
    pub started: std::time::Instant,
    pub instance_id: String,
    pub version: Option<String>,
    pub reporter: String,
    pub interval: Duration,
}

pub(crate) struct BeatLoop {
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub transport: Box<dyn Transport>,
    probe: Box<dyn ProcessProbe>,
    rng: fastrand::Rng,
    logs: LogLimiter,
    /// Beats that failed since the last success (for the recovery log line).
    failed_beats: u64,
    /// The breaker's state in the previous row, to log when it opens.
    breaker_was_open: bool,
    /// Its own limiter: a delivered beat clears `logs`, not this.
    breaker_logs: LogLimiter,
}

/// How often the same failure may be logged.
const LOG_EVERY: Duration = Duration::from_secs(300);
/// Sends per beat at most (the first try and its retries): an outage costs
/// the server a few requests per worker per interval, never a storm.
pub(crate) const MAX_TRIES_PER_BEAT: u32 = 4;

impl BeatLoop {
    pub fn new(
        shared: Arc<Shared>,
        identity: Identity,
        transport: Box<dyn Transport>,
        probe: Box<dyn ProcessProbe>,
        rng: fastrand::Rng,
    ) -> Self {
        BeatLoop {
            shared,
            identity,
            transport,
            probe,
            rng,
            logs: LogLimiter::new(LOG_EVERY),
            failed_beats: 0,
            breaker_was_open: false,
            breaker_logs: LogLimiter::new(LOG_EVERY),
        }
    }

    /// Runs on the current thread until a stop is requested, then sends the final row.
    pub fn run_blocking(self) {
        let shared = Arc::clone(&self.shared);
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run()),
            Err(e) => {
                tracing::error!("heartbeat: cannot start its runtime, not reporting: {e}");
                shared.mark_done(false);
            }
        }
    }

    pub async fn run(mut self) {
        tracing::info!(
            worker = %self.identity.worker_name,
            "heartbeat: reporting to {} every {} s",
            self.transport.describe(),
            self.identity.interval.as_secs()
        );
        let mut stop = self.shared.subscribe_stop();
        let mut next_beat = Instant::now();
        loop {
            let following = next_beat + jittered(self.identity.interval, self.rng.f64());
            tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => break,
                _ = self.beat(following) => {}
            }
            next_beat = following;
            tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => break,
                _ = sleep_until(next_beat) => {}
            }
        }
        let final_state = stop.borrow().clone().unwrap_or_default();
        let delivered = self.send_final(&final_state).await;
        self.shared.mark_done(delivered);
    }

    /// One beat: send, retrying what can be retried, and give up before the
    /// next beat is due (which sends a fresher row anyway).
    async fn beat(&mut self, next_beat: Instant) {
        self.note_breaker();
        let base =
            (self.identity.interval / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut backoff = Backoff::new(base, self.identity.interval / 4);
        for attempt in 1..=MAX_TRIES_PER_BEAT {
            // Rebuilt on every try: a newer snapshot replaces an older unsent one.
            let row = self.build_row(None);
            let sent = match timeout_at(next_beat, self.transport.send(&row)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::Timeout(self.identity.interval)),
            };
            match sent {
                Ok(()) => {
                    if self.failed_beats > 0 {
                        tracing::info!(
                            worker = %self.identity.worker_name,
                            "heartbeat: delivered again after {} failed beat(s)",
                            self.failed_beats
                        );
                        self.failed_beats = 0;
                        self.logs.clear();
                    }
                    return;
                }
                Err(e) => {
                    self.log_failure(&e);
                    let delay = backoff.next_delay(self.rng.f64());
                    let last = attempt == MAX_TRIES_PER_BEAT;
                    if last || !e.is_retryable() || Instant::now() + delay >= next_beat {
                        break;
                    }
                    sleep(delay).await;
                }
            }
        }
        self.failed_beats += 1;
    }

    /// Logs the breaker opening (once per transition, at most every 5 minutes).
    fn note_breaker(&mut self) {
        let open = self.shared.counters.circuit_open();
        if open
            && !self.breaker_was_open
            && self.breaker_logs.allow("breaker", Instant::now()).is_some()
        {
            tracing::warn!(
                worker = %self.identity.worker_name,
                "heartbeat: circuit breaker open after {} errors in a row; the row says crashed until a job succeeds or reset_circuit() is called",
                self.shared.counters.consecutive_errors()
            );
        }
        self.breaker_was_open = open;
    }

    async fn send_final(&mut self, state: &FinalState) -> bool {
        let row = self.build_row(Some(state));
        let budget = self.shared.shutdown_budget;
        match timeout(budget, self.transport.send(&row)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(worker = %self.identity.worker_name, "heartbeat: final `{}` row not stored: {e}", row.status.as_str());
                false
            }
            Err(_) => {
                tracing::warn!(worker = %self.identity.worker_name, "heartbeat: final `{}` row not stored within the shutdown budget of {budget:?}", row.status.as_str());
                false
            }
        }
    }

    fn log_failure(&mut self, e: &SendError) {
        if let Some(held) = self.logs.allow(&e.log_key(), Instant::now()) {
            let repeats = if held > 0 {
                format!(" ({held} more like it since the last report)")
            } else {
                String::new()
            };
            tracing::warn!(worker = %self.identity.worker_name, "heartbeat: beat not stored: {e}{repeats}");
        }
    }

    pub(crate) fn build_row(&mut self, final_state: Option<&FinalState>) -> WorkerRow {
        let counters = self.shared.counters.snapshot();
        let sample = self.probe.sample();
        let id = &self.identity;
        let uptime = id.started.elapsed();
        let status = match final_state {
            Some(f) => f.status,
            None if counters.breaker_open => WorkerStatus::Crashed,
            None => WorkerStatus::Running,
        };
        let mut metadata = counters.metadata;
        // Kept for dashboards written against the original seed row.
        metadata.entry("pid").or_insert_with(|| json!(sample.pid));
        metadata
            .entry("uptime")
            .or_insert_with(|| json!(uptime.as_secs_f64()));
        metadata
            .entry("memory")
            .or_insert_with(|| json!({ "rss": sample.memory_rss_bytes }));
        let last_error = final_state
            .and_then(|f| f.last_error.clone())
            .or(counters.last_error);
        WorkerRow {
            worker_name: id.worker_name.clone(),
            status,
            client_heartbeat: now_micros(),
            jobs_processed: counters.jobs,
            error_count: counters.errors,
            circuit_breaker_open: counters.breaker_open,
            metadata,
            pid: sample.pid,
            hostname: id.hostname.clone(),
            started_at: id.started_at,
            uptime_seconds: uptime.as_secs(),
            memory_rss_bytes: sample.memory_rss_bytes,
            cpu_percent: sample.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
            version: id.version.clone(),
            reporter: id.reporter.clone(),
            instance_id: id.instance_id.clone(),
            consecutive_errors: counters.consecutive_errors,
            last_error,
            exit_code: final_state.and_then(|f| f.exit_code),
            exit_signal: final_state.and_then(|f| f.exit_signal),
            heartbeat_interval_seconds: u32::try_from(id.interval.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

/// `interval` moved by up to ±10%, so a fleet started together spreads out.
pub(crate) fn jittered(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(30);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(i, 0.5), Duration::from_secs(30));
        assert!(jittered(i, 0.999_999) <= Duration::from_secs(33));
    }
}
