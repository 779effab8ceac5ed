//! As PID 1 (a container's entrypoint) the sidecar inherits every orphan
//! in the container, and must reap them as tini does, or they stay zombies.
//! It reaps every exited child but its worker, which tokio waits for: the
//! exited child is looked at first (`WNOWAIT`) and reaped only when it is
//! not the worker. Runs in the supervisor's own loop, so a worker spawned
//! a moment ago is already known.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A sweep also runs this often: one SIGCHLD may stand for several exits.
const SWEEP: Duration = Duration::from_secs(1);

pub struct Reaper {
    sigchld: Signal,
    sweep: tokio::time::Interval,
    reaped: u64,
}

impl Reaper {
    /// A reaper when this process is PID 1, else `None`.
    pub fn when_init() -> Option<Reaper> {
        if std::process::id() != 1 {
            return None;
        }
        let sigchld = signal(SignalKind::child())
            .map_err(|e| {
                tracing::warn!("PID 1 but cannot watch SIGCHLD ({e}): orphans stay zombies")
            })
            .ok()?;
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tracing::info!("running as PID 1: reaping orphaned processes");
        Some(Reaper {
            sigchld,
            sweep,
            reaped: 0,
        })
    }

    /// Resolves when a child may have exited.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.sigchld.recv() => {}
            _ = self.sweep.tick() => {}
        }
    }

    /// Reaps every exited child but `worker`; returns how many.
    pub fn reap(&mut self, worker: Option<u32>) -> usize {
        let mut n = 0;
        loop {
            // SAFETY: waitid fills `info`; WNOWAIT leaves the child waitable.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: si_pid is set by waitid (0 when no child has exited).
            let pid = unsafe { info.si_pid() };
            if r != 0 || pid <= 0 || worker.is_some_and(|w| w as i32 == pid) {
                break;
            }
            let mut status = 0;
            // SAFETY: reaps that one child, which has exited.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            n += 1;
        }
        self.reaped += n as u64;
        if n > 0 {
            tracing::debug!("reaped {n} orphaned process(es), {} in all", self.reaped);
        }
        n
    }
}
