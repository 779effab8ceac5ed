//! Workers obey: requests made through the local store's `hp_control()`
//! (the same rule as the SQL function) reach a running SDK worker through
//! its poll, and its row says what it did. Real store file, real threads.

use std::path::Path;
use std::time::Duration;

use heartbeat_sdk::sidecar::{ControlRequest, SqliteStore};
use heartbeat_sdk::{Heartbeat, StatusRow};
use hp_heartbeat_tests::eventually::eventually;

const WAIT: Duration = Duration::from_secs(10);

fn worker(store: &Path, name: &str) -> Heartbeat {
    Heartbeat::builder(name)
        .local_store(store)
        .interval(Duration::from_secs(30))
        .control_poll(Duration::from_millis(200))
        .handle_signals(false)
        .start()
        .expect("start")
}

fn row(store: &SqliteStore, name: &str) -> Option<StatusRow> {
    store.read_one(name).ok().flatten()
}

/// Lets one worker be paused or drained (the default budget keeps one up).
fn allow_all_down(store: &SqliteStore) {
    store
        .pool_set("default", Some(5), Some(0), None, Some("test"))
        .expect("pool set");
}

/// Asks as an operator would for a pool of one: taking its last worker
/// down needs force and the pool's name.
fn ask(store: &SqliteStore, action: &str, name: &str) {
    let mut request = ControlRequest::workers(action, vec![name.to_owned()]);
    request.force = true;
    request.confirm = Some("default".to_owned());
    let answer = store.control(&request).expect("control");
    assert!(answer.accepted(), "{action} refused: {answer:?}");
}

/// Runs `step` while a thread of the scope waits on the worker: if it
/// fails, the waiter would hold the scope (and the test run) for good, so
/// the test binary ends at once instead.
fn or_abort<T>(step: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|_| {
        eprintln!("a step failed while a thread waits on the worker: aborting the test binary");
        std::process::abort()
    })
}

fn extra(row: &StatusRow, key: &str) -> serde_json::Value {
    serde_json::to_value(row).expect("json")[key].clone()
}

#[test]
fn pause_reaches_the_worker_within_the_poll_and_resume_lets_it_go() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let store = SqliteStore::new(&path);
    let hb = worker(&path, "pausable");
    eventually(WAIT, "the first row", || row(&store, "pausable"));
    assert!(!hb.should_pause());
    allow_all_down(&store);
    ask(&store, "pause", "pausable");
    eventually(WAIT, "the worker paused", || {
        hb.should_pause().then_some(())
    });
    let paused = eventually(WAIT, "the row says paused", || {
        row(&store, "pausable").filter(|r| extra(r, "state") == "paused")
    });
    assert!(
        extra(&paused, "control_generation").as_i64() >= Some(1),
        "{paused:?}"
    );
    assert_eq!(extra(&paused, "controls")["pause"], "by the worker's code");

    let waiter = std::thread::scope(|s| {
        let waiting = s.spawn(|| hb.wait_while_paused());
        or_abort(|| ask(&store, "resume", "pausable"));
        waiting.join()
    });
    assert!(waiter.is_ok());
    assert!(!hb.should_pause());
    eventually(WAIT, "the row says active", || {
        row(&store, "pausable").filter(|r| extra(r, "state") == "active")
    });
    // The request and the worker's acknowledgement are both in the audit log.
    assert!(hb.shutdown());
}

#[test]
fn drain_and_restart_end_the_loop_and_the_final_row_says_which() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let store = SqliteStore::new(&path);
    allow_all_down(&store);
    for (action, state, code) in [("drain", "draining", 0u8), ("restart", "restarting", 75)] {
        let name = format!("exiting-{action}");
        let hb = worker(&path, &name);
        eventually(WAIT, "the first row", || row(&store, &name));
        let looped = std::thread::scope(|s| {
            let looping = s.spawn(|| {
                let mut runs = 0;
                while hb.wait_for_next_run(Duration::from_secs(3600)) {
                    runs += 1;
                }
                runs
            });
            or_abort(|| {
                eventually(WAIT, "the loop asked", || {
                    row(&store, &name)
                        .filter(|r| extra(r, "controls")["drain"] == "by the worker's code")
                });
                ask(&store, action, &name);
            });
            looping.join().expect("loop")
        });
        assert_eq!(
            looped, 1,
            "the first run at once, then the loop ended on {action}"
        );
        assert!(hb.should_exit());
        assert_eq!(
            hb.exit_code(),
            std::process::ExitCode::from(code),
            "{action}"
        );
        assert!(hb.shutdown());
        let last = row(&store, &name).expect("final row");
        assert_eq!(last.status.as_deref(), Some("stopped"), "{last:?}");
        assert_eq!(extra(&last, "state"), state, "{last:?}");
    }
}

