//! SIGTERM/SIGINT: send every live reporter's final `stopped` row within its
//! budget, then end the process as the signal would have.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::beat::shared::Shared;
use crate::model::row::FinalState;

static WATCHED: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
static THREAD: Mutex<bool> = Mutex::new(false);
/// The signal being handled, 0 before one arrives.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// Set once every reporter's final row is sent (or out of budget).
static ALL_SENT: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Registers `shared` for the shutdown signals, starting the one signal thread on first use.
pub(crate) fn watch(shared: &Arc<Shared>) -> std::io::Result<()> {
    if let Ok(mut watched) = WATCHED.lock() {
        watched.retain(|w| w.strong_count() > 0);
        watched.push(Arc::downgrade(shared));
    }
    let Ok(mut started) = THREAD.lock() else {
        return Ok(());
    };
    if *started {
        return Ok(());
    }
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("hp-heartbeat-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                CAUGHT.store(signal, Ordering::SeqCst);
                stop_all();
                if let Ok(mut sent) = ALL_SENT.0.lock() {
                    *sent = true;
                }
                ALL_SENT.1.notify_all();
                end_as_signaled();
            }
        })?;
    *started = true;
    Ok(())
}

fn live() -> Vec<Arc<Shared>> {
    WATCHED
        .lock()
        .map(|w| w.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default()
}

fn longest_budget() -> Duration {
    live()
        .iter()
        .map(|i| i.shutdown_budget)
        .max()
        .unwrap_or_default()
}

fn stop_all() {
    let live = live();
    for shared in &live {
        shared.request_stop(FinalState::default());
    }
    // They send in parallel; wait for the slowest, each bounded by its budget.
    let deadline = std::time::Instant::now() + longest_budget() + Duration::from_millis(50);
    for shared in &live {
        shared.wait_done(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// After a shutdown signal, ends the process as that signal would have: the
/// default action restored and the signal raised again, so the exit status
/// is the signal's, as PM2 and systemd expect. Called by the signal thread
/// once the final rows are sent, and by a reporter dropped after the
/// signal: a worker that saw `should_exit` and returned from `main` would
/// otherwise race that thread and sometimes exit 0 instead. It waits for
/// every reporter's final row first (each bounded by its budget). Before a
/// signal it returns at once.
pub(crate) fn end_as_signaled() {
    let signal = CAUGHT.load(Ordering::SeqCst);
    if signal == 0 {
        return;
    }
    // stop_all is bounded by the longest budget; this bound is a fuse.
    let fuse = longest_budget() + Duration::from_secs(1);
    if let Ok(sent) = ALL_SENT.0.lock() {
        let _ = ALL_SENT.1.wait_timeout_while(sent, fuse, |sent| !*sent);
    }
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal);
}
