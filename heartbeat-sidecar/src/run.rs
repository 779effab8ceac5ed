//! `heartbeat-sidecar run` and `once`: start the worker, pass its output and
//! signals through, report for it, obey operators, and end as it ended.
//!
//! Reporting is an addition: a mistake in its configuration is logged loudly
//! and the worker runs anyway (unless `--strict`), so a broken reporting
//! environment never turns into a restart loop that keeps the work from running.
//!
//! Control, in place: `restart` stops the child gracefully and starts it
//! again (the sidecar stays, so PM2 and systemd see no restart); `drain` and
//! `pause` stop it and stay up with no child (or, with `--pause-signal`,
//! pause it where it is); `resume` starts it again. With `--every` the
//! command is started once per interval, each start a run.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use heartbeat_sdk::sidecar::{
    self as hooks, FinalState, ProcessProbe, ProcessSample, ProcessTree, WorkerState,
};
use heartbeat_sdk::{Heartbeat, HeartbeatBuilder, Run, WorkerStatus};
use serde_json::{Map, Value};
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::cli::{OnceArgs, RunArgs};
use crate::exit::{classify, signal_name, Exit, SHUTDOWN_SIGNALS, USAGE};
use crate::group::{end_leftovers, worker_gets_its_own_group, GroupGuard};
use crate::lines::{combine, LineMatcher, Pattern};
use crate::output::{pump, tail_text, Stream};
use crate::socket::ReportSocket;
use crate::table::bytes;

/// Signals passed on to the child.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How often the worker's memory is compared with `--max-memory`.
const MEMORY_CHECK: Duration = Duration::from_secs(5);
/// The second beat, once the child has loaded.
const SETTLE_BEAT: Duration = Duration::from_secs(2);
/// How long `once` waits for the first look at its control row before it
/// runs anyway (control never keeps the work from running).
const FIRST_CONTROL_WAIT: Duration = Duration::from_secs(5);

/// How the command is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Kept running: its end is the sidecar's end.
    Long,
    /// Started once per interval; each start is a run.
    Every(Duration),
    /// Once, as a run (`once`).
    Once,
}

/// `heartbeat-sidecar run`: the worker kept running, or `--every`.
pub async fn run(args: RunArgs) -> Exit {
    let mode = args.every.map_or(Mode::Long, Mode::Every);
    if args.every.is_some_and(|e| e < Duration::from_secs(1)) {
        eprintln!("heartbeat-sidecar: --every must be at least 1s");
        return Exit::Code(USAGE);
    }
    supervise(args, mode).await
}

/// `heartbeat-sidecar once`: the command once, as a run, skipped while the
/// worker is paused (disabled).
pub async fn once(args: OnceArgs) -> Exit {
    let OnceArgs { period, mut run } = args;
    if run.every.is_some() {
        eprintln!(
            "heartbeat-sidecar: `once` runs the command once: drop --every (or use `run --every`)"
        );
        return Exit::Code(USAGE);
    }
    if let Some(period) = period {
        // The row's interval is the job's period: a missed run reads stale
        // after the usual grace of 2.5 intervals.
        run.interval = period.as_secs().max(1);
    }
    supervise(run, Mode::Once).await
}

