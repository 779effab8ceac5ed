//! `heartbeat-sidecar run`: start the worker, pass its output and signals
//! through, report for it, and end as it ended.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use heartbeat_sdk::sidecar::{FinalState, ProcessTree};
use heartbeat_sdk::{Heartbeat, HeartbeatBuilder, WorkerStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::exit::{classify, Exit, SHUTDOWN_SIGNALS, USAGE};
use crate::lines::{combine, LineMatcher};
use crate::output::{pump, tail_text, Stream};
use crate::socket::ReportSocket;

/// Signals passed on to the child.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Runs the worker to its end and says how the sidecar must end.
pub async fn run(args: RunArgs) -> Exit {
    let Prepared {
        builder,
        job,
        error,
        budget,
    } = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("heartbeat-sidecar: {e:#}");
            return Exit::Code(USAGE);
        }
    };

    // Listen before spawning, so no signal between the two is lost.
    let mut signals = match forward_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heartbeat-sidecar: {e:#}");
            return Exit::Code(USAGE);
        }
    };
    let mut socket = match ReportSocket::bind() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("HP_SIDECAR_SOCKET is not available ({e}); output patterns still count");
            None
        }
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
        Err(e) => return report_spawn_failure(builder, &args.command[0], &e),
    };
    // Only a child already reaped has no pid, and this one was not waited for.
    let Some(pid) = child.id() else {
        eprintln!("heartbeat-sidecar: the worker ended before it could be watched");
        return Exit::Code(1);
    };
    let heartbeat = builder
        .process_probe(ProcessTree::new(pid))
        .metadata("sidecar_pid", parent)
        .start()
        .map(Arc::new);
    let heartbeat = match heartbeat {
        Ok(hb) => hb,
        Err(e) => {
            let _ = child.start_kill();
            eprintln!("heartbeat-sidecar: {e}");
            return Exit::Code(USAGE);
        }
    };
    if let Some(s) = socket.as_mut() {
        s.serve(Arc::clone(&heartbeat));
    }

    let stderr_tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take().and_then(|o| o.into_owned_fd().ok()) {
        pumps.push(pump(
            out,
            Stream::Stdout,
            LineMatcher::new(job.clone(), error.clone()),
            Arc::clone(&heartbeat),
            None,
        ));
    }
    if let Some(err) = child.stderr.take().and_then(|e| e.into_owned_fd().ok()) {
        pumps.push(pump(
            err,
            Stream::Stderr,
            LineMatcher::new(job, error),
            Arc::clone(&heartbeat),
            Some(Arc::clone(&stderr_tail)),
        ));
    }

    let mut forwarded_shutdown = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = signals.recv() => {
                // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
                if SHUTDOWN_SIGNALS.contains(&sig) {
                    forwarded_shutdown = Some(sig);
                }
            }
        }
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            heartbeat_sdk::sidecar::finish(
                &heartbeat,
                FinalState::new(WorkerStatus::Crashed)
                    .last_error(format!("lost track of the worker: {e}")),
            );
            return Exit::Code(1);
        }
    };

    // Let the last output through; a grandchild holding the pipe open must
    // not hold the exit past the budget.
    let deadline = tokio::time::Instant::now() + budget;
    for done in pumps {
        let _ = tokio::time::timeout_at(deadline, done).await;
    }
    let tail = tail_text(&stderr_tail.lock().map(|t| t.clone()).unwrap_or_default());
    let (state, exit) = classify(status, forwarded_shutdown, &tail);
    if !heartbeat_sdk::sidecar::finish(&heartbeat, state) {
        tracing::warn!("the final row was not stored within {budget:?}");
    }
    drop(socket);
    exit
}

struct Prepared {
    builder: HeartbeatBuilder,
    job: Option<crate::lines::Pattern>,
    error: Option<crate::lines::Pattern>,
    budget: Duration,
}

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
    let budget = Duration::from_millis(args.shutdown_budget);
    let settings = args.store.settings().map_err(anyhow::Error::msg)?;
    let mut builder = Heartbeat::builder(name)
        .store_settings(settings)
        .interval(Duration::from_secs(args.interval))
        .shutdown_budget(budget)
        .circuit_breaker_threshold(args.circuit_breaker_threshold)
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
        budget,
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

fn report_spawn_failure(builder: HeartbeatBuilder, program: &str, e: &std::io::Error) -> Exit {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        126
    } else {
        127
    };
    let message = format!("cannot start {program:?}: {e}");
    eprintln!("heartbeat-sidecar: {message}");
    if let Ok(hb) = builder.start() {
        heartbeat_sdk::sidecar::finish(
            &hb,
            FinalState::new(WorkerStatus::Crashed)
                .exit_code(code)
                .last_error(message),
        );
    }
    Exit::Code(code)
}
