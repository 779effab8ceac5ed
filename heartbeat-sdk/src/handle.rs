//! The handle a worker holds (`Heartbeat`), and how a builder becomes one:
//! `start` (the beat thread and the signal watcher) and `check` (one row).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::beat::beat_loop::{BeatLoop, ControlPoll, Identity};
use crate::beat::control_state::Question;
use crate::beat::counters::Counters;
use crate::beat::probe::OwnProcess;
use crate::beat::shared::Shared;
use crate::config::builder::HeartbeatBuilder;
use crate::config::target::Target;
use crate::model::clock::now_micros;
use crate::model::desired::WorkerState;
use crate::model::error::{ConfigError, ReadError, SendError};
use crate::model::row::{FinalState, WorkerStatus};
use crate::run::Run;
use crate::transport::postgrest::PostgrestClient;
use crate::transport::sqlite::SqliteStore;

/// A running reporter. Dropping it sends the final `stopped` row (waiting at
/// most the shutdown budget).
///
/// Made by [`start_heartbeat`](crate::start_heartbeat) or
/// [`Heartbeat::builder`]. All methods take `&self`; share it by reference or
/// in an `Arc`.
#[must_use = "dropping the Heartbeat stops reporting at once and marks the worker stopped"]
#[derive(Debug)]
pub struct Heartbeat {
    pub(crate) shared: Arc<Shared>,
    worker_name: String,
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

    /// Counts a finished job and closes the circuit breaker. A relaxed atomic
    /// add: no lock, no allocation.
    #[inline]
    pub fn job_succeeded(&self) {
        self.shared.counters.job_succeeded();
    }

    /// Notes progress: the worker is not stuck. With a
    /// [`watchdog`](crate::HeartbeatBuilder::watchdog), no progress for that
    /// long reads as `hung`. A relaxed atomic store and a monotonic clock
    /// read: call it per item of work if you like.
    #[inline]
    pub fn progress(&self) {
        self.shared.progress.mark();
    }

    /// Counts a failed job and keeps its message (bounded) as `last_error`;
    /// an empty message keeps the previous one.
    pub fn job_failed(&self, error: impl std::fmt::Display) {
        self.shared.counters.job_failed();
        let message = error.to_string();
        if !message.is_empty() {
            self.shared.counters.record_error_message(&message);
        }
    }

    /// Sets one key of the row's `metadata` object, sent with the next beat.
    pub fn set_metadata(&self, key: impl Into<String>, value: impl Into<Value>) {
        self.shared.counters.set_metadata(key.into(), value.into());
    }

    /// True while the circuit breaker is open (threshold errors in a row):
    /// the worker may stop taking jobs until it closes.
    pub fn circuit_open(&self) -> bool {
        self.shared.counters.circuit_open()
    }

    /// Closes the circuit breaker (the error streak starts again at zero).
    pub fn reset_circuit(&self) {
        self.shared.counters.reset_circuit();
    }

    /// True while an operator has paused this worker: take no new work.
    /// (Finish the job in hand; the process stays up and keeps beating.)
    pub fn should_pause(&self) -> bool {
        self.shared.asked(Question::Pause);
        self.shared.control.should_pause()
    }

    /// Blocks while paused; returns at once when not paused, and on resume,
    /// a drain, a restart or shutdown.
    pub fn wait_while_paused(&self) {
        self.shared.asked(Question::Pause);
        self.shared.control.wait_while_paused();
    }

    /// [`wait_while_paused`](Self::wait_while_paused) for async code.
    pub async fn wait_while_paused_async(&self) {
        self.shared.asked(Question::Pause);
        self.shared.control.wait_while_paused_async().await;
    }

    /// True once a drain or restart was requested (or shutdown began):
    /// finish the job in hand and return from `main` with
    /// [`exit_code`](Self::exit_code).
    pub fn should_exit(&self) -> bool {
        self.shared.asked(Question::Exit);
        self.shared.control.should_exit()
    }

    /// True once per run-now request (several before a look are one run).
    pub fn run_now_requested(&self) -> bool {
        self.shared.asked(Question::RunNow);
        self.shared.control.take_run_now()
    }

