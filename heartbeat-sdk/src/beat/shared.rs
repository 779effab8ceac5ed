//! What the handle(s), the signal thread and the beat thread share: the
//! counters, control, runs, and the one-way road to the final row (stop
//! requested -> final row sent -> done).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::beat::control_state::{ControlState, Question};
use crate::beat::counters::Counters;
use crate::beat::runs::Runs;
use crate::model::row::FinalState;

#[derive(Debug)]
pub(crate) struct Shared {
    pub counters: Counters,
    pub control: ControlState,
    pub runs: Runs,
    pub shutdown_budget: Duration,
    /// The worker's last progress.
    pub progress: crate::beat::progress::Progress,
    /// Something the row shows changed (a run started or ended, control
    /// applied): the loop writes soon, at most once a second.
    row_changed: Notify,
    /// A new instance began in this reporter (the sidecar started its child
    /// again): the next row has a new `instance_id` and `started_at`.
    new_instance: std::sync::atomic::AtomicBool,
    /// The sidecar's child is there (or will not be): the first beat may go.
    process_ready: Notify,
    stop: watch::Sender<Option<FinalState>>,
    done: Mutex<Option<bool>>,
    done_changed: Condvar,
}

impl Shared {
    pub fn new(counters: Counters, shutdown_budget: Duration) -> Self {
        Shared {
            counters,
            control: ControlState::default(),
            runs: Runs::default(),
            shutdown_budget,
            progress: Default::default(),
            row_changed: Notify::new(),
            new_instance: std::sync::atomic::AtomicBool::new(false),
            process_ready: Notify::new(),
            stop: watch::channel(None).0,
            done: Mutex::new(None),
            done_changed: Condvar::new(),
        }
    }

    pub fn subscribe_stop(&self) -> watch::Receiver<Option<FinalState>> {
        self.stop.subscribe()
    }

    /// Asks the loop for a write soon (coalesced, at most one a second).
    pub fn row_changed(&self) {
        self.row_changed.notify_one();
    }

    /// The sidecar started its child again: a new instance from the next row.
    pub fn new_instance(&self) {
        self.new_instance
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.row_changed();
    }

    /// The sidecar's first child is there, or it decided to start none.
    pub fn process_ready(&self) {
        // One waiter, told once: a permit stored before the wait counts.
        self.process_ready.notify_one();
    }

    pub async fn wait_process_ready(&self) {
        self.process_ready.notified().await;
    }

    /// True once after [`new_instance`](Self::new_instance).
    pub fn take_new_instance(&self) -> bool {
        self.new_instance
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when [`row_changed`](Self::row_changed) was called (a call
    /// before the wait counts).
    pub async fn wait_row_changed(&self) {
        self.row_changed.notified().await;
    }

    /// Notes that the worker's code asked `question`: the first time, the
    /// row's `controls` changes and is written soon.
    pub fn asked(&self, question: Question) {
        if self.control.note_asked(question) {
            self.row_changed();
        }
    }

    /// Asks the loop to send `state` as the final row; the first request wins.
    pub fn request_stop(&self, state: FinalState) {
        self.control.stop();
        self.stop.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(state);
                true
            } else {
                false
            }
        });
    }

    /// The loop has ended; `delivered` says whether the final row was stored.
    pub fn mark_done(&self, delivered: bool) {
        if let Ok(mut done) = self.done.lock() {
            *done = Some(delivered);
        }
        self.done_changed.notify_all();
    }

    /// Waits up to `timeout` for the final row; true when it was stored.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.done.lock() else {
            return false;
        };
        match self
            .done_changed
            .wait_timeout_while(guard, timeout, |d| d.is_none())
        {
            Ok((done, _)) => done.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Requests the final row and waits for it, bounded by `timeout`.
    pub fn finish(&self, state: FinalState, timeout: Duration) -> bool {
        self.request_stop(state);
        self.wait_done(timeout)
    }
}
