//! `heartbeat-sidecar run`: start the worker, pass its output and signals
//! through, report for it, and end as it ended.
//!
//! Reporting is an addition: a mistake in its configuration is logged loudly
//! and the worker runs anyway (unless `--strict`), so a broken reporting
//! environment never turns into a restart loop that keeps the work from running.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use heartbeat_sdk::sidecar::{FinalState, ProcessProbe, ProcessTree};
use heartbeat_sdk::{Heartbeat, HeartbeatBuilder, WorkerStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::cli::RunArgs;
use crate::exit::{classify, signal_name, Exit, SHUTDOWN_SIGNALS, USAGE};
use crate::group::{worker_gets_its_own_group, GroupGuard};
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

/// Runs the worker to its end and says how the sidecar must end.
pub async fn run(args: RunArgs) -> Exit {
    // First, while this process has one thread: the guard is a fork.
    let own_group = worker_gets_its_own_group();
    let mut guard = if own_group {
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
    let budget = Duration::from_millis(args.shutdown_budget);

    // Listen before spawning, so no signal between the two is lost.
    let mut signals = match forward_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: {e:#}");
            return Exit::Code(USAGE);
        }
    };
    let mut socket = match reporting.is_some().then(ReportSocket::bind) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::warn!("HP_SIDECAR_SOCKET is not available ({e}); output patterns still count");
            None
        }
        None => None,
    };

    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = &socket {
        command.env("HP_SIDECAR_SOCKET", s.path());
    }
    if own_group {
        command.process_group(0);
    }
    let parent = std::process::id();
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
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let builder = reporting.map(|r| r.builder);
            return report_spawn_failure(builder, &args.command[0], &e);
        }
    };
    // Only a child already reaped has no pid, and this one was not waited for.
    let Some(pid) = child.id() else {
        eprintln!("heartbeat-sidecar: the worker ended before it could be watched");
        return Exit::Code(1);
    };
    if let Some(g) = guard.as_mut() {
        g.watch(pid as i32);
    }
    let (heartbeat, job, error) = match reporting {
        Some(Prepared {
            builder,
            job,
            error,
        }) => match builder
            .process_probe(ProcessTree::new(pid))
            .metadata("sidecar_pid", parent)
            .start()
        {
            Ok(hb) => (Some(Arc::new(hb)), job, error),
            Err(e) if args.strict => {
                let _ = child.start_kill();
                eprintln!("heartbeat-sidecar: {e}");
                return Exit::Code(USAGE);
            }
            Err(e) => {
                not_reporting(&anyhow::Error::new(e));
                (None, None, None)
            }
        },
        None => (None, None, None),
    };
    if let (Some(s), Some(hb)) = (socket.as_mut(), &heartbeat) {
        s.serve(Arc::clone(hb));
    }

    let stderr_tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take().and_then(|o| o.into_owned_fd().ok()) {
        pumps.push(pump(
            out,
            Stream::Stdout,
            LineMatcher::new(job.clone(), error.clone()),
            heartbeat.clone(),
            None,
        ));
    }
    if let Some(err) = child.stderr.take().and_then(|e| e.into_owned_fd().ok()) {
        pumps.push(pump(
            err,
            Stream::Stderr,
            LineMatcher::new(job, error),
            heartbeat.clone(),
            Some(Arc::clone(&stderr_tail)),
        ));
    }

    let mut memory = args.max_memory.map(|limit| MemoryLimit {
        limit,
        probe: ProcessTree::new(pid),
    });
    let mut memory_check = tokio::time::interval(MEMORY_CHECK);
    let mut stopping: Option<Stop> = None;
    let mut forwarded_shutdown = None;
    let status = loop {
        let kill_at = stopping.as_ref().map(|s| s.kill_at);
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = signals.recv() => {
                send(pid, sig);
                if SHUTDOWN_SIGNALS.contains(&sig) {
                    forwarded_shutdown = Some(sig);
                }
            }
            _ = memory_check.tick(), if memory.is_some() && stopping.is_none() => {
                if let Some(over) = memory.as_mut().and_then(MemoryLimit::exceeded) {
                    let why = format!(
                        "stopped by heartbeat-sidecar: the worker's memory, {}, was over --max-memory {}",
                        bytes(i64::try_from(over).unwrap_or(i64::MAX)),
                        bytes(i64::try_from(args.max_memory.unwrap_or(0)).unwrap_or(i64::MAX)),
                    );
                    tracing::warn!("{why}: sending {} (SIGKILL after {:?})", signal_name(libc::SIGTERM), args.stop_timeout);
                    send(pid, libc::SIGTERM);
                    stopping = Some(Stop { why, kill_at: Instant::now() + args.stop_timeout });
                }
            }
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                tracing::warn!("the worker did not stop within {:?}: sending SIGKILL", args.stop_timeout);
                send(pid, libc::SIGKILL);
                if let Some(s) = stopping.as_mut() {
                    s.kill_at = Instant::now() + Duration::from_secs(3600);
                }
            }
        }
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            if let Some(hb) = &heartbeat {
                heartbeat_sdk::sidecar::finish(
                    hb,
                    FinalState::new(WorkerStatus::Crashed)
                        .last_error(format!("lost track of the worker: {e}")),
                );
            }
            return Exit::Code(1);
        }
    };

    // Let the last output through; a grandchild holding the pipe open must
    // not hold the exit past the budget.
    let deadline = Instant::now() + budget;
    for done in pumps {
        let _ = tokio::time::timeout_at(deadline, done).await;
    }
    let tail = tail_text(&stderr_tail.lock().map(|t| t.clone()).unwrap_or_default());
    let (mut state, mut exit) = classify(status, forwarded_shutdown, &tail);
    if let Some(stop) = stopping {
        // Stopped for its memory: a failure to report and to restart.
        state.status = WorkerStatus::Crashed;
        state.last_error = Some(stop.why);
        if exit == Exit::Code(0) || matches!(exit, Exit::Signal(s) if SHUTDOWN_SIGNALS.contains(&s))
        {
            exit = Exit::Code(1);
        }
    }
    match &heartbeat {
        // When it is not stored, the SDK has said why.
        Some(hb) => {
            heartbeat_sdk::sidecar::finish(hb, state);
        }
        None => tracing::error!(
            "heartbeat-sidecar: the worker ended, and it was NOT reported (see the configuration error above)"
        ),
    }
    drop(socket);
    // Whatever the worker started and left running goes with it.
    if let Some(g) = guard.as_mut() {
        g.end(Duration::from_secs(1));
    }
    exit
}