    /// For a polling worker's loop: blocks until the next run is due and
    /// returns true (at once the first time, then `interval` after the
    /// previous return; at once on run-now, even while paused; never while
    /// paused otherwise), or returns false when the worker should exit.
    ///
    /// ```no_run
    /// # let hb = heartbeat_sdk::Heartbeat::builder("poller").start()?;
    /// while hb.wait_for_next_run(std::time::Duration::from_secs(60)) {
    ///     hb.run(|| Ok::<_, std::io::Error>(())).ok();
    /// }
    /// # Ok::<(), heartbeat_sdk::ConfigError>(())
    /// ```
    pub fn wait_for_next_run(&self, interval: Duration) -> bool {
        for q in [Question::Pause, Question::Exit, Question::RunNow] {
            self.shared.asked(q);
        }
        self.shared.control.wait_for_next_run(interval)
    }

    /// [`wait_for_next_run`](Self::wait_for_next_run) for async code.
    pub async fn wait_for_next_run_async(&self, interval: Duration) -> bool {
        for q in [Question::Pause, Question::Exit, Question::RunNow] {
            self.shared.asked(q);
        }
        self.shared.control.wait_for_next_run_async(interval).await
    }

    /// The code `main` should end with: 75 (`EX_TEMPFAIL`) after a restart
    /// request, so systemd restarts the unit (`RestartForceExitStatus=75`;
    /// PM2 restarts any exit), otherwise success (a drained worker stays
    /// down under systemd and comes back paused under PM2). After SIGTERM
    /// or SIGINT the process ends as the signal would have instead, once
    /// the reporter is dropped.
    pub fn exit_code(&self) -> std::process::ExitCode {
        match self.shared.control.state() {
            WorkerState::Restarting => std::process::ExitCode::from(RESTART_EXIT_CODE),
            _ => std::process::ExitCode::SUCCESS,
        }
    }

    /// Starts a run (one cycle of the work): the row says `running` at once,
    /// then `succeeded` or `failed` when the returned guard says so.
    /// Dropped unfinished, it counts as failed ("abandoned").
    pub fn start_run(&self) -> Run {
        Run::start(Some(Arc::clone(&self.shared)))
    }

    /// Runs `work` as a run: `Ok` succeeded, `Err` failed with its message
    /// (which also counts as a failed job, feeding the breaker); a panic
    /// counts as failed and goes on unwinding.
    ///
    /// # Errors
    /// Whatever `work` returned.
    pub fn run<T, E: std::fmt::Display>(
        &self,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let run = self.start_run();
        let result = work();
        match &result {
            Ok(_) => run.succeeded(""),
            Err(e) => run.failed(e),
        }
        result
    }

    /// Sends the final `stopped` row and stops beating, blocking at most the
    /// shutdown budget. Returns true when the row was stored. Dropping the
    /// handle does the same; this says whether it worked. After SIGTERM or
    /// SIGINT it does not return: the process ends by the signal once the
    /// final rows are sent.
    ///
    /// In async code, call it from `tokio::task::spawn_blocking` (or drop the
    /// handle there) so a runtime thread is not held for up to the budget.
    pub fn shutdown(self) -> bool {
        self.finish(FinalState::default())
    }

    pub(crate) fn finish(&self, state: FinalState) -> bool {
        // A little over the budget: the loop bounds the send itself.
        let wait = self.shared.shutdown_budget + Duration::from_millis(100);
        self.shared.finish(state, wait)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // After `shutdown` this returns at once: the first final row wins.
        self.finish(FinalState::default());
        crate::beat::signals::end_as_signaled();
    }
}

/// What a worker asked to restart exits with (`EX_TEMPFAIL`).
pub(crate) const RESTART_EXIT_CODE: u8 = 75;

/// Why [`HeartbeatBuilder::check`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server refused the probe row or could not be reached.
    #[error(transparent)]
    Send(#[from] SendError),
    /// A scoped key could not read its own worker's row.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The probe row was written but could not be removed.
    #[error(
        "the probe row {probe:?} was written but could not be removed ({error}): delete it by hand"
    )]
    Cleanup {
        /// The probe row's worker name.
        probe: String,
        /// Why the delete failed.
        error: SendError,
    },
}

/// What [`HeartbeatBuilder::check`] proved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked {
    /// A probe row was written under this throwaway name, and removed.
    Wrote {
        /// The probe row's name.
        probe: String,
    },
    /// The key is an `hp_reporter` key scoped to one worker: writing a probe
    /// would overwrite that worker's row, so only reading it was proven.
    ReadScoped {
        /// The worker the key may write.
        worker: String,
    },
}

