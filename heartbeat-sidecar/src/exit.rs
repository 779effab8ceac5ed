//! How the child's end becomes the final row, and how the sidecar itself ends.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use heartbeat_sdk::sidecar::FinalState;
use heartbeat_sdk::WorkerStatus;

/// Signals that mean "shut down": ending by one of them is a clean stop.
pub const SHUTDOWN_SIGNALS: [i32; 2] = [libc::SIGTERM, libc::SIGINT];

/// Exit code for a usage or configuration error, and for "could not read".
pub const USAGE: i32 = 2;

/// Says `message` on stderr and ends with `code`.
pub fn fail(code: i32, message: impl std::fmt::Display) -> Exit {
    eprintln!("heartbeat-sidecar: {message}");
    Exit::Code(code)
}

/// How the sidecar must end so supervisors see what the child did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit with this code.
    Code(i32),
    /// End by this signal.
    Signal(i32),
}

/// The final row for a child that ended with `status`.
///
/// `forwarded` is the shutdown signal the sidecar passed on, if any: a child
/// that then exits with `128 + signal` (as shells do) stopped cleanly too.
pub fn classify(
    status: ExitStatus,
    forwarded: Option<i32>,
    stderr_tail: &str,
) -> (FinalState, Exit) {
    let tail = (!stderr_tail.trim().is_empty()).then(|| stderr_tail.to_owned());
    if let Some(code) = status.code() {
        let by_forwarded = forwarded.is_some_and(|s| code == 128 + s);
        let state = if code == 0 || by_forwarded {
            FinalState::new(WorkerStatus::Stopped).exit_code(code)
        } else {
            FinalState::new(WorkerStatus::Crashed)
                .exit_code(code)
                .last_error(tail.unwrap_or_else(|| format!("exited with code {code}")))
        };
        return (state, Exit::Code(code));
    }
    let signal = status.signal().unwrap_or(libc::SIGKILL);
    let state = if SHUTDOWN_SIGNALS.contains(&signal) {
        FinalState::new(WorkerStatus::Stopped).exit_signal(signal)
    } else {
        FinalState::new(WorkerStatus::Crashed)
            .exit_signal(signal)
            .last_error(tail.unwrap_or_else(|| format!("killed by signal {}", signal_name(signal))))
    };
    (state, Exit::Signal(signal))
}

/// `SIGKILL` for 9, and so on.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGWINCH => "SIGWINCH",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Ends this process as `exit` says: the same code, or the same signal with
/// its default action restored.
pub fn end_process(exit: Exit) -> ! {
    match exit {
        Exit::Code(code) => std::process::exit(code),
        Exit::Signal(signal) => {
            // Restores the default action and raises the signal on ourselves.
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            // Signals whose default is to be ignored land here.
            std::process::exit(128 + signal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }
    fn killed(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn clean_exit_is_stopped() {
        let (s, e) = classify(exited(0), None, "");
        assert_eq!(
            (s.status, s.exit_code, e),
            (WorkerStatus::Stopped, Some(0), Exit::Code(0))
        );
    }

    #[test]
    fn non_zero_exit_is_crashed_with_code_and_stderr() {
        let (s, e) = classify(exited(3), None, "Error: boom\n");
        assert_eq!(
            (s.status, s.exit_code, e),
            (WorkerStatus::Crashed, Some(3), Exit::Code(3))
        );
        assert_eq!(s.last_error.as_deref(), Some("Error: boom\n"));
    }

    #[test]
    fn shutdown_signals_are_stopped_others_crashed() {
        let (s, e) = classify(killed(libc::SIGTERM), None, "");
        assert_eq!(
            (s.status, s.exit_signal, e),
            (WorkerStatus::Stopped, Some(15), Exit::Signal(15))
        );
        let (s, _) = classify(killed(libc::SIGINT), None, "");
        assert_eq!(s.status, WorkerStatus::Stopped);
        let (s, e) = classify(killed(libc::SIGKILL), None, "");
        assert_eq!((s.status, e), (WorkerStatus::Crashed, Exit::Signal(9)));
        assert_eq!(s.last_error.as_deref(), Some("killed by signal SIGKILL"));
    }

    #[test]
    fn shell_style_128_plus_signal_after_a_forwarded_shutdown_is_stopped() {
        assert_eq!(
            classify(exited(143), Some(libc::SIGTERM), "").0.status,
            WorkerStatus::Stopped
        );
        assert_eq!(
            classify(exited(143), None, "").0.status,
            WorkerStatus::Crashed
        );
        assert_eq!(
            classify(exited(130), Some(libc::SIGTERM), "").0.status,
            WorkerStatus::Crashed
        );
    }
}
