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
use crate::beat::probe::{ProcessProbe, ProcessSample};
use crate::beat::shared::Shared;
use crate::model::clock::now_micros;
use crate::model::desired::{DesiredControl, WorkerState};
use crate::model::error::{ReadError, SendError};
use crate::model::health::Health;
use crate::model::row::{
    FinalState, GapReport, WorkerRow, WorkerStatus, CONTROL_COLUMNS, LIVENESS_COLUMNS, RUN_COLUMNS,
};
use crate::model::text::fit_row;
use crate::transport::{ControlSource, Transport};

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
    /// A second beat this soon after the first (the sidecar's child has
    /// loaded by then; its first sample came too early to mean much).
    pub settle_beat: Option<Duration>,
    /// The first beat waits (at most [`FIRST_BEAT_HOLD`]) for the sidecar's
    /// word that its child is there.
    pub hold_first_beat: bool,
    pub pool: String,
    /// A run longer than this reads as hung.
    pub max_run: Option<Duration>,
    /// No progress for this long reads as hung.
    pub watchdog: Option<Duration>,
}

/// How the loop learns of control: where it reads the worker's control row
/// and how often.
pub(crate) struct ControlPoll {
    pub source: Box<dyn ControlSource>,
    /// Zero: only after beats.
    pub every: Duration,
}

pub(crate) struct BeatLoop {
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub transport: Box<dyn Transport>,
    /// `None`: this reporter obeys nothing (a transport given in code, or a
    /// sidecar that cannot steer its child).
    control: Option<ControlPoll>,
    /// The table lacks the control columns (or the run columns): rows leave
    /// them out, so an older migration never costs a beat.
    lacks_control_columns: bool,
    lacks_run_columns: bool,
    lacks_liveness_columns: bool,
    /// The control table is missing: read only after beats until it appears.
    control_table_missing: bool,
    /// When the last send started: writes for a change are at most one a second.
    last_send: Option<Instant>,
    probe: Box<dyn ProcessProbe>,
    rng: fastrand::Rng,
    /// One line per kind of failure per 5 minutes; a success does not reset
    /// it, so a flapping server is not a flood.
    logs: LogLimiter,
    /// Beats that failed since the last success: the next row that gets
    /// through carries them as its reporting gap.
    failed_beats: u64,
    /// When the first of them was due (the worker's clock).
    gap_started: Option<DateTime<Utc>>,
    /// This instance has not yet cleared the previous instance's gap.
    gap_unset: bool,
    /// The breaker's state in the previous row, to log when it opens.
    breaker_was_open: bool,
    /// No send before this: the server's `Retry-After`, capped at one interval.
    quiet_until: Option<Instant>,
}

/// What ended a wait between beats.
enum Woke {
    Stop,
    Beat,
    Poll,
    RowChanged,
}

/// How long the look at the row before the first beat may take.
const PEEK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the first control read may take when the sidecar waits on it
/// (the sidecar gives up at 5 s and starts its child anyway).
const FIRST_READ_FOR_SIDECAR: Duration = Duration::from_secs(4);
/// How long the first beat waits for the sidecar's child.
const FIRST_BEAT_HOLD: Duration = Duration::from_secs(2);
/// How long one read of the control row may take.
const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes for a change (a run, control applied) are at least this far apart.
const CHANGE_WRITE_GAP: Duration = Duration::from_secs(1);