async fn supervise(args: RunArgs, mode: Mode) -> Exit {
    // First, while this process has one thread: the guard is a fork.
    let own_group = worker_gets_its_own_group();
    let guard = if own_group {
        GroupGuard::start()
            .map_err(|e| tracing::warn!("cannot start the process-group guard ({e}): if the sidecar is killed with SIGKILL, what the worker started may keep running"))
            .ok()
    } else {
        None
    };
    let reporting = match prepare(&args) {
        Ok(p) => Some(p),
        Err(e) if args.strict => {
            eprintln!("heartbeat-sidecar: {e:#}");
            return Exit::Code(USAGE);
        }
        Err(e) => {
            not_reporting(&e);
            None
        }
    };

    // Listen before spawning, so no signal between the two is lost.
    let signals = match forward_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: {e:#}");
            return Exit::Code(USAGE);
        }
    };
    let socket = match reporting.is_some().then(ReportSocket::bind) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::warn!("HP_SIDECAR_SOCKET is not available ({e}); output patterns still count");
            None
        }
        None => None,
    };
    let (job, error) = reporting
        .as_ref()
        .map_or((None, None), |p| (p.job.clone(), p.error.clone()));
    // Under systemd the worker's notify socket is the sidecar's relay.
    let mut notify = crate::notify::SystemdNotify::from_env();
    let notify_relay = notify.as_mut().and_then(|n| n.start_relay());
    let mut s = Supervisor {
        launcher: Launcher {
            command: args.command.clone(),
            socket: socket.as_ref().map(|s| s.path().to_owned()),
            notify_socket: notify_relay,
            own_group,
            parent: std::process::id(),
            job,
            error,
        },
        mode,
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
        pause_signal: args.pause_signal.zip(args.resume_signal),
        max_memory: args.max_memory,
        budget: Duration::from_millis(args.shutdown_budget),
        guard,
        socket,
        signals,
        heartbeat: None,
        changes: None,
        probe: ChildProbe::default(),
        current: None,
        next_run: None,
        run_now_pending: false,
        run_due: false,
        restarts: 0,
        forwarded_shutdown: None,
        signal_group: args.signal_group,
        reaper: crate::reaper::Reaper::when_init(),
        notify,
    };
    let strict = args.strict;
    let exit = s.start(reporting, strict).await;
    if let Some(exit) = exit {
        if let Some(n) = &s.notify {
            n.stopping();
        }
        return exit;
    }
    if let Some(n) = s.notify.as_mut() {
        // Ready also when paused at start: the service is up, its worker
        // waits for a resume.
        n.ready();
        n.watch(s.heartbeat.clone());
    }
    let exit = s.run_to_end().await;
    if let Some(n) = &s.notify {
        n.stopping();
    }
    drop(s.socket.take());
    // Whatever the worker started and left running goes with it.
    if let Some(g) = s.guard.as_mut() {
        g.end(Duration::from_secs(1));
    }
    exit
}

fn not_reporting(e: &anyhow::Error) {
    tracing::error!(
        "heartbeat-sidecar: NOT REPORTING: {e:#}. The worker runs anyway; `heartbeat-sidecar check` shows what is wrong. Pass --strict to refuse to start the worker instead."
    );
}

/// Why the sidecar is stopping the child.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopFor {
    /// `--max-memory`: a failure to report and to restart.
    Memory(String),
    Restart,
    Drain,
    Pause,
}

impl StopFor {
    fn verb(&self) -> &'static str {
        match self {
            StopFor::Memory(_) => "--max-memory",
            StopFor::Restart => "a restart",
            StopFor::Drain => "a drain",
            StopFor::Pause => "a pause",
        }
    }
}

/// A graceful stop the sidecar itself started.
struct Stopping {
    why: StopFor,
    kill_at: Option<Instant>,
}

/// How to start the command.
struct Launcher {
    command: Vec<String>,
    socket: Option<PathBuf>,
    /// The worker's `NOTIFY_SOCKET` (the sidecar's relay), under systemd.
    notify_socket: Option<PathBuf>,
    own_group: bool,
    parent: u32,
    job: Option<Pattern>,
    error: Option<Pattern>,
}

