//! Under systemd (`NOTIFY_SOCKET` set): the sidecar speaks for its worker.
//! `READY=1` once the worker runs, `STOPPING=1` on shutdown, `WATCHDOG=1`
//! only while the worker shows progress (its output, socket lines), so
//! `WatchdogSec=` restarts a worker that hangs while the sidecar is fine;
//! and the worker gets a socket of the sidecar's own as its `NOTIFY_SOCKET`,
//! whose messages are passed on, so a `Type=notify` worker keeps working.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use heartbeat_sdk::sidecar::{self as hooks, NotifySocket};
use heartbeat_sdk::Heartbeat;

pub struct SystemdNotify {
    socket: Arc<NotifySocket>,
    relay: Option<PathBuf>,
    ready: bool,
    stopping: std::sync::atomic::AtomicBool,
}

impl SystemdNotify {
    pub fn from_env() -> Option<SystemdNotify> {
        let socket = Arc::new(NotifySocket::from_env()?);
        Some(SystemdNotify {
            socket,
            relay: None,
            ready: false,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Binds the worker's notify socket and passes on what arrives there;
    /// its path, for the worker's `NOTIFY_SOCKET`. `None` (said once) when
    /// it cannot be made: the worker then has no notify socket.
    pub fn start_relay(&mut self) -> Option<PathBuf> {
        let dir = std::env::var_os("RUNTIME_DIRECTORY")
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("hp-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = match tokio::net::UnixDatagram::bind(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "cannot make the worker's notify socket at {} ({e}): its own sd_notify messages are not passed on",
                    path.display()
                );
                return None;
            }
        };
        let out = Arc::clone(&self.socket);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let _ = out.send(&buf[..n]);
            }
        });
        self.relay = Some(path.clone());
        Some(path)
    }

    /// The worker runs: `READY=1`, once.
    pub fn ready(&mut self) {
        if !self.ready {
            self.ready = true;
            let _ = self.socket.send(b"READY=1");
        }
    }

    /// Shutting down: `STOPPING=1`, once.
    pub fn stopping(&self) {
        if !self
            .stopping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let _ = self.socket.send(b"STOPPING=1");
        }
    }

    /// Pings systemd's watchdog every half period while the worker showed
    /// progress in the last half period. Without reporting there is no
    /// progress to judge by: it pings as long as the sidecar runs.
    pub fn watch(&self, heartbeat: Option<Arc<Heartbeat>>) {
        let Some(period) = self.socket.watchdog() else {
            return;
        };
        let half = (period / 2).max(Duration::from_millis(10));
        let socket = Arc::clone(&self.socket);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(half);
            loop {
                tick.tick().await;
                let progressed = heartbeat
                    .as_ref()
                    .is_none_or(|hb| hooks::progress_since(hb).is_some_and(|since| since <= half));
                if progressed {
                    let _ = socket.send(b"WATCHDOG=1");
                }
            }
        });
    }
}

impl Drop for SystemdNotify {
    fn drop(&mut self) {
        if let Some(path) = &self.relay {
            let _ = std::fs::remove_file(path);
        }
    }
}
