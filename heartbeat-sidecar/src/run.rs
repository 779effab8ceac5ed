//! `heartbeat-sidecar run`: start the worker, pass its output and signals
//! through, report for it, and end as it ended.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use heartbeat_sdk::probe::ProcessTree;
use heartbeat_sdk::{FinalState, Heartbeat, HeartbeatBuilder, WorkerStatus, MAX_LAST_ERROR_BYTES};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::cli::RunArgs;
use crate::exit::{classify, Exit, SHUTDOWN_SIGNALS};
use crate::lines::{combine, LineKind, LineMatcher};
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

/// Why `run` stopped before the child ran: a usage or configuration error (exit 2).
#[derive(Debug)]
pub struct SetupError(pub anyhow::Error);

/// Runs the worker to its end. `Err(SetupError)` means it never started.
pub async fn run(args: RunArgs) -> Result<Exit, SetupError> {
    let setup = prepare(&args).map_err(SetupError)?;
    let Prepared {
        builder,
        job,
        error,
        budget,
    } = setup;

    // Listen before spawning, so no signal between the two is lost.
    let mut signals = forward_signals().map_err(SetupError)?;
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
        Err(e) => return Ok(report_spawn_failure(builder, &args.command[0], &e, budget)),
    };
    let pid = child.id().unwrap_or(0);
    let heartbeat = builder
        .process_probe(ProcessTree::new(pid))
        .metadata("sidecar_pid", parent)
        .start()
        .map(Arc::new);
    let heartbeat = match heartbeat {
        Ok(hb) => hb,
        Err(e) => {
            let _ = child.start_kill();
            return Err(SetupError(anyhow::Error::new(e)));
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
            1,
            LineMatcher::new(job.clone(), error.clone()),
            Arc::clone(&heartbeat),
            None,
        ));
    }
    if let Some(err) = child.stderr.take().and_then(|e| e.into_owned_fd().ok()) {
        pumps.push(pump(
            err,
            2,
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
                // SAFETY: kill(2) on our own child's pid with a valid signal.
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
            heartbeat.finish_blocking(
                FinalState {
                    status: WorkerStatus::Crashed,
                    last_error: Some(format!("lost track of the worker: {e}")),
                    ..FinalState::default()
                },
                budget,
            );
            return Ok(Exit::Code(1));
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
    if !heartbeat.finish_blocking(state, budget + Duration::from_millis(100)) {
        tracing::warn!("the final row was not stored within {budget:?}");
    }
    drop(socket);
    Ok(exit)
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
    let mut builder = Heartbeat::builder(name)
        .settings(args.store.settings())
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

/// Copies one of the child's streams to ours byte for byte on its own thread
/// (a full pipe never blocks the supervisor), counting matching lines.
fn pump(
    from: OwnedFd,
    to_fd: i32,
    mut matcher: LineMatcher,
    heartbeat: Arc<Heartbeat>,
    tail: Option<Arc<Mutex<Vec<u8>>>>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("hp-pump-{to_fd}"))
        .spawn(move || {
            let mut from = File::from(from);
            // SAFETY: fd 1/2 stay open for the life of the process; ManuallyDrop never closes them.
            let mut to = ManuallyDrop::new(unsafe { File::from_raw_fd(to_fd) });
            let mut buf = vec![0u8; 128 * 1024];
            let mut on_match = |kind: LineKind, line: &[u8]| match kind {
                LineKind::Job => heartbeat.increment_job(),
                LineKind::Error => heartbeat.job_failed(&String::from_utf8_lossy(line)),
            };
            let mut output_open = true;
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let chunk = &buf[..n];
                // If our own output is gone, keep draining so the worker never blocks.
                if output_open && to.write_all(chunk).is_err() {
                    output_open = false;
                }
                matcher.feed(chunk, &mut on_match);
                if let Some(tail) = &tail {
                    keep_tail(tail, chunk);
                }
            }
            matcher.finish(&mut on_match);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start an output thread: {e}");
    }
    finished
}

fn keep_tail(tail: &Mutex<Vec<u8>>, chunk: &[u8]) {
    let Ok(mut tail) = tail.lock() else { return };
    if chunk.len() >= MAX_LAST_ERROR_BYTES {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - MAX_LAST_ERROR_BYTES..]);
    } else {
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(MAX_LAST_ERROR_BYTES);
        tail.drain(..excess);
    }
}

/// The last lines of stderr, starting at a line boundary when cut.
fn tail_text(bytes: &[u8]) -> String {
    let start = if bytes.len() >= MAX_LAST_ERROR_BYTES {
        bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)
    } else {
        0
    };
    let text = String::from_utf8_lossy(&bytes[start..]);
    heartbeat_sdk::truncate_message(text.trim_end(), MAX_LAST_ERROR_BYTES)
}

fn report_spawn_failure(
    builder: HeartbeatBuilder,
    program: &str,
    e: &std::io::Error,
    budget: Duration,
) -> Exit {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        126
    } else {
        127
    };
    let message = format!("cannot start {program:?}: {e}");
    eprintln!("heartbeat-sidecar: {message}");
    if let Ok(hb) = builder.start() {
        hb.finish_blocking(
            FinalState {
                status: WorkerStatus::Crashed,
                exit_code: Some(code),
                exit_signal: None,
                last_error: Some(message),
            },
            budget + Duration::from_millis(100),
        );
    }
    Exit::Code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_within_bounds() {
        let tail = Mutex::new(Vec::new());
        for i in 0..1000 {
            keep_tail(&tail, format!("line {i}\n").as_bytes());
        }
        let text = tail_text(&tail.lock().map(|t| t.clone()).unwrap_or_default());
        assert!(text.len() <= MAX_LAST_ERROR_BYTES);
        assert!(
            text.starts_with("line ") && text.ends_with("line 999"),
            "{text}"
        );
    }
}
