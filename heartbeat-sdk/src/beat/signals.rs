//! SIGTERM/SIGINT: send every live reporter's final `stopped` row within its
//! budget, then end the process as the signal would have.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::beat::shared::Shared;
use crate::model::row::FinalState;

static WATCHED: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
static THREAD: Mutex<bool> = Mutex::new(false);

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
                stop_all();
                // Restores the default action and re-raises: the exit status
                // is the signal's, as PM2 and systemd expect.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        })?;
    *started = true;
    Ok(())
}

fn stop_all() {
    let live: Vec<Arc<Shared>> = WATCHED
        .lock()
        .map(|w| w.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for shared in &live {
        shared.request_stop(FinalState::default());
    }
    // They send in parallel; wait for the slowest, each bounded by its budget.
    let longest = live
        .iter()
        .map(|i| i.shutdown_budget)
        .max()
        .unwrap_or_default();
    let deadline = std::time::Instant::now() + longest + Duration::from_millis(50);
    for shared in &live {
        shared.wait_done(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}