fn not_reporting(e: &anyhow::Error) {
    tracing::error!(
        "heartbeat-sidecar: NOT REPORTING: {e:#}. The worker runs anyway; `heartbeat-sidecar check` shows what is wrong. Pass --strict to refuse to start the worker instead."
    );
}

/// A graceful stop the sidecar itself started (`--max-memory`).
struct Stop {
    why: String,
    kill_at: Instant,
}

struct MemoryLimit {
    limit: u64,
    probe: ProcessTree,
}

impl MemoryLimit {
    /// The tree's memory, when it is over the limit.
    fn exceeded(&mut self) -> Option<u64> {
        let used = self.probe.sample().memory_rss_bytes?;
        (used > self.limit).then_some(used)
    }
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
        .handle_signals(false)
        .reporter(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")));
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

fn report_spawn_failure(
    builder: Option<HeartbeatBuilder>,
    program: &str,
    e: &std::io::Error,
) -> Exit {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        126
    } else {
        127
    };
    let message = format!("cannot start {program:?}: {e}");
    eprintln!("heartbeat-sidecar: {message}");
    if let Some(Ok(hb)) = builder.map(HeartbeatBuilder::start) {
        heartbeat_sdk::sidecar::finish(
            &hb,
            FinalState::new(WorkerStatus::Crashed)
                .exit_code(code)
                .last_error(message),
        );
    }
    Exit::Code(code)
}