impl HeartbeatBuilder {
    /// Validates the configuration and starts beating: the first beat goes
    /// out at once, on a background thread.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad or missing setting and the fix.
    pub fn start(self) -> Result<Heartbeat, ConfigError> {
        let handle_signals = self.handle_signals;
        let beat_loop = prepare(self)?;
        let shared = Arc::clone(&beat_loop.shared);
        let worker_name = beat_loop.identity.worker_name.clone();
        std::thread::Builder::new()
            .name("hp-heartbeat".into())
            .spawn(move || beat_loop.run_blocking())
            .map_err(|e| ConfigError::Thread(e.to_string()))?;
        if handle_signals {
            crate::beat::signals::watch(&shared)
                .map_err(|e| ConfigError::Thread(format!("signal handler: {e}")))?;
        }
        Ok(Heartbeat {
            shared,
            worker_name,
        })
    }

    /// Proves the configuration and the write path without touching any
    /// worker's row: writes a probe row under a throwaway name
    /// (`hp-check-...`), then removes it. Starts nothing; for setup checks.
    ///
    /// # Errors
    /// [`CheckError::Config`] for a bad setting, [`CheckError::Send`] for
    /// what the server answered, [`CheckError::Cleanup`] when the probe row
    /// stayed behind.
    pub async fn check(mut self) -> Result<Checked, CheckError> {
        self.validate_config()?;
        let custom = self.has_transport();
        let target = if custom {
            None
        } else {
            Some(self.settings.resolve()?)
        };
        if let Some(Target::Supabase(config)) = &target {
            if let Some(worker) = config.scoped_worker() {
                let client = PostgrestClient::new(config, &self.reporter_name())?;
                client.select_one(&worker).await?;
                return Ok(Checked::ReadScoped { worker });
            }
        }
        let probe = format!("hp-check-{:012x}", fastrand::u64(..) >> 16);
        self.name = probe.clone();
        let agent = self.reporter_name();
        let mut beat_loop = prepare(self)?;
        let row = beat_loop.build_row(Some(&FinalState::new(WorkerStatus::Unknown)));
        beat_loop.transport.send(&row).await?;
        let removed = match target {
            None => Ok(()),
            Some(Target::Supabase(config)) => {
                PostgrestClient::new(&config, &agent)?.delete(&probe).await
            }
            Some(Target::Local(path)) => SqliteStore::new(path).delete(&probe),
        };
        match removed {
            Ok(()) => Ok(Checked::Wrote { probe }),
            Err(error) => Err(CheckError::Cleanup { probe, error }),
        }
    }
}

fn prepare(builder: HeartbeatBuilder) -> Result<BeatLoop, ConfigError> {
    let valid = builder.validate()?;
    let shared = Arc::new(Shared::new(
        Counters::new(valid.breaker_threshold, valid.metadata),
        valid.shutdown_budget,
    ));
    if valid.systemd_watchdog {
        if let Some(socket) = crate::transport::notify::NotifySocket::from_env() {
            shared.progress.ping_systemd(socket);
            if let Some(every) = shared.progress.keep_alive_every() {
                let weak = Arc::downgrade(&shared);
                shared.control.keep_alive_with(
                    every,
                    Box::new(move || {
                        if let Some(shared) = weak.upgrade() {
                            shared.progress.keep_alive();
                        }
                    }),
                );
            }
        }
    }
    let identity = Identity {
        worker_name: valid.name,
        hostname: sysinfo::System::host_name(),
        started_at: now_micros(),
        started: std::time::Instant::now(),
        instance_id: uuid::Uuid::new_v4().to_string(),
        version: valid.version,
        reporter: valid.reporter,
        interval: valid.interval,
        settle_beat: valid.settle_beat,
        hold_first_beat: valid.hold_first_beat,
        pool: valid.pool,
        max_run: valid.max_run,
        watchdog: valid.watchdog,
    };
    let probe = valid.probe.unwrap_or_else(|| Box::new(OwnProcess::new()));
    let control = valid.control.map(|source| ControlPoll {
        source,
        every: valid.control_poll,
    });
    Ok(BeatLoop::new(
        shared,
        identity,
        valid.transport,
        probe,
        fastrand::Rng::new(),
    )
    .with_control(control))
}
