//! When the worker last showed progress (`progress()`, and for the sidecar
//! its child's output and socket lines): a relaxed atomic store, so it can be
//! called per item of work. The row says when, and readers judge hung by it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::transport::notify::NotifySocket;

#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    /// Microseconds after `base`, plus one (0: never).
    last: AtomicU64,
    /// Under systemd's watchdog: progress is what pings it.
    watchdog: OnceLock<Watchdog>,
}

/// `WATCHDOG=1` to systemd, at most every quarter of its period.
#[derive(Debug)]
struct Watchdog {
    socket: NotifySocket,
    every: Duration,
    /// Microseconds after `base` of the last ping, plus one.
    pinged: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            base: Instant::now(),
            last: AtomicU64::new(0),
            watchdog: OnceLock::new(),
        }
    }
}

impl Progress {
    /// From now on progress pings systemd's watchdog (`WatchdogSec=`), so a
    /// worker that stops making progress is restarted by systemd, while one
    /// whose beat thread alone is alive is not kept alive by it.
    pub fn ping_systemd(&self, socket: NotifySocket) {
        if let Some(period) = socket.watchdog() {
            let _ = self.watchdog.set(Watchdog {
                socket,
                every: period / 4,
                pinged: AtomicU64::new(0),
            });
        }
    }

    /// Progress now.
    pub fn mark(&self) {
        let after = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.last.store(after + 1, Ordering::Relaxed);
        self.ping(after);
    }

    /// How often a worker that waits in the SDK (between runs, paused) must
    /// [`keep_alive`](Self::keep_alive) systemd's watchdog; `None` without one.
    pub fn keep_alive_every(&self) -> Option<Duration> {
        self.watchdog.get().map(|w| w.every)
    }

    /// Pings systemd's watchdog, when due, without counting as progress: the
    /// worker waits in the SDK for its next run or a resume, which is not
    /// hung, so systemd must not restart it.
    pub fn keep_alive(&self) {
        let after = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.ping(after);
    }

    fn ping(&self, after: u64) {
        if let Some(w) = self.watchdog.get() {
            let pinged = w.pinged.load(Ordering::Relaxed);
            let due =
                pinged == 0 || Duration::from_micros(after + 1 - pinged.min(after + 1)) >= w.every;
            // One caller wins the ping; a datagram that cannot go is dropped.
            if due
                && w.pinged
                    .compare_exchange(pinged, after + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let _ = w.socket.send(b"WATCHDOG=1");
            }
        }
    }

    /// How long ago the last progress was; `None` before any.
    pub fn since(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            after => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_micros(after - 1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_pings_systemds_watchdog_at_most_every_quarter_period() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify.sock");
        let systemd = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        systemd.set_nonblocking(true).expect("nonblocking");
        let heard = || {
            let mut buf = [0u8; 64];
            std::iter::from_fn(|| systemd.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
                .collect::<Vec<_>>()
        };
        let p = Progress::default();
        p.ping_systemd(NotifySocket::to(&path, Some(Duration::from_millis(400))));
        assert!(heard().is_empty(), "no progress, no ping");
        // Before the first ping: the next comes at least a quarter period after it.
        let first = Instant::now();
        for _ in 0..1000 {
            p.mark();
        }
        assert_eq!(
            heard(),
            vec![b"WATCHDOG=1".to_vec()],
            "a thousand marks, one ping"
        );
        // Marking on: the next ping comes, a quarter period (100 ms) later.
        let deadline = first + Duration::from_secs(5);
        let next = loop {
            p.mark();
            if !heard().is_empty() {
                break first.elapsed();
            }
            assert!(Instant::now() < deadline, "no second ping");
            std::thread::yield_now();
        };
        assert!(
            next >= Duration::from_millis(100),
            "{next:?}: sooner than a quarter period"
        );
    }

    #[test]
    fn none_until_marked_then_the_time_since() {
        let p = Progress::default();
        assert_eq!(p.since(), None);
        p.mark();
        let since = p.since().expect("marked");
        assert!(since < Duration::from_secs(5), "{since:?}");
    }
}
