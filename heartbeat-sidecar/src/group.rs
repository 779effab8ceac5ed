//! The worker's process group, ended with the sidecar however it ends.
//!
//! The worker runs in a process group of its own, so everything it starts
//! (what `npm run` or `sh -c` spawns, a Node helper) can be ended together.
//! Linux's parent-death signal reaches only the worker itself; for the rest,
//! a guard process forked at start waits on a pipe only the sidecar holds:
//! when the sidecar is gone (even by SIGKILL) the pipe closes and the guard
//! kills the group. Signals PM2 and systemd send (to the process tree, to the
//! control group) still reach every process, as before.

use std::io::IsTerminal;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The write end of the guard's pipe; dropping it (or dying) releases the guard.
pub struct GroupGuard {
    pipe: Option<OwnedFd>,
    group: Option<i32>,
}

/// Whether the worker should get a group of its own. Not when the sidecar
/// runs in the foreground of a terminal: the terminal's Ctrl-C already
/// reaches the whole foreground group, and a worker outside it could not
/// read the terminal (SIGTTIN).
pub fn worker_gets_its_own_group() -> bool {
    if !std::io::stdin().is_terminal() {
        return true;
    }
    // SAFETY: tcgetpgrp and getpgrp only read.
    let (foreground, ours) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
    foreground != ours
}

impl GroupGuard {
    /// Forks the guard. Call before anything else starts a thread: the child
    /// of a fork must be single-threaded to be safe, and it only calls
    /// async-signal-safe functions anyway.
    pub fn start() -> std::io::Result<GroupGuard> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just opened and are ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork; the child below uses only async-signal-safe calls
        // (signal, close, read, kill, _exit) and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => guard_main(read.as_raw_fd(), write.as_raw_fd()),
            _ => {
                drop(read);
                Ok(GroupGuard {
                    pipe: Some(write),
                    group: None,
                })
            }
        }
    }

    /// Tells the guard which group to end (again for each new child).
    pub fn watch(&mut self, group: i32) {
        self.group = Some(group);
        if let Some(pipe) = &self.pipe {
            let bytes = group.to_ne_bytes();
            // SAFETY: writing 4 bytes from a live buffer to our pipe.
            unsafe { libc::write(pipe.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        }
    }

    /// At a normal end: what is left of the worker's group gets SIGTERM and
    /// up to `grace` to go; the guard kills the rest when we exit.
    pub fn end(&mut self, grace: Duration) {
        let Some(group) = self.group else { return };
        if !group_alive(group) {
            return;
        }
        tracing::info!("ending what the worker left running in its process group");
        // SAFETY: signals the worker's own process group.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while group_alive(group) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if group_alive(group) {
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        self.pipe = None;
    }
}

/// What a child stopped in place (a restart, a pause) left running in its
/// group gets SIGTERM, so no helper outlives the child it served.
pub fn end_leftovers(group: i32) {
    if group > 1 && group_alive(group) {
        tracing::info!("ending what the stopped worker left running in its process group");
        // SAFETY: signals the stopped worker's own process group.
        unsafe { libc::kill(-group, libc::SIGTERM) };
    }
}

fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks.
    unsafe { libc::kill(-group, 0) == 0 }
}

/// The guard: ignore the signals meant for others, wait for the group id,
/// then for the pipe to close, then kill the group.
fn guard_main(read: i32, write: i32) -> ! {
    // SAFETY: async-signal-safe calls only, in a single-threaded child.
    unsafe {
        libc::close(write);
        for fd in 3..1024 {
            if fd != read {
                libc::close(fd);
            }
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Each write is one group id (4 bytes, atomic in a pipe): the
        // latest is the worker's group now (a restart in place brings a new
        // one). The pipe closing means the sidecar is gone.
        let mut group = 0i32;
        let mut bytes = [0u8; 4];
        let mut got = 0;
        loop {
            let n = libc::read(read, bytes.as_mut_ptr().add(got).cast(), 4 - got);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
            if got == 4 {
                group = i32::from_ne_bytes(bytes);
                got = 0;
            }
        }
        if group > 1 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}