/// Whether a process of this host with this pid is alive (a zombie, dead
/// and not yet reaped, is not).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends with the last ')'.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
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
            control: None,
            lacks_control_columns: false,
            lacks_run_columns: false,
            lacks_liveness_columns: false,
            control_table_missing: false,
            last_send: None,
            logs: LogLimiter::new(LOG_EVERY),
            failed_beats: 0,
            gap_started: None,
            gap_unset: true,
            breaker_was_open: false,
            quiet_until: None,
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

    /// Reads control from `poll` (without it the reporter obeys nothing).
    pub fn with_control(mut self, poll: Option<ControlPoll>) -> Self {
        self.control = poll;
        self
    }

    /// The earliest a write for a change may go: now, or a second after the last send.
    fn soonest_change_write(&self) -> Instant {
        let now = Instant::now();
        self.last_send
            .map_or(now, |last| now.max(last + CHANGE_WRITE_GAP))
    }

    pub async fn run(mut self) {
        tracing::info!(
            worker = %self.identity.worker_name,
            "heartbeat: reporting to {} every {} s",
            self.transport.describe(),
            self.identity.interval.as_secs()
        );
        let mut stop = self.shared.subscribe_stop();
        let shared = Arc::clone(&self.shared);
        let start = Instant::now();
        self.warn_if_the_name_is_taken().await;
        // The first beat already says what control found at start (and the
        // sidecar decides from it whether to start its child at all). Both
        // looks take at most a second each.
        // The sidecar waits on this read before it starts its child (a paused
        // worker must not start): it may take longer than a peek.
        let first_read = if self.identity.hold_first_beat {
            FIRST_READ_FOR_SIDECAR
        } else {
            PEEK_TIMEOUT
        };
        self.read_control(Instant::now() + first_read).await;
        self.shared.control.first_read_done();
        if self.identity.hold_first_beat {
            tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => {}
                _ = timeout(FIRST_BEAT_HOLD, shared.wait_process_ready()) => {}
            }
        }
        let mut next_beat = start;
        'beats: loop {
            let mut following = next_beat + jittered(self.identity.interval, self.rng.f64());
            if let Some(settle) = self.identity.settle_beat.filter(|_| next_beat == start) {
                following = following.min(start + settle);
            }
            let delivered = tokio::select! {
                biased;
                _ = stop.wait_for(Option::is_some) => break,
                at = self.beat(following) => at,
            };
            let gap = following - next_beat;
            next_beat = following;
            // A retry that got through late in a beat is that beat: the next
            // one is most of the gap after it, never right behind it. (The
            // gap, not the interval: the settle beat stays two seconds out.)
            if let Some(at) = delivered {
                next_beat = next_beat.max(at + gap.mul_f64(0.9));
            }
            // A server that asked for quiet past the next beat gets it; the
            // beat after is an interval later (never two beats in a row).
            if let Some(quiet) = self.quiet_until.take() {
                next_beat = next_beat.max(quiet);
            }
            // After each beat, and every poll period until the next, learn
            // of control; a change, or a run starting or ending, is written
            // at once (at most once a second), ahead of the next beat.
            if self.read_control(next_beat).await {
                next_beat = next_beat.min(self.soonest_change_write());
            }
            loop {
                let poll_every = self
                    .control
                    .as_ref()
                    .map(|c| c.every)
                    .filter(|every| !every.is_zero() && !self.control_table_missing);
                let next_poll = poll_every.map(|every| Instant::now() + every);
                // Decided first, acted on after: the branches' futures
                // (one holds the stop channel's guard) end with the select.
                let woke = tokio::select! {
                    biased;
                    _ = stop.wait_for(Option::is_some) => Woke::Stop,
                    _ = sleep_until(next_beat) => Woke::Beat,
                    _ = sleep_until(next_poll.unwrap_or(next_beat)), if next_poll.is_some() => Woke::Poll,
                    _ = shared.wait_row_changed() => Woke::RowChanged,
                };
                match woke {
                    Woke::Stop => break 'beats,
                    Woke::Beat => break,
                    Woke::Poll => {
                        if self.read_control(next_beat).await {
                            next_beat = next_beat.min(self.soonest_change_write());
                        }
                    }
                    Woke::RowChanged => next_beat = next_beat.min(self.soonest_change_write()),
                }
            }
        }
        let final_state = stop.borrow().clone().unwrap_or_default();
        let delivered = self.send_final(&final_state).await;
        self.shared.mark_done(delivered);
    }

    /// One beat: send, retrying what can be retried, and give up before the
    /// next beat is due (which sends a fresher row anyway). A server that
    /// asked for quiet (`Retry-After`) gets it, up to one interval.
    async fn beat(&mut self, next_beat: Instant) -> Option<Instant> {
        self.note_breaker();
        let base =
            (self.identity.interval / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut backoff = Backoff::new(base, self.identity.interval / 4);
        // When this beat was first tried: the start of a gap, if it fails.
        let mut due = None;
        for attempt in 1..=MAX_TRIES_PER_BEAT {
            // Rebuilt on every try: a newer snapshot replaces an older unsent one.
            let row = self.build_row(None);
            due.get_or_insert(row.client_heartbeat);
            let started = Instant::now();
            self.last_send = Some(started);
            let sent = match timeout_at(next_beat, self.transport.send(&row)).await {
                Ok(result) => result,
                Err(_) => Err(self.transport.timed_out(next_beat - started)),
            };
            match sent {
                Ok(()) => {
                    if self.failed_beats > 0
                        && self.logs.allow("delivered again", Instant::now()).is_some()
                    {
                        tracing::info!(
                            worker = %self.identity.worker_name,
                            "heartbeat: delivered again after {} failed beat(s)",
                            self.failed_beats
                        );
                    }
                    self.failed_beats = 0;
                    self.gap_started = None;
                    self.gap_unset = false;
                    return Some(started);
                }
                Err(e) if self.drop_columns_the_table_lacks(&e) => {
                    // Sent again at once without them: not a failure of the server.
                }
                Err(e) => {
                    self.log_failure(&e);
                    let mut delay = backoff.next_delay(self.rng.f64());
                    if let Some(asked) = e.retry_after() {
                        let quiet = Instant::now() + asked.min(self.identity.interval);
                        if quiet >= next_beat {
                            self.quiet_until = Some(quiet);
                            break;
                        }
                        delay = delay.max(quiet - Instant::now());
                    }
                    let last = attempt == MAX_TRIES_PER_BEAT;
                    if last || !e.is_retryable() || Instant::now() + delay >= next_beat {
                        break;
                    }
                    sleep(delay).await;
                }
            }
        }
        if self.failed_beats == 0 {
            self.gap_started = due;
        }
        self.failed_beats += 1;
        None
    }

    /// Two live reporters under one name overwrite each other's row: say so
    /// once at start. A row of the same host whose process is gone is this
    /// worker's previous life (killed before its final row), not a duplicate.
    async fn warn_if_the_name_is_taken(&mut self) {
        let name = self.identity.worker_name.clone();
        let row = match timeout(PEEK_TIMEOUT, self.transport.read_row(&name)).await {
            Ok(Ok(Some(row))) => row,
            _ => return,
        };
        let fresh = row.health(Utc::now()) == Health::Running
            || (row.worker_status() == WorkerStatus::Running
                && row.health(Utc::now()) == Health::Crashed);
        if !fresh || row.instance_id.as_deref() == Some(self.identity.instance_id.as_str()) {
            return;
        }
        let same_host = row.hostname.is_some() && row.hostname == self.identity.hostname;
        let pid = row.pid.and_then(|p| i32::try_from(p).ok());
        if same_host && pid.is_some_and(|p| !process_alive(p)) {
            return;
        }
        let seen = row
            .last_heartbeat
            .map(|t| format!("{} s ago", (Utc::now() - t).num_seconds().max(0)))
            .unwrap_or_else(|| "recently".into());
        tracing::warn!(
            worker = %name,
            "heartbeat: another instance already reports as {name:?} (host {}, pid {}, last beat {seen}): two reporters with one name overwrite each other's row; give each its own name (under PM2 with instances, heartbeat-sidecar's --instance-suffix)",
            row.hostname.as_deref().unwrap_or("unknown"),
            row.pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
        );
    }

    /// A table older than the SDK (PGRST204 naming a control or run column):
    /// rows leave that group out from now on, said once with the fix. True
    /// when a group was dropped, so the row is worth sending again.
    fn drop_columns_the_table_lacks(&mut self, e: &SendError) -> bool {
        let SendError::UnknownColumn { message, .. } = e else {
            return false;
        };
        let column = message
            .split_once("the '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(column, _)| column);
        let Some(column) = column else {
            return false;
        };
        let (flag, migration, what) = if CONTROL_COLUMNS.contains(&column) {
            (
                &mut self.lacks_control_columns,
                "sql/20261124000001_hp_control.sql",
                "pool and control state",
            )
        } else if LIVENESS_COLUMNS.contains(&column) {
            (
                &mut self.lacks_liveness_columns,
                "sql/20261201000001_hp_liveness.sql",
                "liveness (progress, watchdog, reporting gaps)",
            )
        } else if RUN_COLUMNS.contains(&column) {
            (
                &mut self.lacks_run_columns,
                "sql/20261125000001_hp_runs.sql",
                "runs",
            )
        } else {
            return false;
        };
        if *flag {
            return false;
        }
        *flag = true;
        tracing::warn!(
            worker = %self.identity.worker_name,
            "heartbeat: hp_worker_status has no column {column:?}: beats go on without the {what} columns; apply {migration} to report them"
        );
        true
    }

    /// Reads the worker's control row (after the first read, only a newer
    /// one) and applies it. True when the row should show the change now.
    /// Never fails the loop: a missing table is said once, other failures
    /// at most once per kind per 5 minutes.
    /// Never past `by`, the next beat's time: a slow or hanging store never
    /// delays a beat for the sake of control.
    async fn read_control(&mut self, by: Instant) -> bool {
        let Some(poll) = self.control.as_mut() else {
            return false;
        };
        let name = self.identity.worker_name.clone();
        let above = self.shared.control.applied_generation();
        let deadline = by.min(Instant::now() + CONTROL_READ_TIMEOUT);
        let read = timeout_at(deadline, poll.source.read_control(&name, above)).await;
        let found = match read {
            Ok(Ok(found)) => found,
            Ok(Err(ReadError::TableMissing { .. })) => {
                if !self.control_table_missing {
                    self.control_table_missing = true;
                    tracing::warn!(
                        worker = %name,
                        "heartbeat: control is off: the table hp_worker_control is missing; beats go on; apply sql/20261124000001_hp_control.sql to steer workers (read again after each beat)"
                    );
                }
                return false;
            }
            Ok(Err(e)) => {
                self.log_control_failure(&e.to_string());
                return false;
            }
            Err(_) => {
                self.log_control_failure(&format!(
                    "no answer before the next beat (at most {CONTROL_READ_TIMEOUT:?})"
                ));
                return false;
            }
        };
        if self.control_table_missing {
            self.control_table_missing = false;
            tracing::info!(worker = %name, "heartbeat: the control table is there now: control is on");
        }
        match found {
            Some(row) => self.shared.control.apply(row),
            // No row at all: nobody asked anything yet.
            None if above.is_none() => self.shared.control.apply(DesiredControl::default()),
            None => false,
        }
    }

    fn log_control_failure(&mut self, what: &str) {
        if let Some(held) = self.logs.allow("control read", Instant::now()) {
            let repeats = if held > 0 {
                format!(" ({held} more since the last report)")
            } else {
                String::new()
            };
            tracing::warn!(worker = %self.identity.worker_name, "heartbeat: control row not read (beats go on): {what}{repeats}");
        }
    }

    /// Logs the breaker opening (once per transition, at most every 5 minutes).
    fn note_breaker(&mut self) {
        let open = self.shared.counters.circuit_open();
        if open && !self.breaker_was_open && self.logs.allow("breaker", Instant::now()).is_some() {
            tracing::warn!(
                worker = %self.identity.worker_name,
                "heartbeat: circuit breaker open after {} errors in a row; the row says crashed until a job succeeds or reset_circuit() is called",
                self.shared.counters.consecutive_errors()
            );
        }
        self.breaker_was_open = open;
    }

    async fn send_final(&mut self, state: &FinalState) -> bool {
        let budget = self.shared.shutdown_budget;
        let deadline = Instant::now() + budget;
        // A table older than the SDK refuses a column group: the same row
        // without it, within the same budget (at most once per group).
        let mut sent = None;
        for _ in 0..3 {
            let row = self.build_row(Some(state));
            let result = timeout_at(deadline, self.transport.send(&row)).await;
            match result {
                Ok(Err(e)) if self.drop_columns_the_table_lacks(&e) => continue,
                other => {
                    sent = Some((row, other));
                    break;
                }
            }
        }
        let Some((row, result)) = sent else {
            return false;
        };
        match result {
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
        if self.shared.take_new_instance() {
            // The sidecar started its child again: to the store (and a
            // rollout waiting for it) this is a new instance of the worker.
            self.identity.instance_id = uuid::Uuid::new_v4().to_string();
            self.identity.started_at = now_micros();
            self.identity.started = std::time::Instant::now();
            // A new process has shown no progress yet: its watchdog starts now.
            self.shared.progress.mark();
            self.gap_unset = true;
        }
        let id = &self.identity;
        let uptime = id.started.elapsed();
        let status = match final_state {
            Some(f) => f.status,
            None if counters.breaker_open => WorkerStatus::Crashed,
            None => WorkerStatus::Running,
        };
        // A final row describes a process that is gone: no pid, memory or CPU.
        let ended = final_state.is_some_and(|f| f.status != WorkerStatus::Unknown);
        let sample = if ended {
            ProcessSample::default()
        } else {
            sample
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
        let mut row = WorkerRow {
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
            pool: Some(id.pool.clone()),
            state: None,
            control_generation: None,
            controls: None,
            run_state: None,
            run_started_at: None,
            run_finished_at: None,
            last_success_at: None,
            last_run_ms: None,
            runs_total: None,
            runs_failed: None,
            last_run_summary: None,
            max_run_seconds: id.max_run.map(|d| d.as_secs()),
            last_progress_at: None,
            watchdog_seconds: id.watchdog.map(|d| d.as_secs()),
            gap: None,
        };
        self.fill_liveness(&mut row);
        self.fill_control(&mut row);
        self.fill_runs(&mut row);
        if self.lacks_control_columns {
            row.without_control();
        }
        if self.lacks_run_columns {
            row.without_runs();
        }
        if self.lacks_liveness_columns {
            row.without_liveness();
        }
        fit_row(&mut row);
        row
    }

    fn fill_control(&self, row: &mut WorkerRow) {
        let control = &self.shared.control;
        if self.control.is_none() {
            // Says so, so operators are told before they ask.
            row.controls = Some(
                ["pause", "drain", "restart", "run_now"]
                    .into_iter()
                    .map(|verb| (verb.to_owned(), json!("no")))
                    .collect(),
            );
            return;
        }
        let state = match control.state() {
            exiting @ (WorkerState::Draining | WorkerState::Restarting) => exiting,
            _ => control.reported_state(),
        };
        row.state = Some(state.as_str().to_owned());
        row.control_generation = control.applied_generation();
        row.controls = Some(control.controls());
    }

    /// The last progress (with a watchdog, or once the worker showed any)
    /// and the reporting gap this row would end.
    fn fill_liveness(&self, row: &mut WorkerRow) {
        let since = self.shared.progress.since();
        if self.identity.watchdog.is_some() || since.is_some() {
            row.last_progress_at = Some(match since {
                Some(ago) => {
                    row.client_heartbeat
                        - chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::zero())
                }
                // None yet: the watchdog counts from the start.
                None => self.identity.started_at,
            });
        }
        row.gap = if self.failed_beats > 0 {
            Some(GapReport {
                missed_beats: self.failed_beats,
                gap_started_at: self.gap_started,
                gap_ended_at: Some(row.client_heartbeat),
            })
        } else if self.gap_unset {
            Some(GapReport {
                missed_beats: 0,
                gap_started_at: None,
                gap_ended_at: None,
            })
        } else {
            None
        };
    }

    fn fill_runs(&self, row: &mut WorkerRow) {
        let runs = self.shared.runs.snapshot();
        if !runs.any() {
            return;
        }
        row.run_state = runs.state().map(str::to_owned);
        row.run_started_at = runs.started_at;
        row.run_finished_at = runs.finished_at;
        row.last_success_at = runs.last_success_at;
        row.last_run_ms = runs.last_run_ms;
        row.runs_total = Some(runs.total);
        row.runs_failed = Some(runs.failed);
        row.last_run_summary = runs.summary;
    }
}

/// `interval` moved by up to ±10%, so a fleet started together spreads out.
pub(crate) fn jittered(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The loop on a paused tokio clock, with a transport that answers from a
    //! script: retries, jitter, giving up before the next beat, the breaker
    //! log and the shutdown budget, proven exactly in virtual time.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::beat::counters::Counters;
    use crate::transport::SendFuture;

    /// What the scripted transport does for one send.
    #[derive(Debug, Clone)]
    pub enum Step {
        Ok,
        Fail(SendError),
        Hang,
    }

    /// Answers from a script (the last step repeats), or flaps between
    /// success and an error every period; records each send.
    #[derive(Clone, Default)]
    pub struct Scripted {
        script: Arc<Mutex<VecDeque<Step>>>,
        flap: Option<(Instant, Duration, SendError)>,
        pub sent: Arc<Mutex<Vec<(Instant, WorkerRow)>>>,
    }

    impl Scripted {
        pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Scripted {
                script: Arc::new(Mutex::new(steps.into_iter().collect())),
                flap: None,
                sent: Arc::default(),
            }
        }
        /// Succeeds for `period`, fails with `error` for `period`, and so on.
        pub fn flapping(period: Duration, error: SendError) -> Self {
            Scripted {
                flap: Some((Instant::now(), period, error)),
                ..Scripted::default()
            }
        }
        pub fn times(&self, start: Instant) -> Vec<Duration> {
            self.sent
                .lock()
                .map(|s| s.iter().map(|(t, _)| *t - start).collect())
                .unwrap_or_default()
        }
        pub fn rows(&self) -> Vec<WorkerRow> {
            self.sent
                .lock()
                .map(|s| s.iter().map(|(_, r)| r.clone()).collect())
                .unwrap_or_default()
        }
    }

    impl Transport for Scripted {
        fn send<'a>(&'a mut self, row: &'a WorkerRow) -> SendFuture<'a> {
            if let Ok(mut sent) = self.sent.lock() {
                sent.push((Instant::now(), row.clone()));
            }
            let step = match &self.flap {
                Some((start, period, error)) => {
                    let phase = (Instant::now() - *start).as_millis() / period.as_millis();
                    Some(if phase % 2 == 0 {
                        Step::Ok
                    } else {
                        Step::Fail(error.clone())
                    })
                }
                None => {
                    let mut script = self.script.lock().expect("script");
                    if script.len() > 1 {
                        script.pop_front()
                    } else {
                        script.front().cloned()
                    }
                }
            };
            Box::pin(async move {
                match step.unwrap_or(Step::Ok) {
                    Step::Ok => Ok(()),
                    Step::Fail(e) => Err(e),
                    Step::Hang => std::future::pending().await,
                }
            })
        }
        fn describe(&self) -> String {
            "a script".into()
        }
    }

    struct FixedProbe;
    impl ProcessProbe for FixedProbe {
        fn sample(&mut self) -> ProcessSample {
            ProcessSample {
                pid: Some(4242),
                memory_rss_bytes: Some(1 << 20),
                cpu_percent: Some(0.5),
            }
        }
    }

    pub fn server_error() -> SendError {
        SendError::Server {
            status: 503,
            code: String::new(),
            message: "unavailable".into(),
            retry_after: None,
        }
    }

    fn rate_limited(after: Duration) -> SendError {
        SendError::Server {
            status: 429,
            code: String::new(),
            message: "slow down".into(),
            retry_after: Some(after),
        }
    }

    fn unauthorized() -> SendError {
        SendError::Unauthorized {
            status: 401,
            code: "PGRST301".into(),
            message: "JWT expired".into(),
        }
    }

    /// A loop over `transport`, beating every `interval`, with a fixed seed.
    pub fn beat_loop(transport: Scripted, interval: Duration, threshold: u32) -> BeatLoop {
        let shared = Arc::new(Shared::new(
            Counters::new(threshold, serde_json::Map::new()),
            Duration::from_secs(1),
        ));
        let identity = Identity {
            worker_name: "scripted".into(),
            hostname: None,
            started_at: now_micros(),
            started: std::time::Instant::now(),
            instance_id: "00000000-0000-0000-0000-000000000000".into(),
            version: None,
            reporter: "test".into(),
            interval,
            settle_beat: None,
            hold_first_beat: false,
            pool: "default".into(),
            max_run: None,
            watchdog: None,
        };
        BeatLoop::new(
            shared,
            identity,
            Box::new(transport),
            Box::new(FixedProbe),
            fastrand::Rng::with_seed(7),
        )
    }

    /// Log lines written on this thread while the guard lives.
    ///
    /// One process-wide subscriber writes each event to its thread's buffer:
    /// per-test (`set_default`) subscribers race with tracing's callsite
    /// interest cache when tests run in parallel, and miss lines.
    pub struct Logs(Arc<Mutex<Vec<u8>>>);

    thread_local! {
        static BUFFER: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
            const { std::cell::RefCell::new(None) };
    }

    pub struct Capturing;
    impl Drop for Capturing {
        fn drop(&mut self) {
            BUFFER.with(|b| b.borrow_mut().take());
        }
    }

    impl Logs {
        pub fn capture() -> (Logs, Capturing) {
            static GLOBAL: std::sync::Once = std::sync::Once::new();
            GLOBAL.call_once(|| {
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(|| ThreadWriter)
                    .with_ansi(false)
                    .without_time()
                    .finish();
                let _ = tracing::subscriber::set_global_default(subscriber);
            });
            let buffer = Arc::new(Mutex::new(Vec::new()));
            BUFFER.with(|b| *b.borrow_mut() = Some(Arc::clone(&buffer)));
            (Logs(buffer), Capturing)
        }
        pub fn lines(&self, containing: &str) -> usize {
            let text = String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned();
            text.lines().filter(|l| l.contains(containing)).count()
        }
    }

    /// Writes to the current thread's capture buffer, if it has one.
    struct ThreadWriter;
    impl std::io::Write for ThreadWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            BUFFER.with(|b| {
                if let Some(buffer) = b.borrow().as_ref() {
                    buffer.lock().expect("logs").extend_from_slice(buf);
                }
            });
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(30);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(i, 0.5), Duration::from_secs(30));
        assert!(jittered(i, 0.999_999) <= Duration::from_secs(33));
    }

    #[tokio::test(start_paused = true)]
    async fn first_beat_at_once_then_every_interval_within_jitter() {
        let transport = Scripted::new([Step::Ok]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(30 * 20 + 1)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(
            times.first(),
            Some(&Duration::ZERO),
            "the first beat goes out at start"
        );
        assert!(times.len() >= 19, "{times:?}");
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                gap >= Duration::from_secs(27) && gap <= Duration::from_secs(33),
                "gap {gap:?} outside 30 s ± 10%"
            );
        }
        let distinct: std::collections::BTreeSet<_> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert!(distinct.len() > 5, "jitter varies the gaps: {distinct:?}");
    }

    /// The sidecar's settle beat: the second beat two seconds after the first
    /// (the child has loaded by then), then the interval again.
    #[tokio::test(start_paused = true)]
    async fn a_settle_beat_comes_two_seconds_after_the_first() {
        let transport = Scripted::new([Step::Ok]);
        let start = Instant::now();
        let mut beats = beat_loop(transport.clone(), Duration::from_secs(30), 10);
        beats.identity.settle_beat = Some(Duration::from_secs(2));
        let task = tokio::spawn(beats.run());
        tokio::time::sleep(Duration::from_secs(70)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(
            &times[..2],
            &[Duration::ZERO, Duration::from_secs(2)],
            "{times:?}"
        );
        let gap = times[2] - times[1];
        assert!(
            gap >= Duration::from_secs(27) && gap <= Duration::from_secs(33),
            "{times:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_is_retried_with_backoff_at_most_four_times_per_beat() {
        let transport = Scripted::new([Step::Fail(server_error())]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(20)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(times.len(), MAX_TRIES_PER_BEAT as usize, "{times:?}");
        // Base 1 s (interval / 20, capped): equal jitter gives [0.5, 1), [1, 2), [2, 4).
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, (lo, hi)) in gaps.iter().zip([(500, 1000), (1000, 2000), (2000, 4000)]) {
            assert!(
                *gap >= Duration::from_millis(lo) && *gap < Duration::from_millis(hi),
                "{gaps:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn then_it_recovers_and_sends_the_newest_totals() {
        let transport = Scripted::new([
            Step::Fail(server_error()),
            Step::Fail(server_error()),
            Step::Ok,
        ]);
        let beat = beat_loop(transport.clone(), Duration::from_secs(30), 10);
        let shared = Arc::clone(&beat.shared);
        let task = tokio::spawn(beat.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        shared.counters.job_succeeded();
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        let rows = transport.rows();
        assert_eq!(rows.len(), 3, "two failures, then delivered");
        assert_eq!(rows[0].jobs_processed, 0);
        assert_eq!(rows[2].jobs_processed, 1, "each retry rebuilds the row");
    }

    #[tokio::test(start_paused = true)]
    async fn the_beat_after_twenty_undelivered_ones_carries_the_gap_then_the_row_keeps_it() {
        let mut script = vec![Step::Ok];
        script.extend(std::iter::repeat_n(Step::Fail(unauthorized()), 20));
        script.push(Step::Ok);
        let transport = Scripted::new(script);
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 100).run());
        tokio::time::sleep(Duration::from_secs(30 * 24)).await;
        task.abort();
        let rows = transport.rows();
        assert!(rows.len() >= 23, "{} rows", rows.len());
        let clear = GapReport {
            missed_beats: 0,
            gap_started_at: None,
            gap_ended_at: None,
        };
        assert_eq!(rows[0].gap, Some(clear), "a first beat clears an old gap");
        assert_eq!(
            rows[1].gap, None,
            "the first undelivered beat knows of no gap"
        );
        for (k, row) in rows.iter().enumerate().take(21).skip(2) {
            assert_eq!(
                row.gap.map(|g| g.missed_beats),
                Some(k as u64 - 1),
                "each try says the gap so far"
            );
        }
        assert_eq!(
            rows[21].gap,
            Some(GapReport {
                missed_beats: 20,
                gap_started_at: Some(rows[1].client_heartbeat),
                gap_ended_at: Some(rows[21].client_heartbeat),
            }),
            "the delivered beat carries the gap"
        );
        assert_eq!(rows[22].gap, None, "then the row keeps it");
        assert_eq!(
            rows[21].status,
            WorkerStatus::Running,
            "an outage is no crash"
        );
        assert_eq!(rows[21].instance_id, rows[0].instance_id, "nor a restart");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_waiting_cannot_fix_is_not_retried_within_the_beat() {
        let transport = Scripted::new([Step::Fail(unauthorized())]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(95)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(times.len(), 4, "one send per beat: {times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_send_is_given_up_when_the_next_beat_is_due() {
        let transport = Scripted::new([Step::Hang, Step::Ok]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(40)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(times.len(), 2, "{times:?}");
        assert!(
            times[1] >= Duration::from_secs(27) && times[1] <= Duration::from_secs(33),
            "the next beat goes out on time: {times:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_failures_logs_one_line_per_five_minutes() {
        let (logs, _guard) = Logs::capture();
        let transport = Scripted::new([Step::Fail(server_error())]);
        let beat = beat_loop(transport.clone(), Duration::from_secs(30), 10);
        let run = beat.run();
        tokio::pin!(run);
        let _ = tokio::time::timeout(Duration::from_secs(3600), &mut run).await;
        let sends = transport.rows().len();
        assert!(sends >= 118 * 4, "{sends} sends");
        let lines = logs.lines("beat not stored");
        assert!((12..=13).contains(&lines), "{lines} lines in an hour");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_up_to_one_interval() {
        // Asked for 30 s with a 30 s beat: nothing in between.
        let transport = Scripted::new([Step::Fail(rate_limited(Duration::from_secs(30)))]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(95)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(times.first(), Some(&Duration::ZERO));
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                gap >= Duration::from_secs(30),
                "a send within Retry-After: {times:?}"
            );
        }
        assert!((3..=4).contains(&times.len()), "{times:?}");

        // Asked for an hour with a 10 s beat: one send per beat, no retries.
        let transport = Scripted::new([Step::Fail(rate_limited(Duration::from_secs(3600)))]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(10), 10).run());
        tokio::time::sleep(Duration::from_secs(100)).await;
        task.abort();
        let times = transport.times(start);
        assert!(
            (9..=11).contains(&times.len()),
            "capped at one interval: {times:?}"
        );
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                gap >= Duration::from_secs(9),
                "two beats in a row: {times:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_beat_after_a_quiet_period_is_an_interval_later() {
        // Quiet asked for 0.95 of an interval, the server well again after it.
        let transport = Scripted::new([
            Step::Fail(rate_limited(Duration::from_millis(950))),
            Step::Ok,
        ]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(1), 10).run());
        tokio::time::sleep(Duration::from_secs(20)).await;
        task.abort();
        let times = transport.times(start);
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                gap >= Duration::from_millis(850),
                "two beats in a row: {times:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_waited_for_within_the_beat() {
        let transport = Scripted::new([Step::Fail(rate_limited(Duration::from_secs(5))), Step::Ok]);
        let start = Instant::now();
        let task = tokio::spawn(beat_loop(transport.clone(), Duration::from_secs(30), 10).run());
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        let times = transport.times(start);
        assert_eq!(times.len(), 2, "{times:?}");
        assert!(
            times[1] >= Duration::from_secs(5),
            "retried before it was asked: {times:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_server_logs_one_line_per_kind_per_five_minutes() {
        let (logs, _guard) = Logs::capture();
        let transport = Scripted::flapping(Duration::from_secs(5), server_error());
        let beat = beat_loop(transport.clone(), Duration::from_secs(1), 10);
        let run = beat.run();
        tokio::pin!(run);
        let _ = tokio::time::timeout(Duration::from_secs(150), &mut run).await;
        assert!(transport.rows().len() > 100, "it kept beating");
        assert_eq!(
            logs.lines("beat not stored"),
            1,
            "one kind, one line in 150 s"
        );
        assert_eq!(
            logs.lines("delivered again"),
            1,
            "one recovery line per window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opening_is_logged_once_per_transition() {
        let (logs, _guard) = Logs::capture();
        let transport = Scripted::new([Step::Ok]);
        let beat = beat_loop(transport.clone(), Duration::from_secs(1), 3);
        let shared = Arc::clone(&beat.shared);
        let run = beat.run();
        tokio::pin!(run);
        for _ in 0..3 {
            shared.counters.job_failed();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut run).await;
        assert_eq!(logs.lines("circuit breaker open"), 1);
        assert!(transport
            .rows()
            .iter()
            .skip(1)
            .all(|r| r.circuit_breaker_open));
        assert!(transport
            .rows()
            .iter()
            .skip(1)
            .all(|r| r.status == WorkerStatus::Crashed));
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_row_is_bounded_by_the_shutdown_budget() {
        let transport = Scripted::new([Step::Ok, Step::Hang]);
        let beat = beat_loop(transport.clone(), Duration::from_secs(30), 10);
        let shared = Arc::clone(&beat.shared);
        let task = tokio::spawn(beat.run());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let asked = Instant::now();
        shared.request_stop(FinalState::default());
        task.await.expect("the loop ends");
        assert_eq!(
            Instant::now() - asked,
            Duration::from_secs(1),
            "exactly the budget, not a moment more"
        );
        assert!(!shared.wait_done(Duration::ZERO), "not stored, and says so");
        let last = transport.rows().pop().expect("final row");
        assert_eq!(last.status, WorkerStatus::Stopped);
    }

    /// A control row in memory, read as the stores read theirs (only a
    /// newer generation after the first read); records when it was read.
    #[derive(Clone, Default)]
    struct ScriptedControl {
        row: Arc<Mutex<Option<DesiredControl>>>,
        missing: bool,
        reads: Arc<Mutex<Vec<Instant>>>,
    }

    impl ControlSource for ScriptedControl {
        fn read_control<'a>(
            &'a mut self,
            _worker: &'a str,
            above: Option<i64>,
        ) -> crate::transport::ControlFuture<'a> {
            self.reads.lock().expect("reads").push(Instant::now());
            let answer = if self.missing {
                Err(ReadError::TableMissing {
                    status: 404,
                    code: "PGRST205".into(),
                    message: "Could not find the table 'public.hp_worker_control'".into(),
                })
            } else {
                Ok(self
                    .row
                    .lock()
                    .expect("row")
                    .filter(|r| above.is_none_or(|a| r.generation > a)))
            };
            Box::pin(std::future::ready(answer))
        }
    }

    fn obeying(transport: Scripted, control: &ScriptedControl, poll: Duration) -> BeatLoop {
        beat_loop(transport, Duration::from_secs(30), 10).with_control(Some(ControlPoll {
            source: Box::new(control.clone()),
            every: poll,
        }))
    }

    /// A request made between beats is in a row within one poll period,
    /// not at the next beat.
    #[tokio::test(start_paused = true)]
    async fn a_control_change_is_written_within_the_poll_period() {
        let transport = Scripted::new([Step::Ok]);
        let control = ScriptedControl::default();
        let start = Instant::now();
        let task = tokio::spawn(obeying(transport.clone(), &control, Duration::from_secs(5)).run());
        tokio::time::sleep(Duration::from_secs(12)).await;
        *control.row.lock().expect("row") = Some(DesiredControl {
            generation: 1,
            restart_seq: 1,
            ..DesiredControl::default()
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        task.abort();
        let rows = transport.rows();
        let times = transport.times(start);
        assert_eq!(rows[0].state.as_deref(), Some("active"));
        assert_eq!(
            rows[0].control_generation,
            Some(0),
            "no row read as generation 0"
        );
        let applied = rows
            .iter()
            .position(|r| r.state.as_deref() == Some("restarting"))
            .expect("the restart is in a row");
        assert!(times[applied] <= Duration::from_secs(17), "{times:?}");
        assert_eq!(rows[applied].control_generation, Some(1));
        assert_eq!(applied, 1, "the row right after the first: {times:?}");
    }

    /// No control table (the migration not applied): said once, beats go
    /// on, and the row is read only after beats, not every poll period.
    #[tokio::test(start_paused = true)]
    async fn a_missing_control_table_is_said_once_and_costs_one_read_per_beat() {
        let (logs, _guard) = Logs::capture();
        let transport = Scripted::new([Step::Ok]);
        let control = ScriptedControl {
            missing: true,
            ..ScriptedControl::default()
        };
        let task = tokio::spawn(obeying(transport.clone(), &control, Duration::from_secs(5)).run());
        tokio::time::sleep(Duration::from_secs(600)).await;
        task.abort();
        let beats = transport.rows().len();
        let reads = control.reads.lock().expect("reads").len();
        assert!(beats >= 19, "beats go on: {beats}");
        assert!(reads <= beats + 1, "{reads} reads for {beats} beats");
        assert_eq!(logs.lines("control is off"), 1);
        assert!(transport
            .rows()
            .iter()
            .all(|r| r.control_generation.is_none()));
    }

    /// Changes (runs starting and ending, control applied) are written at
    /// once but at most once a second, however many there are.
    #[tokio::test(start_paused = true)]
    async fn changes_are_written_at_most_once_a_second() {
        let transport = Scripted::new([Step::Ok]);
        let beats = beat_loop(transport.clone(), Duration::from_secs(30), 10);
        let shared = Arc::clone(&beats.shared);
        let start = Instant::now();
        let task = tokio::spawn(beats.run());
        for _ in 0..100 {
            shared.runs.started();
            shared.row_changed();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        task.abort();
        let times = transport.times(start);
        let within: Vec<_> = times
            .iter()
            .filter(|t| **t <= Duration::from_secs(7))
            .collect();
        assert!(within.len() >= 5 && within.len() <= 8, "{times:?}");
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(gap >= Duration::from_secs(1), "{times:?}");
        }
        assert_eq!(
            transport
                .rows()
                .last()
                .and_then(|r| r.run_state.clone())
                .as_deref(),
            Some("running")
        );
    }
}