impl Launcher {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = tokio::process::Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = &self.socket {
            command.env("HP_SIDECAR_SOCKET", path);
        }
        // The alerts watcher's webhook URLs are secrets; PM2 hands the same
        // environment to every app of a file, the worker needs none of them.
        command.env_remove("HP_ALERT_WEBHOOKS");
        if let Some(path) = &self.notify_socket {
            // WATCHDOG_PID names the sidecar: the worker's own pings, if it
            // sends any, go through the relay.
            command
                .env("NOTIFY_SOCKET", path)
                .env_remove("WATCHDOG_PID");
        }
        if self.own_group {
            command.process_group(0);
        }
        let parent = self.parent;
        // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // If the sidecar is killed (even by SIGKILL), the worker goes too.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// The child of the moment, with its output pumps.
struct Worker {
    child: Child,
    pid: u32,
    pumps: Vec<oneshot::Receiver<()>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stopping: Option<Stopping>,
    paused_in_place: bool,
    /// `--every` and `once`: the run this child is.
    run: Option<Run>,
    started: Instant,
    memory: Option<ProcessTree>,
}

/// The beat thread's probe: the whole tree of the child of the moment, or
/// nothing while there is none (paused, between runs).
#[derive(Clone, Default)]
struct ChildProbe(Arc<Mutex<Option<ProcessTree>>>);

impl ChildProbe {
    fn follow(&self, pid: Option<u32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pid.map(ProcessTree::new);
    }
}

impl ProcessProbe for ChildProbe {
    fn sample(&mut self) -> ProcessSample {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map_or_else(ProcessSample::default, ProcessProbe::sample)
    }
}

/// What woke the loop.
enum Event {
    Exited(std::io::Result<ExitStatus>),
    Signal(i32),
    ControlChanged,
    /// The control channel is gone (reporting ended): no more changes.
    ControlGone,
    MemoryCheck,
    KillDue,
    RunDue,
    /// PID 1: a child may have exited (SIGCHLD, or the periodic sweep).
    MayReap,
}

struct Supervisor {
    launcher: Launcher,
    mode: Mode,
    stop_signal: i32,
    stop_timeout: Duration,
    /// `--pause-signal` and `--resume-signal`.
    pause_signal: Option<(i32, i32)>,
    max_memory: Option<u64>,
    budget: Duration,
    guard: Option<GroupGuard>,
    socket: Option<ReportSocket>,
    signals: mpsc::UnboundedReceiver<i32>,
    heartbeat: Option<Arc<Heartbeat>>,
    /// Control changes (none without reporting).
    changes: Option<watch::Receiver<u64>>,
    probe: ChildProbe,
    current: Option<Worker>,
    /// `--every`: when the next run is due.
    next_run: Option<Instant>,
    /// A run-now that waits for the run in flight to end.
    run_now_pending: bool,
    /// `--every`: the scheduled run is due (skipped while paused).
    run_due: bool,
    /// Restarts in place since the sidecar started.
    restarts: u64,
    /// The shutdown signal passed on to the child, if any.
    forwarded_shutdown: Option<i32>,
    /// `--signal-group`: forwarded signals go to the worker's whole group.
    signal_group: bool,
    /// PID 1: orphans are reaped here.
    reaper: Option<crate::reaper::Reaper>,
    /// Under systemd: READY, STOPPING, the watchdog, the worker's relay.
    notify: Option<crate::notify::SystemdNotify>,
}

impl Supervisor {
    /// Starts reporting, looks at the control row, then starts the first
    /// child unless operators paused the worker: a deploy, a reboot or PM2
    /// starting the sidecar again never undoes a pause. The first beat waits
    /// for that decision, so it has the child's pid. `Some` when the sidecar
    /// ends here.
    async fn start(&mut self, reporting: Option<Prepared>, strict: bool) -> Option<Exit> {
        if let Some(p) = reporting {
            let mut builder = p
                .builder
                .process_probe(self.probe.clone())
                .hold_first_beat();
            if self.mode != Mode::Once {
                builder = builder.metadata("sidecar_pid", self.launcher.parent);
            }
            match builder.start() {
                Ok(hb) => self.attach(hb),
                Err(e) if strict => {
                    eprintln!("heartbeat-sidecar: {e}");
                    return Some(Exit::Code(USAGE));
                }
                Err(e) => not_reporting(&anyhow::Error::new(e)),
            }
        }
        let Some(hb) = self.heartbeat.clone() else {
            return self.start_first();
        };
        // A blocking wait of a few seconds at most, off this thread so the
        // signals that arrive meanwhile are kept for the loop.
        let read = tokio::task::spawn_blocking({
            let hb = Arc::clone(&hb);
            move || hooks::wait_first_control_read(&hb, FIRST_CONTROL_WAIT)
        })
        .await
        .unwrap_or(false);
        if !read {
            tracing::warn!(
                "the control row was not read within {FIRST_CONTROL_WAIT:?}: starting the worker anyway"
            );
        }
        let paused = hooks::control_state(&hb) == WorkerState::Paused;
        let ended = match (self.mode, paused) {
            (Mode::Once, true) => {
                tracing::info!(
                    "skipped: operators paused {} (resume, or enable, lets it run again)",
                    hb.worker_name()
                );
                hooks::finish(&hb, FinalState::new(WorkerStatus::Stopped));
                return Some(Exit::Code(0));
            }
            (Mode::Long, true) => {
                tracing::info!("operators paused this worker: it starts when resumed");
                None
            }
            (Mode::Every(_), true) => {
                // The first run is due; `steer` skips it while paused.
                self.run_due = true;
                None
            }
            (_, false) => self.start_first(),
        };
        hooks::process_ready(&hb);
        ended
    }

    /// The first child; a command that cannot be started ends the sidecar
    /// (the final row says why when reporting).
    fn start_first(&mut self) -> Option<Exit> {
        match self.launcher.spawn() {
            Ok(child) => {
                self.take_child(child);
                None
            }
            Err(e) if self.heartbeat.is_none() => {
                Some(report_spawn_failure(&self.launcher.command[0], &e))
            }
            Err(e) => Some(self.spawn_failed(&e)),
        }
    }

    fn attach(&mut self, hb: Heartbeat) {
        let hb = Arc::new(hb);
        hooks::set_controls(&hb, self.controls());
        self.changes = Some(hooks::control_changes(&hb));
        if let Some(socket) = self.socket.as_mut() {
            socket.serve(Arc::clone(&hb));
        }
        self.heartbeat = Some(hb);
    }

