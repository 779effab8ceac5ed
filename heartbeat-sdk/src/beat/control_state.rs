//! Control as the worker's code sees it: the beat thread applies what it
//! reads from the worker's control row; the worker's threads ask whether to
//! pause, exit or run now, and may wait. Blocking waits use a condvar, async
//! ones a watch channel; every change wakes both.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::desired::{asked, DesiredControl, WorkerState};

#[derive(Debug)]
pub(crate) struct ControlState {
    inner: Mutex<Inner>,
    changed: Condvar,
    version: watch::Sender<u64>,
    /// Which questions the worker's code has asked: what it honours.
    asks_pause: AtomicBool,
    asks_exit: AtomicBool,
    asks_run_now: AtomicBool,
    /// How the sidecar honours each verb (it steers a child, not its own
    /// code); `None` for an SDK worker, whose answers come from its questions.
    controls_by_sidecar: Mutex<Option<Map<String, Value>>>,
    /// systemd's watchdog, kept alive while the worker waits here.
    keep_alive: OnceLock<KeepAlive>,
}

#[derive(Debug)]
struct Inner {
    /// The control row last applied; `None` until the first read.
    applied: Option<DesiredControl>,
    state: WorkerState,
    run_now: bool,
    /// Shutdown requested (a signal, `shutdown()`, the handle dropped).
    stopping: bool,
    /// When `wait_for_next_run` returns next (`None`: at once).
    next_run: Option<Instant>,
    /// The first look at the control row is over (whatever it found).
    first_read_done: bool,
}

/// What `wait_for_next_run` does now.
enum Next {
    Return(bool),
    WaitUntil(Instant),
    WaitForChange,
}

/// Which question the code asked, for [`ControlState::note_asked`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Question {
    Pause,
    Exit,
    RunNow,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            inner: Mutex::new(Inner {
                applied: None,
                state: WorkerState::Active,
                run_now: false,
                stopping: false,
                next_run: None,
                first_read_done: false,
            }),
            changed: Condvar::new(),
            version: watch::channel(0).0,
            asks_pause: AtomicBool::new(false),
            asks_exit: AtomicBool::new(false),
            asks_run_now: AtomicBool::new(false),
            controls_by_sidecar: Mutex::new(None),
            keep_alive: OnceLock::new(),
        }
    }
}

/// A ping, and how often a waiting worker must send it.
struct KeepAlive(Duration, Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeepAlive(every {:?})", self.0)
    }
}