#[test]
fn requests_made_before_start_are_served_and_a_drained_worker_comes_back_paused() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let store = SqliteStore::new(&path);
    allow_all_down(&store);
    let first = worker(&path, "returning");
    eventually(WAIT, "the first row", || row(&store, "returning"));
    ask(&store, "run_now", "returning");
    ask(&store, "drain", "returning");
    eventually(WAIT, "drained", || first.should_exit().then_some(()));
    assert!(first.shutdown());
    let first_instance = row(&store, "returning").and_then(|r| r.instance_id);

    let again = worker(&path, "returning");
    eventually(WAIT, "desired is still paused after a drain", || {
        again.should_pause().then_some(())
    });
    eventually(WAIT, "the new instance's row says paused", || {
        row(&store, "returning")
            .filter(|r| extra(r, "state") == "paused" && r.instance_id != first_instance)
    });
    assert!(
        !again.should_exit(),
        "the drain was for the previous instance"
    );
    assert!(
        !again.run_now_requested(),
        "run-now found at start counts as served"
    );
    drop(again);
}

#[test]
fn run_now_wakes_a_waiting_loop_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let store = SqliteStore::new(&path);
    let hb = worker(&path, "on-demand");
    eventually(WAIT, "the first row", || row(&store, "on-demand"));
    assert!(
        hb.wait_for_next_run(Duration::from_secs(3600)),
        "the first run is at once"
    );
    let woke = std::thread::scope(|s| {
        let waiting = s.spawn(|| hb.wait_for_next_run(Duration::from_secs(3600)));
        or_abort(|| ask(&store, "run_now", "on-demand"));
        waiting.join().expect("waiter")
    });
    assert!(woke);
    assert!(
        !hb.run_now_requested(),
        "that request was taken by the loop"
    );
    assert!(hb.shutdown());
}

#[test]
fn runs_are_recorded_as_they_start_and_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hb.db");
    let store = SqliteStore::new(&path);
    let hb = Heartbeat::builder("runner")
        .local_store(&path)
        .interval(Duration::from_secs(30))
        .max_run(Duration::from_secs(90))
        .handle_signals(false)
        .start()
        .expect("start");
    eventually(WAIT, "the first row", || row(&store, "runner"));
    let run = hb.start_run();
    let running = eventually(WAIT, "the run shows at once, not at the next beat", || {
        row(&store, "runner").filter(|r| extra(r, "run_state") == "running")
    });
    assert_eq!(extra(&running, "max_run_seconds"), 90);
    run.succeeded("12 orders");
    let done = eventually(WAIT, "the run's end shows", || {
        row(&store, "runner").filter(|r| extra(r, "run_state") == "succeeded")
    });
    assert_eq!(extra(&done, "runs_total"), 1);
    assert_eq!(extra(&done, "last_run_summary"), "12 orders");
    assert!(extra(&done, "last_success_at").is_string());

    let failed: Result<(), String> = hb.run(|| Err("upstream 502".to_owned()));
    assert!(failed.is_err());
    drop(hb.start_run());
    assert!(hb.shutdown());
    let last = row(&store, "runner").expect("row");
    assert_eq!(extra(&last, "run_state"), "failed");
    assert_eq!(
        (extra(&last, "runs_total"), extra(&last, "runs_failed")),
        (3.into(), 2.into())
    );
    assert!(extra(&last, "last_run_summary")
        .as_str()
        .is_some_and(|s| s.starts_with("abandoned")));
    assert_eq!(last.error_count, Some(2), "a failed run is a failed job");
}