    /// How this sidecar honours each verb, for the row (and so for the
    /// operator, before acting).
    fn controls(&self) -> Map<String, Value> {
        let say = |s: &str| Value::from(s);
        let (pause, drain, restart, run_now) = match self.mode {
            Mode::Long => (
                match self.pause_signal {
                    Some((p, r)) => format!(
                        "by sending the worker {} ({} resumes it)",
                        signal_name(p),
                        signal_name(r)
                    ),
                    None => "by stopping the worker; resume starts it again".to_owned(),
                },
                "by stopping the worker; the sidecar stays up",
                "by restarting the worker in place",
                "no",
            ),
            Mode::Every(_) => (
                "by skipping the next runs (a run in flight finishes)".to_owned(),
                "by stopping the run in flight; no more runs until resumed",
                "by stopping the run in flight and starting one",
                "by starting a run at once",
            ),
            Mode::Once => ("by skipping the run".to_owned(), "no", "no", "no"),
        };
        let mut m = Map::new();
        m.insert("pause".into(), say(&pause));
        m.insert("drain".into(), say(drain));
        m.insert("restart".into(), say(restart));
        m.insert("run_now".into(), say(run_now));
        m
    }

    /// Takes a freshly spawned child: pumps, probe, guard, its run.
    fn take_child(&mut self, mut child: Child) {
        let Some(pid) = child.id() else {
            return;
        };
        self.probe.follow(Some(pid));
        if let Some(g) = self.guard.as_mut() {
            g.watch(pid as i32);
        }
        if let Some(n) = self.notify.as_mut() {
            n.ready();
        }
        let stderr_tail = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut pumps = Vec::new();
        let hb = self.heartbeat.clone();
        if let Some(out) = child.stdout.take().and_then(|o| o.into_owned_fd().ok()) {
            pumps.push(pump(
                out,
                Stream::Stdout,
                LineMatcher::new(self.launcher.job.clone(), self.launcher.error.clone()),
                hb.clone(),
                None,
            ));
        }
        if let Some(err) = child.stderr.take().and_then(|e| e.into_owned_fd().ok()) {
            pumps.push(pump(
                err,
                Stream::Stderr,
                LineMatcher::new(self.launcher.job.clone(), self.launcher.error.clone()),
                hb.clone(),
                Some(Arc::clone(&stderr_tail)),
            ));
        }
        self.schedule_next();
        let run = match (self.mode, &hb) {
            (Mode::Every(_) | Mode::Once, Some(hb)) => Some(hb.start_run()),
            _ => None,
        };
        if let Some(hb) = &hb {
            hooks::row_changed(hb);
        }
        self.current = Some(Worker {
            child,
            pid,
            pumps,
            stderr_tail,
            stopping: None,
            paused_in_place: false,
            run,
            started: Instant::now(),
            memory: self.max_memory.map(|_| ProcessTree::new(pid)),
        });
    }

    async fn run_to_end(&mut self) -> Exit {
        let mut memory_check = tokio::time::interval(MEMORY_CHECK);
        // Off while there is no child: no burst of missed checks after.
        memory_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // A signal that came while the last event was handled (output
            // drained, a child reaped) is handled before steering starts
            // another child.
            while let Ok(sig) = self.signals.try_recv() {
                if let Some(exit) = self.signalled(sig) {
                    return exit;
                }
            }
            if let Some(exit) = self.steer() {
                return exit;
            }
            let event = self.next_event(&mut memory_check).await;
            let ended = match event {
                Event::Exited(status) => self.child_exited(status).await,
                Event::Signal(sig) => self.signalled(sig),
                Event::ControlChanged => None,
                Event::ControlGone => {
                    self.changes = None;
                    None
                }
                Event::MemoryCheck => {
                    self.check_memory();
                    None
                }
                Event::KillDue => {
                    if let Some(w) = self.current.as_mut() {
                        tracing::warn!(
                            "the worker did not stop within {:?}: sending SIGKILL",
                            self.stop_timeout
                        );
                        send_to_worker(w.pid, self.launcher.own_group, libc::SIGKILL);
                        if let Some(s) = w.stopping.as_mut() {
                            s.kill_at = None;
                        }
                    }
                    None
                }
                Event::RunDue => {
                    self.next_run = None;
                    self.run_due = true;
                    None
                }
                Event::MayReap => {
                    let worker = self.current.as_ref().map(|w| w.pid);
                    if let Some(r) = self.reaper.as_mut() {
                        r.reap(worker);
                    }
                    None
                }
            };
            if let Some(exit) = ended {
                return exit;
            }
        }
    }