impl ControlState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.notify_all();
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Applies a control row read by the beat thread. True when the row
    /// should say so (first read, a new generation, or a new state).
    pub fn apply(&self, row: DesiredControl) -> bool {
        let mut inner = self.lock();
        let before = inner.applied;
        let a = asked(before.as_ref(), &row, inner.state);
        let changed =
            before.is_none_or(|b| b.generation != row.generation) || a.state != inner.state;
        inner.state = a.state;
        inner.run_now |= a.run_now;
        inner.applied = Some(row);
        drop(inner);
        if changed {
            self.notify();
        }
        changed
    }

    /// The generation applied, once the control row has been read.
    pub fn applied_generation(&self) -> Option<i64> {
        self.lock().applied.map(|a| a.generation)
    }

    pub fn state(&self) -> WorkerState {
        self.lock().state
    }

    /// The first look at the control row is over, found or not (`once`
    /// waits for it before deciding whether to run).
    pub fn first_read_done(&self) {
        self.lock().first_read_done = true;
        self.notify();
    }

    /// Blocks until the first look at the control row is over, at most
    /// `limit`; false when it was not over by then.
    pub fn wait_first_read(&self, limit: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, limit, |i| !i.first_read_done)
            .unwrap_or_else(|e| e.into_inner());
        inner.first_read_done
    }

    /// Wakes on every change (the sidecar's loop steers its child from it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// A drain or restart was carried out in place (the sidecar stopped or
    /// restarted its child and stays up): the state is what `desired` says
    /// again, paused after a drain, active after a restart.
    pub fn settle(&self) {
        let mut inner = self.lock();
        if inner.state.is_exiting() {
            inner.state = match inner.applied {
                Some(row) if row.paused => WorkerState::Paused,
                _ => WorkerState::Active,
            };
        }
        drop(inner);
        self.notify();
    }

    /// The sidecar says how it honours each verb (it replaces what the
    /// questions of an SDK worker's code would say).
    pub fn set_controls_by_sidecar(&self, controls: Map<String, Value>) {
        *self
            .controls_by_sidecar
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(controls);
    }

    fn sidecar_controls(&self) -> Option<Map<String, Value>> {
        self.controls_by_sidecar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The state as the row says it: a pause the code never checks is not
    /// a pause (the `controls` column says so). The sidecar's state is what
    /// it does.
    pub fn reported_state(&self) -> WorkerState {
        if let Some(controls) = self.sidecar_controls() {
            return match self.state() {
                WorkerState::Paused
                    if controls.get("pause").and_then(Value::as_str) == Some("no") =>
                {
                    WorkerState::Active
                }
                s => s,
            };
        }
        match self.state() {
            WorkerState::Paused if !self.asks_pause.load(Relaxed) => WorkerState::Active,
            s => s,
        }
    }

    /// Marks `question` asked; true the first time (the row's `controls`
    /// changes, worth a write).
    pub fn note_asked(&self, question: Question) -> bool {
        let flag = match question {
            Question::Pause => &self.asks_pause,
            Question::Exit => &self.asks_exit,
            Question::RunNow => &self.asks_run_now,
        };
        !flag.load(Relaxed) && !flag.swap(true, Relaxed)
    }

    /// Verb -> how this worker honours it, for the row's `controls`.
    pub fn controls(&self) -> Map<String, Value> {
        if let Some(controls) = self.sidecar_controls() {
            return controls;
        }
        let say = |flag: &AtomicBool| {
            Value::from(if flag.load(Relaxed) {
                "by the worker's code"
            } else {
                "no"
            })
        };
        let mut m = Map::new();
        m.insert("pause".into(), say(&self.asks_pause));
        m.insert("drain".into(), say(&self.asks_exit));
        m.insert("restart".into(), say(&self.asks_exit));
        m.insert("run_now".into(), say(&self.asks_run_now));
        m
    }

    /// Shutdown was requested: waiters return.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.notify();
    }

    pub fn should_pause(&self) -> bool {
        let inner = self.lock();
        inner.state == WorkerState::Paused && !inner.stopping
    }

    pub fn should_exit(&self) -> bool {
        let inner = self.lock();
        inner.state.is_exiting() || inner.stopping
    }

    /// True once per run-now request (several before a look are one).
    pub fn take_run_now(&self) -> bool {
        std::mem::take(&mut self.lock().run_now)
    }

    fn paused_and_staying(inner: &Inner) -> bool {
        inner.state == WorkerState::Paused && !inner.stopping
    }

    /// Blocks while paused; returns on resume, an exit request or shutdown.
    pub fn wait_while_paused(&self) {
        let mut inner = self.lock();
        while Self::paused_and_staying(&inner) {
            inner = match self.keep_alive.get() {
                Some(KeepAlive(every, _)) => {
                    let woken = self
                        .changed
                        .wait_timeout(inner, *every)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    self.keep_alive();
                    woken
                }
                None => self.changed.wait(inner).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// [`wait_while_paused`](Self::wait_while_paused) for async code.
    pub async fn wait_while_paused_async(&self) {
        let mut version = self.version.subscribe();
        let slice = self.keep_alive_slice();
        while Self::paused_and_staying(&self.lock()) {
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(slice) => {}
            }
            self.keep_alive();
        }
    }

    /// While a worker waits here (for its next run, or paused) systemd's
    /// watchdog is kept alive by `f`, called at least every `every`:
    /// waiting for the SDK is not being hung.
    pub fn keep_alive_with(&self, every: Duration, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self
            .keep_alive
            .set(KeepAlive(every.max(Duration::from_millis(10)), f));
    }

    fn keep_alive(&self) {
        if let Some(KeepAlive(_, f)) = self.keep_alive.get() {
            f();
        }
    }

    /// How long an async wait sleeps between keep-alives: without one, far
    /// enough never to matter, near enough not to overflow.
    fn keep_alive_slice(&self) -> Duration {
        self.keep_alive
            .get()
            .map_or(Duration::from_secs(86_400 * 365), |k| k.0)
    }

    fn next(&self, inner: &mut Inner, interval: Duration) -> Next {
        if inner.state.is_exiting() || inner.stopping {
            return Next::Return(false);
        }
        let now = Instant::now();
        if std::mem::take(&mut inner.run_now) {
            inner.next_run = Some(now + interval);
            return Next::Return(true);
        }
        if inner.state == WorkerState::Paused {
            return Next::WaitForChange;
        }
        match inner.next_run {
            Some(due) if due > now => Next::WaitUntil(due),
            _ => {
                inner.next_run = Some(now + interval);
                Next::Return(true)
            }
        }
    }

    /// Returns true when the next run is due: at once the first time, then
    /// `interval` after the previous return, at once on run-now (even while
    /// paused), never while paused otherwise. False when the worker should
    /// exit (drain, restart or shutdown).
    pub fn wait_for_next_run(&self, interval: Duration) -> bool {
        let slice = self.keep_alive.get().map_or(Duration::MAX, |k| k.0);
        let mut inner = self.lock();
        loop {
            let wait = match self.next(&mut inner, interval) {
                Next::Return(run) => return run,
                Next::WaitForChange => slice,
                Next::WaitUntil(due) => due.saturating_duration_since(Instant::now()).min(slice),
            };
            inner = if wait == Duration::MAX {
                self.changed.wait(inner).unwrap_or_else(|e| e.into_inner())
            } else {
                self.changed
                    .wait_timeout(inner, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
            self.keep_alive();
        }
    }

    /// [`wait_for_next_run`](Self::wait_for_next_run) for async code.
    pub async fn wait_for_next_run_async(&self, interval: Duration) -> bool {
        let mut version = self.version.subscribe();
        let slice = self.keep_alive_slice();
        loop {
            let next = {
                let mut inner = self.lock();
                self.next(&mut inner, interval)
            };
            let until = match next {
                Next::Return(run) => return run,
                Next::WaitForChange => tokio::time::Instant::now() + slice,
                Next::WaitUntil(due) => due.min(tokio::time::Instant::now() + slice),
            };
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep_until(until) => {}
            }
            self.keep_alive();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::desired::tests::row;
    use std::sync::Arc;

    /// The loop helper on a paused clock: the first run at once, then one
    /// per interval; none while paused; run-now while paused runs exactly one;
    /// a restart ends the loop.
    /// Under systemd's watchdog a worker waiting here (paused, or between
    /// runs) keeps it alive at least every period given, on a paused clock:
    /// an hour paused with a 10 s keep-alive is 360 pings, no fewer.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_keeps_systemds_watchdog_alive() {
        use std::sync::atomic::AtomicU64;
        let c = Arc::new(ControlState::default());
        let pings = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&pings);
        c.keep_alive_with(
            Duration::from_secs(10),
            Box::new(move || {
                counted.fetch_add(1, Relaxed);
            }),
        );
        c.apply(row(true, 1, 0, 0, 0));
        let paused = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.wait_while_paused_async().await }
        });
        tokio::time::sleep(Duration::from_secs(3600) + Duration::from_millis(1)).await;
        assert!(!paused.is_finished());
        assert_eq!(pings.load(Relaxed), 360, "paused an hour");
        c.apply(row(false, 2, 0, 0, 0));
        paused.await.expect("resumed");

        pings.store(0, Relaxed);
        assert!(c.wait_for_next_run_async(Duration::from_secs(60)).await);
        assert!(c.wait_for_next_run_async(Duration::from_secs(60)).await);
        assert_eq!(pings.load(Relaxed), 6, "a minute between runs");

        // The blocking twins, on real time: pings while paused, then resume.
        pings.store(0, Relaxed);
        let quick = Arc::new(ControlState::default());
        let counted = Arc::clone(&pings);
        quick.keep_alive_with(
            Duration::from_millis(10),
            Box::new(move || {
                counted.fetch_add(1, Relaxed);
            }),
        );
        quick.apply(row(true, 1, 0, 0, 0));
        let waiter = std::thread::spawn({
            let quick = Arc::clone(&quick);
            move || quick.wait_while_paused()
        });
        while pings.load(Relaxed) < 3 {
            std::thread::yield_now();
        }
        quick.apply(row(false, 2, 0, 0, 0));
        waiter.join().expect("resumed");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_next_run_follows_the_control_row() {
        let c = Arc::new(ControlState::default());
        c.apply(row(false, 0, 0, 0, 0));
        let start = Instant::now();
        let every = Duration::from_secs(60);
        assert!(c.wait_for_next_run_async(every).await);
        assert_eq!(Instant::now(), start, "the first run is at once");
        assert!(c.wait_for_next_run_async(every).await);
        assert_eq!(Instant::now() - start, every);

        c.apply(row(true, 1, 0, 0, 0));
        let waiter = tokio::spawn({
            let c = Arc::clone(&c);
            async move { (c.wait_for_next_run_async(every).await, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!waiter.is_finished(), "no run while paused");
        c.apply(row(true, 2, 0, 1, 0));
        let (run, at) = waiter.await.expect("waiter");
        assert!(run, "run-now while paused runs one");
        assert_eq!(at - start, every + Duration::from_secs(600));
        let second = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.wait_for_next_run_async(every).await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!second.is_finished(), "exactly one: still paused after it");

        c.apply(row(true, 3, 1, 1, 0));
        assert!(!second.await.expect("second"), "a restart ends the loop");
        assert!(c.should_exit());
        assert_eq!(c.state(), WorkerState::Restarting);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_while_paused_returns_on_resume_and_on_shutdown() {
        let c = Arc::new(ControlState::default());
        c.apply(row(true, 1, 0, 0, 0));
        assert!(c.should_pause());
        let waiter = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.wait_while_paused_async().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished());
        c.apply(row(false, 2, 0, 0, 0));
        waiter.await.expect("resumed");
        assert!(!c.should_pause());

        c.apply(row(true, 3, 0, 0, 0));
        let waiter = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.wait_while_paused_async().await }
        });
        tokio::task::yield_now().await;
        c.stop();
        waiter.await.expect("shutdown ends the wait");
        assert!(c.should_exit() && !c.should_pause());
    }

    #[test]
    fn the_blocking_waits_wake_on_a_change_from_another_thread() {
        let c = Arc::new(ControlState::default());
        c.apply(row(true, 1, 0, 0, 0));
        let waiter = std::thread::spawn({
            let c = Arc::clone(&c);
            move || {
                c.wait_while_paused();
                c.wait_for_next_run(Duration::from_secs(3600))
            }
        });
        c.apply(row(false, 2, 0, 0, 0));
        assert!(
            waiter.join().expect("waiter"),
            "resumed, then the first run at once"
        );
        let waiter = std::thread::spawn({
            let c = Arc::clone(&c);
            move || c.wait_for_next_run(Duration::from_secs(3600))
        });
        c.apply(row(true, 3, 0, 0, 1));
        assert!(!waiter.join().expect("waiter"), "a drain ends the loop");
        assert_eq!(c.state(), WorkerState::Draining);
    }

    #[test]
    fn counters_at_start_are_served_and_the_row_changes_only_when_it_should() {
        let c = ControlState::default();
        assert!(
            c.apply(row(false, 5, 2, 3, 1)),
            "the first read is worth a beat"
        );
        assert!(!c.should_exit() && !c.take_run_now());
        assert!(!c.apply(row(false, 5, 2, 3, 1)), "nothing new");
        assert!(c.apply(row(false, 6, 2, 4, 1)));
        assert!(
            c.take_run_now() && !c.take_run_now(),
            "one run-now, taken once"
        );
    }

    #[test]
    fn a_pause_the_code_never_checks_is_reported_as_active() {
        let c = ControlState::default();
        c.apply(row(true, 1, 0, 0, 0));
        assert_eq!(c.reported_state(), WorkerState::Active);
        assert_eq!(c.controls()["pause"], "no");
        assert!(c.note_asked(Question::Pause));
        assert!(
            !c.note_asked(Question::Pause),
            "only the first time is news"
        );
        assert_eq!(c.reported_state(), WorkerState::Paused);
        assert_eq!(c.controls()["pause"], "by the worker's code");
    }
}
