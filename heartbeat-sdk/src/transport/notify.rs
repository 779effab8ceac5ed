//! systemd's notify protocol (sd_notify(3)): one datagram per message to the
//! socket `$NOTIFY_SOCKET` names (a path, or `@name` in the abstract
//! namespace). Never blocks: a full or gone socket drops the message.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The service manager's notify socket, when there is one.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
}

impl NotifySocket {
    /// From `NOTIFY_SOCKET` (and `WATCHDOG_USEC` / `WATCHDOG_PID`); `None`
    /// when not run by a service manager that listens.
    pub fn from_env() -> Option<NotifySocket> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = address(&path.to_string_lossy()).ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        Some(NotifySocket {
            socket,
            addr,
            watchdog,
        })
    }

    /// A socket for `path` with this watchdog period (tests).
    #[cfg(test)]
    pub(crate) fn to(path: &std::path::Path, watchdog: Option<Duration>) -> NotifySocket {
        let socket = UnixDatagram::unbound().expect("socket");
        socket.set_nonblocking(true).expect("nonblocking");
        NotifySocket {
            socket,
            addr: SocketAddr::from_pathname(path).expect("path"),
            watchdog,
        }
    }

    /// The watchdog period systemd expects a `WATCHDOG=1` within.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`,
    /// or several, newline separated).
    ///
    /// # Errors
    /// When the socket is gone or full; the message is dropped.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        self.socket.send_to_addr(message, &self.addr).map(|_| ())
    }
}

/// `/run/systemd/notify` or `@abstract`.
pub fn address(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(name),
    }
}