    async fn next_event(&mut self, memory_check: &mut tokio::time::Interval) -> Event {
        let kill_at = self
            .current
            .as_ref()
            .and_then(|w| w.stopping.as_ref())
            .and_then(|s| s.kill_at);
        let has_child = self.current.is_some();
        let watch_memory = self
            .current
            .as_ref()
            .is_some_and(|w| w.memory.is_some() && w.stopping.is_none());
        let run_due = self.next_run.filter(|_| !has_child);
        let child = self.current.as_mut().map(|w| &mut w.child);
        let changes = self.changes.as_mut();
        let reaper = self.reaper.as_mut();
        tokio::select! {
            status = async { child.expect("a child").wait().await }, if has_child => Event::Exited(status),
            Some(sig) = self.signals.recv() => Event::Signal(sig),
            changed = async {
                match changes {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => if changed { Event::ControlChanged } else { Event::ControlGone },
            _ = memory_check.tick(), if watch_memory => Event::MemoryCheck,
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => Event::KillDue,
            _ = sleep_until(run_due.unwrap_or_else(Instant::now)), if run_due.is_some() => Event::RunDue,
            _ = async {
                match reaper {
                    Some(r) => r.wait().await,
                    None => std::future::pending().await,
                }
            } => Event::MayReap,
        }
    }

    /// Brings the child in line with what operators want. `Some` when the
    /// sidecar ends here (a child that cannot be started again).
    fn steer(&mut self) -> Option<Exit> {
        let Some(hb) = self.heartbeat.clone() else {
            // Not reporting: no control; `--every` keeps its schedule.
            return self.keep_schedule();
        };
        // `once` has already looked at control; a shutdown under way wins.
        if self.forwarded_shutdown.is_some() || self.mode == Mode::Once {
            return None;
        }
        if matches!(self.mode, Mode::Every(_)) && hooks::take_run_now(&hb) {
            self.run_now_pending = true;
        }
        let mut want = hooks::control_state(&hb);
        if self.current.is_none() && matches!(want, WorkerState::Draining | WorkerState::Restarting)
        {
            // Nothing to stop: done at once (a restart comes back active).
            hooks::control_done(&hb);
            if want == WorkerState::Restarting && matches!(self.mode, Mode::Every(_)) {
                self.run_now_pending = true;
            }
            want = hooks::control_state(&hb);
        }
        let mode = self.mode;
        let pause_signal = self.pause_signal;
        let own_group = self.launcher.own_group;
        match self.current.as_mut() {
            Some(w) if w.stopping.is_some() => {}
            Some(w) => match want {
                WorkerState::Active if w.paused_in_place => {
                    if let Some((_, resume)) = pause_signal {
                        tracing::info!("resumed: sending the worker {}", signal_name(resume));
                        send_to_worker(w.pid, own_group, resume);
                    }
                    w.paused_in_place = false;
                    hooks::row_changed(&hb);
                }
                WorkerState::Paused if mode == Mode::Long && !w.paused_in_place => {
                    match pause_signal {
                        Some((pause, _)) => {
                            tracing::info!("paused: sending the worker {}", signal_name(pause));
                            send_to_worker(w.pid, own_group, pause);
                            w.paused_in_place = true;
                            hooks::row_changed(&hb);
                        }
                        None => self.begin_stop(StopFor::Pause),
                    }
                }
                WorkerState::Draining => self.begin_stop(StopFor::Drain),
                WorkerState::Restarting => self.begin_stop(StopFor::Restart),
                _ => {}
            },
            None => {
                let start = match (mode, want) {
                    (Mode::Long, WorkerState::Active) => true,
                    // Run-now runs exactly one, paused or not.
                    (Mode::Every(_), _) if self.run_now_pending => true,
                    (Mode::Every(_), WorkerState::Active) => self.run_due,
                    (Mode::Every(every), WorkerState::Paused) if self.run_due => {
                        tracing::info!("skipped a run: operators paused this worker");
                        self.run_due = false;
                        self.next_run = Some(Instant::now() + every);
                        false
                    }
                    _ => false,
                };
                if start {
                    return self.start_again();
                }
            }
        }
        None
    }

    /// `--every`: the next run is one interval after this one started (at
    /// once after a run that took longer; missed runs are not made up).
    fn schedule_next(&mut self) {
        if let Mode::Every(every) = self.mode {
            self.next_run = Some(Instant::now() + every);
        }
    }

    /// Without reporting, `--every` still runs on its schedule.
    fn keep_schedule(&mut self) -> Option<Exit> {
        if self.current.is_none()
            && matches!(self.mode, Mode::Every(_))
            && self.run_due
            && self.forwarded_shutdown.is_none()
        {
            return self.start_again();
        }
        None
    }

    /// Starts the command again (resume, restart, the next run).
    fn start_again(&mut self) -> Option<Exit> {
        self.run_now_pending = false;
        self.run_due = false;
        match self.launcher.spawn() {
            Ok(child) => {
                if let (Mode::Long, Some(hb)) = (self.mode, &self.heartbeat) {
                    // A new process of the worker (runs of --every are not).
                    hooks::new_instance(hb);
                }
                self.take_child(child);
                None
            }
            Err(e) if matches!(self.mode, Mode::Every(_)) => {
                self.schedule_next();
                let message = format!("cannot start {:?}: {e}", self.launcher.command[0]);
                tracing::error!("heartbeat-sidecar: {message}");
                if let Some(hb) = &self.heartbeat {
                    hb.start_run().failed(&message);
                }
                None
            }
            Err(e) => Some(self.spawn_failed(&e)),
        }
    }

    /// The command could not be started (again): the final row says so.
    fn spawn_failed(&mut self, e: &std::io::Error) -> Exit {
        let (code, message) = spawn_error(&self.launcher.command[0], e);
        eprintln!("heartbeat-sidecar: {message}");
        if let Some(hb) = &self.heartbeat {
            if self.mode == Mode::Once {
                hb.start_run().failed(&message);
            }
            hooks::finish(
                hb,
                FinalState::new(WorkerStatus::Crashed)
                    .exit_code(code)
                    .last_error(message),
            );
        }
        Exit::Code(code)
    }

    fn begin_stop(&mut self, why: StopFor) {
        let Some(w) = self.current.as_mut() else {
            return;
        };
        if let (true, Some((_, resume))) = (w.paused_in_place, self.pause_signal) {
            // A frozen worker cannot handle the stop signal.
            send_to_worker(w.pid, self.launcher.own_group, resume);
            w.paused_in_place = false;
        }
        tracing::info!(
            "stopping the worker for {}: sending {} (SIGKILL after {:?})",
            why.verb(),
            signal_name(self.stop_signal),
            self.stop_timeout
        );
        send_to_worker(w.pid, self.launcher.own_group, self.stop_signal);
        w.stopping = Some(Stopping {
            why,
            kill_at: Some(Instant::now() + self.stop_timeout),
        });
    }

    /// Whether the child ended as the stop asked: a clean exit, `128 +` the
    /// signal (as shells do), or the stop signal or SIGKILL itself.
    fn ended_by_our_stop(&self, status: ExitStatus) -> bool {
        match (status.code(), status.signal()) {
            (Some(code), _) => code == 0 || code == 128 + self.stop_signal,
            (None, Some(sig)) => sig == self.stop_signal || sig == libc::SIGKILL,
            _ => false,
        }
    }

    fn check_memory(&mut self) {
        let Some(limit) = self.max_memory else { return };
        let over = self
            .current
            .as_mut()
            .and_then(|w| w.memory.as_mut())
            .and_then(|probe| probe.sample().memory_rss_bytes)
            .filter(|used| *used > limit);
        if let Some(over) = over {
            let why = format!(
                "stopped by heartbeat-sidecar: the worker's memory, {}, was over --max-memory {}",
                bytes(i64::try_from(over).unwrap_or(i64::MAX)),
                bytes(i64::try_from(limit).unwrap_or(i64::MAX)),
            );
            tracing::warn!("{why}");
            self.begin_stop(StopFor::Memory(why));
        }
    }

    fn signalled(&mut self, sig: i32) -> Option<Exit> {
        let shutdown = SHUTDOWN_SIGNALS.contains(&sig);
        if let Some(w) = self.current.as_mut() {
            if let (true, Some((_, resume))) = (w.paused_in_place, self.pause_signal) {
                // Woken first, or the signal only waits.
                send_to_worker(w.pid, self.launcher.own_group, resume);
                w.paused_in_place = false;
            }
            if self.signal_group {
                send_to_worker(w.pid, self.launcher.own_group, sig);
            } else {
                send(w.pid, sig);
            }
        }
        // HUP and QUIT end a process by default: with no child to pass them
        // to, they end the sidecar.
        let ends_sidecar = [libc::SIGHUP, libc::SIGQUIT].contains(&sig) && self.current.is_none();
        if !shutdown && !ends_sidecar {
            return None;
        }
        if ends_sidecar {
            // No child to pass it to: the sidecar ends as the signal would.
            if let Some(hb) = &self.heartbeat {
                hooks::finish(hb, FinalState::new(WorkerStatus::Stopped).exit_signal(sig));
            }
            return Some(Exit::Signal(sig));
        }
        self.forwarded_shutdown = Some(sig);
        if let Some(n) = &self.notify {
            n.stopping();
        }
        if self.current.is_some() {
            return None;
        }
        // No child (paused, drained, between runs): a clean stop now.
        if let Some(hb) = &self.heartbeat {
            hooks::finish(hb, FinalState::new(WorkerStatus::Stopped));
        }
        Some(Exit::Code(0))
    }

    /// The child ended. `Some` when the sidecar ends with it.
    async fn child_exited(&mut self, status: std::io::Result<ExitStatus>) -> Option<Exit> {
        let mut w = self.current.take()?;
        self.probe.follow(None);
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                if let Some(hb) = &self.heartbeat {
                    hooks::finish(
                        hb,
                        FinalState::new(WorkerStatus::Crashed)
                            .last_error(format!("lost track of the worker: {e}")),
                    );
                }
                return Some(Exit::Code(1));
            }
        };
        let why = w.stopping.take().map(|s| s.why);
        let in_place = matches!(
            why,
            Some(StopFor::Restart | StopFor::Drain | StopFor::Pause)
        );
        if self.launcher.own_group && (in_place || matches!(self.mode, Mode::Every(_))) {
            // Never two at once: what the stopped child or the finished run
            // left in its group goes before another starts (and no longer
            // holds the output pipes open).
            end_leftovers(w.pid as i32);
        }
        // Let the last output through; a grandchild holding the pipe open
        // must not hold the exit past the budget.
        let deadline = Instant::now() + self.budget;
        for done in std::mem::take(&mut w.pumps) {
            let _ = tokio::time::timeout_at(deadline, done).await;
        }
        let tail = tail_text(&w.stderr_tail.lock().map(|t| t.clone()).unwrap_or_default());
        if in_place && self.forwarded_shutdown.is_some() {
            // PM2 or systemd stopped the sidecar while it stopped the worker.
            if let Some(run) = w.run.take() {
                run.failed("stopped: the sidecar was shut down");
            }
            if let Some(hb) = &self.heartbeat {
                hooks::finish(hb, FinalState::new(WorkerStatus::Stopped));
            }
            return Some(Exit::Code(0));
        }
        if in_place {
            let hb = self.heartbeat.clone();
            if let (Some(hb), false) = (&hb, self.ended_by_our_stop(status)) {
                // It ended its own way while being stopped: a crash is kept.
                let how = describe_status(status);
                hb.job_failed(if tail.is_empty() {
                    format!(
                        "{how} while stopping for {}",
                        why.as_ref().map_or("control", StopFor::verb)
                    )
                } else {
                    format!("{how} while stopping: {tail}")
                });
            }
            if let Some(run) = w.run.take() {
                run.failed(format!(
                    "stopped for {} after {:.1} s",
                    why.as_ref().map_or("control", StopFor::verb),
                    w.started.elapsed().as_secs_f64()
                ));
            }
            if let Some(hb) = &hb {
                match why {
                    Some(StopFor::Restart) => {
                        hooks::control_done(hb);
                        // A pause that came during the stop wins: no start.
                        if hooks::control_state(hb) == WorkerState::Active {
                            self.restarts += 1;
                            hb.set_metadata("restarts_in_place", self.restarts);
                            tracing::info!("the worker stopped for a restart: starting it again");
                            if matches!(self.mode, Mode::Every(_)) {
                                self.run_now_pending = true;
                            }
                        }
                    }
                    Some(StopFor::Drain) => {
                        tracing::info!("drained: the worker is stopped; `resume` starts it again");
                        hooks::control_done(hb);
                    }
                    _ => tracing::info!("paused: the worker is stopped; `resume` starts it again"),
                }
                hooks::row_changed(hb);
            }
            return None;
        }
        let (mut state, mut exit) = classify(status, self.forwarded_shutdown, &tail);
        if let Some(StopFor::Memory(why)) = &why {
            // Stopped for its memory: a failure to report and to restart.
            state.status = WorkerStatus::Crashed;
            state.last_error = Some(why.clone());
            if exit == Exit::Code(0)
                || matches!(exit, Exit::Signal(s) if SHUTDOWN_SIGNALS.contains(&s))
            {
                exit = Exit::Code(1);
            }
        }
        if let Some(run) = w.run.take() {
            match (state.status, &why) {
                (_, Some(StopFor::Memory(why))) => run.failed(why),
                (WorkerStatus::Stopped, _) if status.code() == Some(0) => run.succeeded(""),
                (WorkerStatus::Stopped, _) => {
                    run.failed(format!("stopped by {}", describe_status(status)))
                }
                _ => run.failed(format!(
                    "{}{}",
                    describe_status(status),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {tail}")
                    }
                )),
            }
        }
        if matches!(self.mode, Mode::Every(_)) && self.forwarded_shutdown.is_none() {
            // One run ended; the next is on the schedule.
            if let Some(hb) = &self.heartbeat {
                hooks::row_changed(hb);
            }
            return None;
        }
        if matches!(self.mode, Mode::Every(_)) {
            // Shut down while a run was in flight: a clean stop.
            state = FinalState::new(WorkerStatus::Stopped);
            exit = Exit::Code(0);
        }
        match &self.heartbeat {
            // When it is not stored, the SDK has said why.
            Some(hb) => {
                hooks::finish(hb, state);
            }
            None => tracing::error!(
                "heartbeat-sidecar: the worker ended, and it was NOT reported (see the configuration error above)"
            ),
        }
        Some(exit)
    }
}

/// "exit code 3", "signal SIGKILL".
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {}", signal_name(sig)),
        (None, None) => "an unknown end".to_owned(),
    }
}

/// Signals the child, and with a group of its own everything it started:
/// a stop or a pause of `sh -c` or `npm start` must reach the real worker.
fn send_to_worker(pid: u32, own_group: bool, sig: i32) {
    let target = if own_group {
        -(pid as libc::pid_t)
    } else {
        pid as libc::pid_t
    };
    // SAFETY: kill(2) on our own child's pid or process group; the child is
    // not reaped until `child.wait()` returns, so neither can be reused.
    unsafe { libc::kill(target, sig) };
}

fn send(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which is not reaped until
    // `child.wait()` returns, so the pid cannot be reused meanwhile.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

struct Prepared {
    builder: HeartbeatBuilder,
    job: Option<Pattern>,
    error: Option<Pattern>,
}

/// Everything about reporting, checked before the worker starts.
fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    let mut name = args.name.clone();
    if args.instance_suffix {
        let instance = std::env::var("NODE_APP_INSTANCE")
            .ok()
            .filter(|v| !v.is_empty())
            .context("--instance-suffix needs NODE_APP_INSTANCE, which PM2 sets for each instance: run under PM2, or drop the flag")?;
        name = format!("{name}-{instance}");
    }
    let job = combine(&args.job_patterns, "--job-pattern")?;
    let error = combine(&args.error_patterns, "--error-pattern")?;
    let settings = args.store.settings().map_err(anyhow::Error::msg)?;
    let mut builder = Heartbeat::builder(name)
        .store_settings(settings)
        .interval(Duration::from_secs(args.interval))
        .shutdown_budget(Duration::from_millis(args.shutdown_budget))
        .circuit_breaker_threshold(args.circuit_breaker_threshold)
        .settle_beat(SETTLE_BEAT)
        .pool(args.pool.clone())
        .handle_signals(false)
        // The sidecar speaks to systemd for its worker (notify.rs).
        .leave_systemd_to_caller()
        .reporter(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")));
    if let Some(limit) = args.max_run {
        builder = builder.max_run(limit);
    }
    if let Some(period) = args.hung_after {
        builder = builder.watchdog(period);
    }
    if let Some(v) = &args.worker_version {
        builder = builder.version(v.clone());
    }
    for pair in &args.metadata {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--metadata {pair:?} is not KEY=VALUE, e.g. --metadata region=eu-west");
        };
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        builder = builder.metadata(key.to_owned(), value);
    }
    builder.validate_config()?;
    Ok(Prepared {
        builder,
        job,
        error,
    })
}

fn forward_signals() -> anyhow::Result<mpsc::UnboundedReceiver<i32>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig))
            .with_context(|| format!("cannot listen for signal {sig}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// The exit code (126 not executable, 127 not found) and the message.
fn spawn_error(program: &str, e: &std::io::Error) -> (i32, String) {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        126
    } else {
        127
    };
    (code, format!("cannot start {program:?}: {e}"))
}

/// Not reporting, the command could not be started: said, and the code.
fn report_spawn_failure(program: &str, e: &std::io::Error) -> Exit {
    let (code, message) = spawn_error(program, e);
    eprintln!("heartbeat-sidecar: {message}");
    Exit::Code(code)
}
